//! smarter-device-manager: a kubelet device plugin that turns host device
//! nodes into Kubernetes extended resources (`smarter-devices/<name>`).
//!
//! See `services/device-manager/README.md` for the configuration reference.

pub mod config;
