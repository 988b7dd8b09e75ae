//! smarter-cni: a CNI plugin (spec 1.1.0) for a private per-gateway network,
//! and the installer that places it and writes its network config.

pub mod config;
