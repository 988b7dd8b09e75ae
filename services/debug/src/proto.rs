//! The little protocol between agent and comms inside the agent's own SSH
//! connection.
//!
//! - Comms opens a `forwarded-tcpip` channel per developer session; its
//!   originator address is `session-<id>` so the agent knows which session
//!   it serves.
//! - The agent asks comms things with `exec` on a session channel whose
//!   command is one JSON [`AgentRequest`]; requests with a body
//!   (recordings) send it as channel data followed by EOF. Comms answers on
//!   stdout (JSON for `authorize`) with exit status 0, or an error message on
//!   stderr with exit status 1.

use serde::{Deserialize, Serialize};

use crate::policy::Target;

/// Largest upload (recording) comms accepts.
pub const MAX_UPLOAD: usize = 64 * 1024 * 1024;

/// A request from the agent to comms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentRequest {
    /// May the holder of key `fingerprint`, who came in as session
    /// `session`, open a session on the target named by `user`?
    Authorize {
        /// Session id from the channel's originator address.
        session: i64,
        /// `SHA256:` fingerprint of the key the developer proved to the agent.
        fingerprint: String,
        /// User name the developer gave the agent (selects the target).
        user: String,
    },
    /// The asciinema recording of `session` follows as channel data.
    Recording {
        /// Session id.
        session: i64,
    },
    /// The agent refused a session comms had allowed (e.g. the pod is not
    /// running); comms writes it to the audit log as `session.denied`.
    Denied {
        /// Session id.
        session: i64,
        /// Why.
        reason: String,
    },
}

impl AgentRequest {
    /// Whether data follows the request.
    pub fn has_body(&self) -> bool {
        matches!(self, AgentRequest::Recording { .. })
    }

    /// The exec command line.
    pub fn to_command(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parses an exec command into a request.
pub fn parse_request(cmd: &[u8]) -> Result<AgentRequest, String> {
    serde_json::from_slice(cmd).map_err(|e| format!("bad request: {e}"))
}

/// Comms' answer to [`AgentRequest::Authorize`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeReply {
    /// Whether the session may start.
    pub allowed: bool,
    /// The developer behind the session.
    pub developer: Option<String>,
    /// The target parsed from the user name.
    pub target: Option<Target>,
    /// Unix seconds at which the session must end.
    pub ends_at: Option<i64>,
    /// Why not, when refused.
    pub reason: Option<String>,
}

/// The originator address comms puts on a session's forwarded channel.
pub fn session_originator(id: i64) -> String {
    format!("session-{id}")
}

/// Parses [`session_originator`].
pub fn parse_originator(addr: &str) -> Option<i64> {
    addr.strip_prefix("session-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = AgentRequest::Authorize {
            session: 4,
            fingerprint: "SHA256:x".into(),
            user: "ns/pod".into(),
        };
        assert_eq!(parse_request(r.to_command().as_bytes()).unwrap(), r);
        assert!(parse_request(b"{\"op\":\"authorize\",\"session\":1}").is_err());
        assert!(parse_request(b"rm -rf /").is_err());
        assert_eq!(parse_originator(&session_originator(42)), Some(42));
        assert_eq!(parse_originator("127.0.0.1"), None);
    }
}
