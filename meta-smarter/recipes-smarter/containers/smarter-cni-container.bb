SUMMARY = "Container image of smarter-cni (cni DaemonSet)"
DESCRIPTION = "The smarter-cni package and the libraries it links, as an OCI image for k3s's air-gap directory."
HOMEPAGE = "https://github.com/smarter-project/smarter"
SMARTER_CONTAINER_PACKAGE = "smarter-cni"
require smarter-container.inc
