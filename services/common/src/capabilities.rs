//! Least privilege: keep only the Linux capabilities a service needs.
//!
//! Each service calls [`retain_only`] at start with its documented set. The
//! bounding set is cleared first (which needs CAP_SETPCAP, so it is done while
//! we still may have it), then the ambient, inheritable, permitted and
//! effective sets are reduced to the kept ones. Capabilities we are asked to
//! keep but never had are reported, not invented: a service running
//! unprivileged in a test simply keeps nothing.

use caps::{CapSet, Capability, CapsHashSet};

/// A capability set could not be changed.
#[derive(Debug, thiserror::Error)]
#[error("cannot reduce {set} capability set: {message}")]
pub struct CapsError {
    /// Which set (`bounding`, `permitted`...).
    pub set: &'static str,
    /// The underlying error.
    pub message: String,
}

/// What [`retain_only`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// Capabilities effective after the call.
    pub effective: Vec<Capability>,
    /// Capabilities we were asked to keep but did not hold.
    pub missing: Vec<Capability>,
}

/// Drop every capability not in `keep` from all five sets.
pub fn retain_only(keep: &[Capability]) -> Result<Retained, CapsError> {
    let keep_set: CapsHashSet = keep.iter().copied().collect();
    let err = |set: &'static str| {
        move |e: caps::errors::CapsError| CapsError {
            set,
            message: e.to_string(),
        }
    };

    // Bounding: drop one by one, needs CAP_SETPCAP in the effective set.
    let bounding = caps::read(None, CapSet::Bounding).map_err(err("bounding"))?;
    let can_setpcap = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(err("effective"))?;
    if can_setpcap {
        for cap in bounding.difference(&keep_set) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(err("bounding"))?;
        }
    }

    // Ambient must be cleared before inheritable/permitted shrink.
    caps::clear(None, CapSet::Ambient).map_err(err("ambient"))?;

    let permitted = caps::read(None, CapSet::Permitted).map_err(err("permitted"))?;
    let kept: CapsHashSet = permitted.intersection(&keep_set).copied().collect();
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(err("inheritable"))?;
    caps::set(None, CapSet::Effective, &kept).map_err(err("effective"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(err("permitted"))?;

    let mut effective: Vec<Capability> = kept.iter().copied().collect();
    effective.sort_by_key(|c| c.index());
    let mut missing: Vec<Capability> = keep_set.difference(&permitted).copied().collect();
    missing.sort_by_key(|c| c.index());
    tracing::info!(
        kept = ?effective,
        missing = ?missing,
        bounding_cleared = can_setpcap,
        "capabilities reduced"
    );
    Ok(Retained { effective, missing })
}
