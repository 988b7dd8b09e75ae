//! SMARTER gateway provisioning.
//!
//! A gateway learns which k3s server to join, with which token, under which
//! node name and labels, from one small TOML file on its boot partition,
//! `smarter-provision.toml`. This crate is the one place that format is
//! defined ([`file`]), turned into k3s's agent configuration ([`render`]),
//! applied once at first boot ([`apply`], binary `smarter-provision`), and
//! written to an SD card together with the image by the host flasher
//! ([`flash`], binary `smarter-flash`).
//!
//! Design: the parts that decide (validation, rendering, the flasher's
//! refusals) are pure functions over values; the parts that touch the system
//! (files on /data, the hostname, block devices, bmaptool and mtools) are thin
//! and tested against real files, loop devices and tools.
//!
//! Limitations: provisioning runs once; changing a provisioned gateway means
//! deleting `/data/smarter/provision/record.toml` and rebooting. The flasher
//! understands GPT and MBR partition tables through `sfdisk --json`.

pub mod apply;
pub mod file;
pub mod flash;
pub mod render;
