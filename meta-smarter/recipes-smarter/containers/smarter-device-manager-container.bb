SUMMARY = "Container image of smarter-device-manager (device-manager DaemonSet)"
SMARTER_CONTAINER_PACKAGE = "smarter-device-manager"

require smarter-container.inc
