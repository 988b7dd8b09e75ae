# Add the gateway's kernel fragment to the machine's kernel. Every kernel of
# the supported boards (linux-yocto, linux-raspberrypi, linux-tegra,
# linux-coral/linux-fslc) merges *.cfg fragments from SRC_URI; other recipes
# whose name starts with linux- (headers, firmware) are left alone. Only under
# the "smarter" distro override (DISTRO = "smarter", or DISTROOVERRIDES .=
# ":smarter" in a distribution of your own): otherwise nothing changes.
FILESEXTRAPATHS:prepend:smarter := "${THISDIR}/files:"
SMARTER_KERNEL_FRAGMENTS ??= "file://smarter-k3s.cfg"
SMARTER_KERNEL_SRC = "${@d.getVar('SMARTER_KERNEL_FRAGMENTS') if bb.data.inherits_class('kernel', d) else ''}"
SRC_URI:append:smarter = " ${SMARTER_KERNEL_SRC}"
