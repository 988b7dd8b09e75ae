#!/usr/bin/env bash
# Install everything building and testing SMARTER needs on Debian 12
# (bookworm): cross linkers, ARM multiarch libraries, qemu-user, the test
# peers (OpenSSH, dnsmasq, dnsperf, dig, the reference CNI plugins, dockerd,
# nftables) and the rustup targets. Idempotent: quick when all is present.
# Needs root (it calls apt-get and dpkg).
set -euo pipefail

APT_PACKAGES=(
    # build
    build-essential pkg-config protobuf-compiler libprotobuf-dev git ca-certificates curl
    libudev-dev
    # cross toolchains and ARM libraries
    gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf
    libc6-dev-arm64-cross libc6-dev-armhf-cross
    libudev-dev:arm64 libudev-dev:armhf
    qemu-user-static file
    # test peers
    iproute2 iptables nftables iputils-ping busybox-static bind9-dnsutils dnsmasq-base dnsperf
    openssh-client openssh-server openssh-sftp-server openssl util-linux containernetworking-plugins
    docker.io containerd skopeo jq
    # device-manager udev tests: a real systemd-udevd and udevadm (not started here)
    udev
    # device-manager: a kubelet double on grpc-go (the kubelet's own gRPC stack)
    golang-go golang-google-grpc-dev golang-google-protobuf-dev
    # dns dummy-interface test: a VM on Debian's kernel (which has dummy.ko)
    qemu-system-x86 cpio linux-image-amd64
    python3 python3-venv python3-pip python3-yaml
    # images/: RAUC bundles, the emulated gateway (mmdebstrap rootfs, disk image without loop
    # devices, QEMU with Debian's U-Boot) and the flasher (bmaptool)
    rauc squashfs-tools u-boot-tools mmdebstrap arch-test binfmt-support qemu-system-arm
    u-boot-qemu ipxe-qemu mtools dosfstools fdisk e2fsprogs bmap-tools
)

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-debian.sh: must run as root (apt-get, dpkg)" >&2
    exit 1
fi

# The :arm64/:armhf packages need their architectures (a no-op once added).
for arch in arm64 armhf; do
    dpkg --print-foreign-architectures | grep -qx "$arch" || dpkg --add-architecture "$arch"
done
# The kernel is only booted by qemu with the tests' own initramfs: skip
# building a host initramfs for it.
export INITRD=No
# shellcheck source=apt.sh
. "$(dirname "$0")/apt.sh"
smarter_apt_ensure setup "${APT_PACKAGES[@]}"

if ! command -v cargo >/dev/null 2>&1; then
    if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
        # A fresh machine: rustup's own installer, checked against the
        # SHA-256 published beside it, installs the stable toolchain.
        echo "setup: installing rustup and the stable Rust toolchain"
        init=$(mktemp)
        url=https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init
        curl -sSf --retry 3 -o "$init" "$url"
        want=$(curl -sSf --retry 3 "$url.sha256" | cut -d' ' -f1)
        if [ "$(sha256sum "$init" | cut -d' ' -f1)" != "$want" ]; then
            echo "setup: $url does not match its published SHA-256" >&2
            exit 1
        fi
        chmod +x "$init"
        "$init" -y --no-modify-path --profile minimal --default-toolchain stable
        rm -f "$init"
    fi
    export PATH="$HOME/.cargo/bin:$PATH"
fi

installed_targets=$(rustup target list --installed)
for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
for c in rustfmt clippy; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done
# The lowest Rust our images build with (meta-rust-bin on scarthgap): CI checks
# the workspace with it so a dependency that under-declares its minimum Rust
# fails here rather than in a Yocto build (docs/decisions/0001).
rustup toolchain list | grep -q '^1\.94\.0-' || rustup toolchain install 1.94.0 --profile minimal
# The bounded fuzz run of ./dev test builds with libFuzzer's instrumentation,
# which needs nightly (services/dns/fuzz/run.sh, services/h2/fuzz/run.sh).
rustup toolchain list | grep -q '^nightly-' || rustup toolchain install nightly --profile minimal
echo "setup: done"
