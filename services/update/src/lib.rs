//! SMARTER gateway OS updates.
//!
//! This crate holds the boot **health gate** (`smarter-update
//! health-gate`): after a boot, it waits up to a deadline for the configured
//! systemd units, HTTP endpoints and the container runtime to be healthy, then
//! marks the booted RAUC slot good. If they are not healthy in time it says
//! exactly what failed (console and journal) and, when the booted slot is a
//! fresh one, marks it bad and reboots so the boot counter returns to the
//! slot it last marked good. On that known-good slot it never reboots, so a
//! failure that both slots share cannot turn into a reboot loop.
//!
//! * [`config`]: the settings, `/etc/smarter/health-gate.toml`.
//! * [`checks`]: the checks (systemctl, HTTP, container runtime socket).
//! * [`slot`]: which slot is booted (kernel command line or `rauc status`) and
//!   the gate's own state on /data (the slot it last marked good).
//! * [`error`]: the typed errors of [`slot`] and [`gate::run_command`].
//! * [`gate`]: the decision ([`gate::decide`], pure) and the run loop.
//!
//! And the OS update agent (a DaemonSet pod driving RAUC and logind over
//! D-Bus; `smarter-update agent`), made of:
//!
//! * [`agent_config`]: its settings, `/etc/smarter/update-agent.toml`.
//! * [`desired`]: the desired-bundle file (version, URL, size, SHA-256), a
//!   ConfigMap mounted into the pod.
//! * [`download`]: the resumable, verified, bandwidth-limited download of a
//!   bundle onto the data partition; [`bandwidth`] is its token bucket.
//! * [`rauc`]: the host's RAUC over D-Bus (install, progress, slot status).
//! * [`logind`]: rebooting the host through systemd-logind over D-Bus.
//! * [`agent`]: the state machine ([`agent::decide`], pure) and its rounds.
//! * [`status`]: `/healthz`, `/readyz` and `/metrics`.

pub mod agent;
pub mod agent_config;
pub mod bandwidth;
pub mod checks;
pub mod config;
pub mod desired;
pub mod download;
pub mod error;
pub mod gate;
pub mod logind;
pub mod rauc;
pub mod slot;
pub mod status;

pub use error::Error;
