SUMMARY = "Persistent /data partition layout of the SMARTER gateway"
DESCRIPTION = "Mount units for the data partition and drop-ins for k3s's \
agent unit (from images/systemd/ of this repository), and the links from the read-only root filesystem to the \
state kept on /data: k3s's configuration and token, k3s's, containerd's \
and docker's runtime state."
HOMEPAGE = "https://github.com/smarter-project/smarter"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

inherit smarter_source allarch

INHIBIT_DEFAULT_DEPS = "1"
do_configure[noexec] = "1"
do_compile[noexec] = "1"

# rootfs path -> where it lives on the data partition
SMARTER_DATA_LINKS ??= " \
    ${sysconfdir}/rancher:/data/etc/rancher \
    ${localstatedir}/lib/rancher:/data/var/lib/rancher \
    ${localstatedir}/lib/containerd:/data/var/lib/containerd \
    ${localstatedir}/lib/docker:/data/var/lib/docker \
"

do_install() {
    install -d ${D}/data ${D}${systemd_system_unitdir}/local-fs.target.wants
    for unit in ${SMARTER_TREE}/images/systemd/*.mount; do
        [ -e "$unit" ] || continue
        install -m 0644 "$unit" ${D}${systemd_system_unitdir}/
        ln -sf ../$(basename "$unit") ${D}${systemd_system_unitdir}/local-fs.target.wants/$(basename "$unit")
    done
    # Drop-ins for k3s's agent unit (e.g. wait for /data and provisioning).
    for dropin in ${SMARTER_TREE}/images/systemd/k3s-agent.service.d/*.conf; do
        [ -e "$dropin" ] || continue
        install -d ${D}${systemd_system_unitdir}/k3s-agent.service.d
        install -m 0644 "$dropin" ${D}${systemd_system_unitdir}/k3s-agent.service.d/
    done
    for link in ${SMARTER_DATA_LINKS}; do
        path=${link%%:*}
        target=${link#*:}
        install -d ${D}$(dirname $path)
        ln -sfn $target ${D}$path
    done
}

FILES:${PN} = "/data ${systemd_system_unitdir} ${sysconfdir}/rancher ${localstatedir}/lib"
