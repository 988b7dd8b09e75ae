//! Remote field debugging: `smarter-comms` (cloud) and `smarter-debug-agent`
//! (gateway).

pub mod agent;
pub mod comms;
