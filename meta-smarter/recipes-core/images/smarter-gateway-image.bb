SUMMARY = "SMARTER gateway: k3s agent, containerd and the SMARTER services"
DESCRIPTION = "Read-only root filesystem (A/B slots updated by RAUC), a data \
partition for k3s and containerd state, first-boot provisioning from the boot \
partition, and the SMARTER DaemonSets' container images pre-loaded for k3s."
LICENSE = "MIT"

inherit core-image

IMAGE_FEATURES += "read-only-rootfs"
IMAGE_LINGUAS = ""

IMAGE_INSTALL = " \
    packagegroup-core-boot \
    ${CORE_IMAGE_EXTRA_INSTALL} \
    k3s-agent \
    rauc \
    smarter-device-manager \
    smarter-cni \
    smarter-dns \
    smarter-debug-agent \
    smarter-update \
    smarter-provision \
    smarter-data \
    smarter-airgap-images \
    ${SMARTER_IMAGE_EXTRA_INSTALL} \
"
SMARTER_IMAGE_EXTRA_INSTALL ??= ""

# Room for k3s to unpack its data on first start is on /data, not here; a
# little slack for the read-only root.
IMAGE_ROOTFS_EXTRA_SPACE ?= "65536"

# 4 KiB ext4 blocks whatever the image's size (mke2fs picks 1 KiB below 512 MiB): RAUC's
# adaptive update (block-hash-index) matches what a slot already holds by the hashes of 4 KiB
# chunks, which only line up with files when every file starts on a 4 KiB boundary. (`ext4` is
# the image type the override names, which oelint cannot know.)
# nooelint: oelint.vars.specific
EXTRA_IMAGECMD:ext4 = "-i 4096 -b 4096"
