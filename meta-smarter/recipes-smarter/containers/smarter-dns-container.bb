SUMMARY = "Container image of smarter-dns (dns DaemonSet)"
SMARTER_CONTAINER_PACKAGE = "smarter-dns"

require smarter-container.inc
