//! smarter-dns: a local, event-driven DNS server for the apps of one gateway.

pub mod config;
