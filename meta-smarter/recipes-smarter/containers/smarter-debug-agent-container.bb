SUMMARY = "Container image of smarter-debug-agent (debug-agent DaemonSet)"
SMARTER_CONTAINER_PACKAGE = "smarter-debug-agent"

require smarter-container.inc
