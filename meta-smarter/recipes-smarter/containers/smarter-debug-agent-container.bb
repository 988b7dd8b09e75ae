SUMMARY = "Container image of smarter-debug-agent (debug-agent DaemonSet)"
DESCRIPTION = "The smarter-debug-agent package and the libraries it links, as an OCI image for k3s's air-gap directory."
HOMEPAGE = "https://github.com/smarter-project/smarter"
SMARTER_CONTAINER_PACKAGE = "smarter-debug-agent"

require smarter-container.inc
