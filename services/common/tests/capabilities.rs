//! Capability dropping against the real kernel. This file holds a single test
//! so that dropping capabilities affects no other test in the same process.

use caps::{CapSet, Capability};
use smarter_common::capabilities::retain_only;

#[test]
fn drops_everything_but_the_requested_set() -> Result<(), Box<dyn std::error::Error>> {
    let before = caps::read(None, CapSet::Permitted)?;
    let r = retain_only(&[Capability::CAP_NET_BIND_SERVICE])?;
    let after = caps::read(None, CapSet::Permitted)?;
    assert!(
        after.iter().all(|c| *c == Capability::CAP_NET_BIND_SERVICE),
        "permitted after drop: {after:?}"
    );
    assert!(caps::read(None, CapSet::Inheritable)?.is_empty());
    assert!(caps::read(None, CapSet::Ambient)?.is_empty());
    if before.contains(&Capability::CAP_NET_BIND_SERVICE) {
        assert_eq!(r.effective, vec![Capability::CAP_NET_BIND_SERVICE]);
        assert!(r.missing.is_empty());
    } else {
        eprintln!("not running with CAP_NET_BIND_SERVICE: only the drop is checked");
        assert_eq!(r.missing, vec![Capability::CAP_NET_BIND_SERVICE]);
    }
    if before.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding)?;
        assert!(
            bounding
                .iter()
                .all(|c| *c == Capability::CAP_NET_BIND_SERVICE),
            "bounding after drop: {bounding:?}"
        );
    }
    Ok(())
}
