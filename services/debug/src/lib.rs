//! Remote field debugging: `smarter-comms` (cloud) and `smarter-debug-agent`
//! (gateway).
//!
//! The agent on each gateway dials out to comms over SSH and asks for a
//! remote forward. A developer uses plain OpenSSH with comms as jump host
//! (`ssh -J alice@comms:2222 gateway-17`); comms checks account, key and
//! grant, then splices the developer's `direct-tcpip` channel into a
//! `forwarded-tcpip` channel on the agent's connection. Inside runs a second,
//! end-to-end SSH session between the developer's client and an SSH server
//! embedded in the agent, which re-checks the developer with comms and runs
//! the shell, command or sftp on the gateway or inside one pod's namespaces.
//! See `docs/decisions/0040-remote-debug-design.md`.
//!
//! Limitations: see the crate README.

pub mod agent;
pub mod comms;
pub mod keys;
pub mod policy;
pub mod proto;
pub mod transfer;
