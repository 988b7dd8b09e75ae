# The gateway runs k3s as an agent only. The unit is enabled in the image
# (the root filesystem is read-only); a drop-in from images/systemd/
# (installed by smarter-data) starts it only once first-boot provisioning
# has written /data/etc/rancher/k3s/config.yaml and the token and recorded
# that it did. Only under the "smarter" distro override (DISTRO = "smarter",
# or DISTROOVERRIDES .= ":smarter"): otherwise nothing changes.
SYSTEMD_AUTO_ENABLE:${PN}-agent:smarter = "enable"
# CNI: the server runs with flannel-backend=none, so k3s's containerd uses
# /opt/cni/bin and /etc/cni/net.d, where smarter-cni is installed.
RRECOMMENDS:${PN}-agent:append:smarter = " smarter-cni smarter-data"
