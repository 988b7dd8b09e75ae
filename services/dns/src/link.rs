//! The dummy interface that carries the cluster DNS address.
//!
//! The kubelet gives pods a link-local DNS address (default 169.254.0.2).
//! Instead of the original's iptables DNAT, smarter-dns owns that address:
//! it creates a `dummy` interface, puts the link-local listen addresses on
//! it (/32 or /128) and brings it up, over rtnetlink. All of this is
//! idempotent (an existing interface or address is fine), needs
//! CAP_NET_ADMIN and is done once at start, blocking, before the async
//! runtime starts. The requests go through the rtnetlink client smarter-cni
//! uses too ([`smarter_common::netlink`]).

use std::net::IpAddr;

use smarter_common::netlink::{Netlink, NetlinkError};

/// Setting up the interface failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A netlink request failed (the error names the request).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The interface is not there after creating it (removed meanwhile).
    #[error("interface {0} vanished")]
    Vanished(String),
    /// The interface name is not usable.
    #[error("bad interface name {0:?}")]
    BadName(String),
    /// The kernel has no `dummy` link type (CONFIG_DUMMY off, module not
    /// loadable, as in some containers).
    #[error("the kernel does not support dummy interfaces")]
    NoDummySupport,
}

/// The loopback interface, used when the kernel has no dummy support.
pub const LOOPBACK: &str = "lo";

/// Whether an address belongs on the dummy interface (link-local), as
/// opposed to an address some other interface (the bridge) already owns.
pub fn belongs_on_dummy(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Create the dummy interface `name` (if missing; `lo` is used as it is),
/// put `addrs` on it and bring it up. Returns the interface index.
/// [`LinkError::NoDummySupport`] tells the caller to fall back to `lo`.
pub fn ensure_dummy(name: &str, addrs: &[IpAddr]) -> Result<u32, LinkError> {
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(LinkError::BadName(name.to_string()));
    }
    let mut nl = Netlink::new()?;
    if name != LOOPBACK {
        match nl.add_dummy(name) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) if e.is_not_supported() => return Err(LinkError::NoDummySupport),
            Err(e) => return Err(e.into()),
        }
    }
    let index = nl
        .link_by_name(name)?
        .ok_or_else(|| LinkError::Vanished(name.to_string()))?
        .index;
    for ip in addrs {
        nl.add_host_address(index, *ip)?;
    }
    nl.set_up(index, None, None)?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_addresses_go_on_the_dummy() {
        let v = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert!(belongs_on_dummy(&v("169.254.0.2")));
        assert!(belongs_on_dummy(&v("fe80::53")));
        assert!(!belongs_on_dummy(&v("172.39.0.1")));
        assert!(!belongs_on_dummy(&v("fd00::1")));
    }

    #[test]
    fn unusable_names_are_refused_before_any_request() {
        for name in ["", "a-name-longer-than-15", "nul\0"] {
            assert!(matches!(
                ensure_dummy(name, &[]),
                Err(LinkError::BadName(n)) if n == name
            ));
        }
    }
}
