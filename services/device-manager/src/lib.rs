//! smarter-device-manager: a kubelet device plugin that turns host device
//! nodes into Kubernetes extended resources (`smarter-devices/<name>`).
//!
//! Design:
//! * [`config`] reads our TOML or the original's `conf.yaml` list;
//!   [`rules`] compiles and checks the rules.
//! * [`scan`] reads the device tree, sysfs and the udev database (I/O);
//!   [`discover`] decides resources and devices from that (pure);
//!   [`registry`] keeps devices and health and answers Allocate and
//!   GetPreferredAllocation (pure).
//! * [`plugin`] serves one `DevicePlugin` gRPC server per resource on
//!   `smarter-<name>.sock` and registers it with the kubelet;
//!   [`service`] wires scans, inotify ([`watch`]), signals and plugins;
//!   [`cdi`] writes CDI spec files and [`metrics`] says what `/metrics` and
//!   `/readyz` show (served by `smarter_common::metrics`).
//!
//! Hotplug: the udev monitor ([`udev_monitor`], cargo feature `udev`, on by
//! default) where a udev daemon runs, inotify on the device root otherwise
//! (see `docs/decisions/0014-udev-monitor.md`); udev properties come from
//! the monitor's events, sysfs and `/run/udev/data`. The
//! kubelet API needs one socket, server and HTTP/2 connection per resource.
//! They are served by the `smarter-h2` crate (our own HTTP/2 server, one
//! epoll task for all of them, no buffer held by an idle connection), so a
//! one-node resource costs about 2.5 KiB resident
//! (`docs/decisions/0016-own-http2-server.md`).
//!
//! See `services/device-manager/README.md` for the configuration reference.

pub mod cdi;
pub mod config;
pub mod discover;
pub mod metrics;
pub mod plugin;
pub mod proto;
pub mod registry;
pub mod rules;
pub mod scan;
pub mod service;
pub mod udev_monitor;
pub mod watch;
