SUMMARY = "Container image of smarter-cni (cni DaemonSet)"
SMARTER_CONTAINER_PACKAGE = "smarter-cni"
SMARTER_CONTAINER_ENTRYPOINT = "/opt/cni/bin/smarter-cni"
require smarter-container.inc
