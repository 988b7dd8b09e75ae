# shellcheck shell=bash
# Cross-compilation environment for Debian's native toolchains. Source it:
#   . cross/env.sh
# It sets, per target, the linker (Debian's cross gcc), pkg-config for the
# multiarch -dev packages (libudev) and a qemu-user runner so `cargo test
# --target ...` and `cargo run --target ...` execute the ARM binaries here.
#
# qemu runs WITHOUT -L: the multiarch libc6:arm64/armhf packages put the ARM
# dynamic loaders in /lib, and passing -L as well mixes two glibc builds,
# which hangs threaded programs.

# The Rust targets we ship, and the Debian names that go with them.
SMARTER_TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static
export PKG_CONFIG_ALLOW_CROSS_aarch64_unknown_linux_gnu=1
export PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar

export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER=qemu-arm-static
export PKG_CONFIG_ALLOW_CROSS_armv7_unknown_linux_gnueabihf=1
export PKG_CONFIG_LIBDIR_armv7_unknown_linux_gnueabihf=/usr/lib/arm-linux-gnueabihf/pkgconfig:/usr/share/pkgconfig
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
export AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar

# Binaries every release carries; deployments and tests depend on the names.
SMARTER_BINARIES="smarter-device-manager smarter-cni smarter-dns smarter-comms smarter-debug-agent"
# Gateway OS tools (first-boot provisioning, health gate, flasher): copied to
# the release like the services; their CLIs have subcommands, checked apart.
SMARTER_OS_BINARIES="smarter-provision smarter-update smarter-flash"

# Service folder of each binary (for its sample config).
smarter_service_of() {
    case "$1" in
        smarter-device-manager) echo device-manager ;;
        smarter-cni) echo cni ;;
        smarter-dns) echo dns ;;
        smarter-comms | smarter-debug-agent) echo debug ;;
        *) return 1 ;;
    esac
}

# qemu-user binary for a target triple ("" for the host).
smarter_runner_of() {
    case "$1" in
        aarch64-*) echo qemu-aarch64-static ;;
        armv7-*) echo qemu-arm-static ;;
        *) echo "" ;;
    esac
}
