//! What the integration tests share: a misbehaving bundle server, a private
//! D-Bus with stand-ins for RAUC and logind.
// Each test crate uses a part of it.
#![allow(dead_code, unreachable_pub)]

pub mod bundle_server;
pub mod bus;
