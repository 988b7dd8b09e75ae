//! smarter-comms: the cloud side.

pub mod config;
