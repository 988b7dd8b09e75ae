SUMMARY = "Container image of smarter-device-manager (device-manager DaemonSet)"
DESCRIPTION = "The smarter-device-manager package and the libraries it links, as an OCI image for k3s's air-gap directory."
HOMEPAGE = "https://github.com/smarter-project/smarter"
SMARTER_CONTAINER_PACKAGE = "smarter-device-manager"

require smarter-container.inc
