SUMMARY = "SMARTER edge services for IoT gateways"
DESCRIPTION = "The SMARTER Rust workspace (device manager, CNI plugin, DNS, \
debug agent, first-boot provisioning, boot health gate), one package per \
gateway binary, each with its systemd unit and default configuration."
HOMEPAGE = "https://github.com/smarter-project/smarter"
LICENSE = "Apache-2.0"
# The workspace declares Apache-2.0 in Cargo.toml and ships no license text of
# its own, so the checksum is that of oe-core's copy of the license.
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

require smarter-source.inc
require smarter-rust.inc
require smarter-workspace-crates.inc
require smarter-packages.inc
