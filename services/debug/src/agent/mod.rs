//! smarter-debug-agent: the gateway side.

pub mod config;
