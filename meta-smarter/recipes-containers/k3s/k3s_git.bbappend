# The gateway runs k3s as an agent only. Its configuration
# (/etc/rancher/k3s/config.yaml and the token file, both on /data) is written
# by first-boot provisioning (smarter-provision), which then enables and
# starts the unit; until then the agent has nothing to join.
# CNI: the server runs with flannel-backend=none, so k3s's containerd uses
# /opt/cni/bin and /etc/cni/net.d, where smarter-cni is installed.
RRECOMMENDS:${PN}-agent += "smarter-cni"
