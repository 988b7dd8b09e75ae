//! smarter-cni: a CNI plugin (spec 1.1.0) for a private per-gateway network,
//! and the installer that places it and writes its network config.
//!
//! Design: [`spec`] is the protocol without I/O (environment, versions,
//! results, errors); [`netconf`] parses the network config; [`ipam`] is the
//! built-in file-backed allocator; [`delegate`] runs another IPAM plugin;
//! [`native`] wires bridge, veth, addresses and routes over
//! [`smarter_common::netlink`] (the rtnetlink client shared with smarter-dns); [`nft`] generates and applies the
//! masquerade and isolation rules; [`plugin`] dispatches one invocation and
//! writes the DNS record ([`smarter_common::records`]).
//!
//! Limitations: IPv4 only; one address per attachment.

pub mod config;
pub mod delegate;
pub mod docker;
pub mod install;
pub mod ipam;
pub mod native;
pub mod netconf;
pub mod nft;
pub mod plugin;
pub mod spec;

/// Golden-file comparison for unit tests: `UPDATE_GOLDEN=1` rewrites.
#[cfg(test)]
pub(crate) fn golden(name: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let _ = std::fs::write(&path, got);
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        got,
        want,
        "golden file {} differs (UPDATE_GOLDEN=1 to rewrite)",
        path.display()
    );
}
