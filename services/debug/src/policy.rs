//! Who may reach what: the decisions comms makes when a developer routes to
//! a gateway and when the agent asks whether a developer may open a session
//! on a target. Pure functions over rows; no I/O.

use serde::{Deserialize, Serialize};

/// A developer account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Developer {
    /// Account name (also the SSH user at comms).
    pub name: String,
    /// Unix seconds after which the account is refused; `None` = never.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A grant: developer may debug on gateway, optionally only one namespace or pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Row id.
    pub id: i64,
    /// Developer name.
    pub developer: String,
    /// Gateway name.
    pub gateway: String,
    /// Restricts sessions to pods of this Kubernetes namespace.
    pub namespace: Option<String>,
    /// Restricts sessions to this pod (requires `namespace`).
    pub pod: Option<String>,
    /// Unix seconds after which the grant is refused; `None` = never.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Where a session runs on the gateway, chosen by the SSH user name given to
/// the agent: `NAMESPACE/POD` means that pod, anything else the gateway host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// The gateway itself.
    Host,
    /// One pod's namespaces.
    Pod {
        /// Kubernetes namespace.
        namespace: String,
        /// Pod name.
        pod: String,
    },
}

impl Target {
    /// Parses the inner SSH user name.
    pub fn from_user(user: &str) -> Target {
        match user.split_once('/') {
            Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() => Target::Pod {
                namespace: ns.to_string(),
                pod: pod.to_string(),
            },
            _ => Target::Host,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Host => f.write_str("host"),
            Target::Pod { namespace, pod } => write!(f, "pod {namespace}/{pod}"),
        }
    }
}

/// Why access is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No such developer.
    #[error("unknown developer")]
    UnknownDeveloper,
    /// The key is not one of the developer's keys.
    #[error("key not registered for developer")]
    WrongKey,
    /// Account expired.
    #[error("developer account expired")]
    DeveloperExpired,
    /// No grant at all for this gateway.
    #[error("no grant for this gateway")]
    NoGrant,
    /// Grants exist but all have expired.
    #[error("grant expired")]
    GrantExpired,
    /// Grants exist but none covers the requested target.
    #[error("no grant covers target {0}")]
    TargetNotGranted(Target),
    /// Unknown gateway name.
    #[error("unknown gateway")]
    UnknownGateway,
    /// Gateway known but its agent is not connected.
    #[error("gateway not connected")]
    GatewayOffline,
    /// The developer has as many live sessions as allowed.
    #[error("session limit reached ({0} live sessions)")]
    TooManySessions(usize),
    /// The session the agent asked about is not live.
    #[error("no such live session")]
    NoSession,
}

fn active(expires_at: Option<i64>, now: i64) -> bool {
    expires_at.is_none_or(|t| now < t)
}

/// Whether the developer account is usable at `now`.
pub fn developer_active(dev: &Developer, now: i64) -> Result<(), Denial> {
    if active(dev.expires_at, now) {
        Ok(())
    } else {
        Err(Denial::DeveloperExpired)
    }
}

impl Grant {
    /// Whether this grant allows a session on `target`.
    pub fn covers(&self, target: &Target) -> bool {
        match (target, &self.namespace, &self.pod) {
            (_, None, _) => true,
            (Target::Host, Some(_), _) => false,
            (Target::Pod { namespace, .. }, Some(ns), None) => ns == namespace,
            (Target::Pod { namespace, pod }, Some(ns), Some(p)) => ns == namespace && p == pod,
        }
    }
}

/// An allowed session: the grant it rests on and when it must end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowed {
    /// The grant used.
    pub grant_id: i64,
    /// Unix seconds at which the session must end (earliest of account and grant expiry).
    pub ends_at: Option<i64>,
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Decides whether `dev` may open a session on `target` given its grants
/// for that gateway; `target = None` asks only whether it may route there.
pub fn authorize(
    dev: &Developer,
    grants: &[Grant],
    target: Option<&Target>,
    now: i64,
) -> Result<Allowed, Denial> {
    developer_active(dev, now)?;
    if grants.is_empty() {
        return Err(Denial::NoGrant);
    }
    let live: Vec<&Grant> = grants
        .iter()
        .filter(|g| active(g.expires_at, now))
        .collect();
    if live.is_empty() {
        return Err(Denial::GrantExpired);
    }
    let best = live
        .into_iter()
        .filter(|g| target.is_none_or(|t| g.covers(t)))
        // Prefer the grant that lasts longest (None = forever).
        .max_by_key(|g| g.expires_at.unwrap_or(i64::MAX))
        .ok_or_else(|| Denial::TargetNotGranted(target.cloned().unwrap_or(Target::Host)))?;
    Ok(Allowed {
        grant_id: best.id,
        ends_at: min_opt(dev.expires_at, best.expires_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(exp: Option<i64>) -> Developer {
        Developer {
            name: "alice".into(),
            expires_at: exp,
            created_at: 0,
        }
    }
    fn grant(id: i64, ns: Option<&str>, pod: Option<&str>, exp: Option<i64>) -> Grant {
        Grant {
            id,
            developer: "alice".into(),
            gateway: "gw".into(),
            namespace: ns.map(Into::into),
            pod: pod.map(Into::into),
            expires_at: exp,
            created_at: 0,
        }
    }

    #[test]
    fn target_from_user() {
        assert_eq!(Target::from_user("alice"), Target::Host);
        assert_eq!(Target::from_user("/x"), Target::Host);
        assert_eq!(
            Target::from_user("kube-system/coredns-1"),
            Target::Pod {
                namespace: "kube-system".into(),
                pod: "coredns-1".into()
            }
        );
    }

    #[test]
    fn expiry_and_grants() {
        let now = 100;
        assert_eq!(
            authorize(&dev(Some(100)), &[grant(1, None, None, None)], None, now),
            Err(Denial::DeveloperExpired)
        );
        assert_eq!(authorize(&dev(None), &[], None, now), Err(Denial::NoGrant));
        assert_eq!(
            authorize(&dev(None), &[grant(1, None, None, Some(50))], None, now),
            Err(Denial::GrantExpired)
        );
        let ok = authorize(
            &dev(Some(500)),
            &[
                grant(1, None, None, Some(50)),
                grant(2, None, None, Some(900)),
            ],
            None,
            now,
        )
        .unwrap();
        assert_eq!(ok.grant_id, 2);
        assert_eq!(ok.ends_at, Some(500));
    }

    #[test]
    fn scope() {
        let pod = Target::from_user("apps/web");
        let other = Target::from_user("apps/db");
        let gs = [grant(7, Some("apps"), Some("web"), None)];
        assert!(authorize(&dev(None), &gs, Some(&pod), 0).is_ok());
        assert_eq!(
            authorize(&dev(None), &gs, Some(&other), 0),
            Err(Denial::TargetNotGranted(other.clone()))
        );
        assert!(matches!(
            authorize(&dev(None), &gs, Some(&Target::Host), 0),
            Err(Denial::TargetNotGranted(Target::Host))
        ));
        let ns = [grant(8, Some("apps"), None, None)];
        assert!(authorize(&dev(None), &ns, Some(&other), 0).is_ok());
        let all = [grant(9, None, None, None)];
        assert!(authorize(&dev(None), &all, Some(&other), 0).is_ok());
        assert!(authorize(&dev(None), &all, Some(&Target::Host), 0).is_ok());
    }
}
