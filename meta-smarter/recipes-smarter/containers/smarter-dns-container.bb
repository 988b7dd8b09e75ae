SUMMARY = "Container image of smarter-dns (dns DaemonSet)"
DESCRIPTION = "The smarter-dns package and the libraries it links, as an OCI image for k3s's air-gap directory."
HOMEPAGE = "https://github.com/smarter-project/smarter"
SMARTER_CONTAINER_PACKAGE = "smarter-dns"

require smarter-container.inc
