//! Comms state in SQLite: developers, their keys, gateways, grants,
//! sessions and the append-only audit log. Schema changes are numbered
//! migrations applied at open (tracked in `PRAGMA user_version`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::policy::{Developer, Grant};

/// Migrations, applied in order; index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE developers (
    name TEXT PRIMARY KEY,
    expires_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE developer_keys (
    id INTEGER PRIMARY KEY,
    developer TEXT NOT NULL REFERENCES developers(name) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE gateways (
    name TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE grants (
    id INTEGER PRIMARY KEY,
    developer TEXT NOT NULL REFERENCES developers(name) ON DELETE CASCADE,
    gateway TEXT NOT NULL REFERENCES gateways(name) ON DELETE CASCADE,
    namespace TEXT,
    pod TEXT,
    expires_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    developer TEXT NOT NULL,
    gateway TEXT NOT NULL,
    target TEXT,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    end_reason TEXT,
    recording TEXT
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    developer TEXT,
    gateway TEXT,
    session INTEGER,
    detail TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"#];

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening the database failed.
    #[error("opening database {path}: {source}")]
    Open {
        /// Database file.
        path: PathBuf,
        /// Cause.
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("database {op}: {source}")]
    Sql {
        /// What we were doing.
        op: &'static str,
        /// Cause.
        source: rusqlite::Error,
    },
    /// The row does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The row exists already or a unique value is taken.
    #[error("{0} already exists")]
    Conflict(String),
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { op, source }
}

fn conflict_or(op: &'static str, what: String) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| match &source {
        rusqlite::Error::SqliteFailure(e, _)
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(what)
        }
        _ => StoreError::Sql { op, source },
    }
}

/// A developer's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeveloperKey {
    /// Row id.
    pub id: i64,
    /// Owner.
    pub developer: String,
    /// OpenSSH public key line.
    pub public_key: String,
    /// `SHA256:` fingerprint.
    pub fingerprint: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// An enrolled gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    /// Name developers use as the SSH host.
    pub name: String,
    /// The agent's OpenSSH public key (also its SSH host key).
    pub public_key: String,
    /// `SHA256:` fingerprint.
    pub fingerprint: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A debug session (live or finished).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    /// Row id.
    pub id: i64,
    /// Developer.
    pub developer: String,
    /// Gateway.
    pub gateway: String,
    /// Target the agent authorised (`host`, `pod ns/name`), once known.
    pub target: Option<String>,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds; `None` while live.
    pub ended_at: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// File name of the asciinema recording, when one was shipped.
    pub recording: Option<String>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Row id (monotonic).
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Event name, e.g. `session.start`, `session.denied`.
    pub event: String,
    /// Developer involved.
    pub developer: Option<String>,
    /// Gateway involved.
    pub gateway: Option<String>,
    /// Session involved.
    pub session: Option<i64>,
    /// Free text.
    pub detail: String,
}

/// The SQLite-backed store. Calls are short and synchronous.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

/// Current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn developer_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Developer> {
    Ok(Developer {
        name: r.get(0)?,
        expires_at: r.get(1)?,
        created_at: r.get(2)?,
    })
}

fn grant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        id: r.get(0)?,
        developer: r.get(1)?,
        gateway: r.get(2)?,
        namespace: r.get(3)?,
        pod: r.get(4)?,
        expires_at: r.get(5)?,
        created_at: r.get(6)?,
    })
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeveloperKey> {
    Ok(DeveloperKey {
        id: r.get(0)?,
        developer: r.get(1)?,
        public_key: r.get(2)?,
        fingerprint: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn gateway_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Gateway> {
    Ok(Gateway {
        name: r.get(0)?,
        public_key: r.get(1)?,
        fingerprint: r.get(2)?,
        created_at: r.get(3)?,
    })
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: r.get(0)?,
        developer: r.get(1)?,
        gateway: r.get(2)?,
        target: r.get(3)?,
        started_at: r.get(4)?,
        ended_at: r.get(5)?,
        end_reason: r.get(6)?,
        recording: r.get(7)?,
    })
}

const GRANT_COLS: &str = "id, developer, gateway, namespace, pod, expires_at, created_at";
const SESSION_COLS: &str =
    "id, developer, gateway, target, started_at, ended_at, end_reason, recording";

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::init(conn)
    }

    /// An in-memory store (tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::init(conn)
    }

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;")
            .map_err(sql("setting pragmas"))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql("reading schema version"))?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            let tx = conn.transaction().map_err(sql("starting migration"))?;
            tx.execute_batch(m).map_err(sql("migrating"))?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(sql("recording schema version"))?;
            tx.commit().map_err(sql("committing migration"))?;
        }
        // Sessions that were live when comms stopped are over.
        conn.execute(
            "UPDATE sessions SET ended_at = ?1, end_reason = 'comms restarted' WHERE ended_at IS NULL",
            params![now()],
        )
        .map_err(sql("closing stale sessions"))?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = match self.conn.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Schema version.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(sql("reading schema version"))
        })
    }

    // ---- developers

    /// Adds a developer.
    pub fn add_developer(
        &self,
        name: &str,
        expires_at: Option<i64>,
    ) -> Result<Developer, StoreError> {
        let created_at = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO developers (name, expires_at, created_at) VALUES (?1, ?2, ?3)",
                params![name, expires_at, created_at],
            )
            .map_err(conflict_or("adding developer", format!("developer {name}")))?;
            Ok(Developer {
                name: name.into(),
                expires_at,
                created_at,
            })
        })
    }

    /// Changes a developer's expiry.
    pub fn set_developer_expiry(
        &self,
        name: &str,
        expires_at: Option<i64>,
    ) -> Result<Developer, StoreError> {
        self.with(|c| {
            let n = c
                .execute(
                    "UPDATE developers SET expires_at = ?2 WHERE name = ?1",
                    params![name, expires_at],
                )
                .map_err(sql("updating developer"))?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("developer {name}")));
            }
            Ok(())
        })?;
        self.developer(name)?
            .ok_or_else(|| StoreError::NotFound(format!("developer {name}")))
    }

    /// One developer.
    pub fn developer(&self, name: &str) -> Result<Option<Developer>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT name, expires_at, created_at FROM developers WHERE name = ?1",
                params![name],
                developer_row,
            )
            .optional()
            .map_err(sql("reading developer"))
        })
    }

    /// All developers.
    pub fn developers(&self) -> Result<Vec<Developer>, StoreError> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT name, expires_at, created_at FROM developers ORDER BY name")
                .map_err(sql("listing developers"))?;
            st.query_map([], developer_row)
                .and_then(|rows| rows.collect())
                .map_err(sql("listing developers"))
        })
    }

    /// Deletes a developer with their keys and grants.
    pub fn delete_developer(&self, name: &str) -> Result<(), StoreError> {
        self.delete("DELETE FROM developers WHERE name = ?1", name, "developer")
    }

    fn delete(&self, stmt: &str, key: &str, what: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let n = c.execute(stmt, params![key]).map_err(sql("deleting"))?;
            if n == 0 {
                Err(StoreError::NotFound(format!("{what} {key}")))
            } else {
                Ok(())
            }
        })
    }

    // ---- keys

    /// Adds a public key (already validated) to a developer.
    pub fn add_key(
        &self,
        developer: &str,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<DeveloperKey, StoreError> {
        if self.developer(developer)?.is_none() {
            return Err(StoreError::NotFound(format!("developer {developer}")));
        }
        let created_at = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO developer_keys (developer, public_key, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![developer, public_key, fingerprint, created_at],
            )
            .map_err(conflict_or("adding key", format!("key {fingerprint}")))?;
            Ok(DeveloperKey {
                id: c.last_insert_rowid(),
                developer: developer.into(),
                public_key: public_key.into(),
                fingerprint: fingerprint.into(),
                created_at,
            })
        })
    }

    /// A developer's keys.
    pub fn keys(&self, developer: &str) -> Result<Vec<DeveloperKey>, StoreError> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT id, developer, public_key, fingerprint, created_at FROM developer_keys WHERE developer = ?1 ORDER BY id")
                .map_err(sql("listing keys"))?;
            st.query_map(params![developer], key_row)
                .and_then(|rows| rows.collect())
                .map_err(sql("listing keys"))
        })
    }

    /// Whether `fingerprint` is one of `developer`'s keys.
    pub fn developer_has_key(
        &self,
        developer: &str,
        fingerprint: &str,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM developer_keys WHERE developer = ?1 AND fingerprint = ?2",
                params![developer, fingerprint],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(sql("checking key"))
        })
    }

    /// Removes a developer's key.
    pub fn delete_key(&self, developer: &str, id: i64) -> Result<(), StoreError> {
        self.with(|c| {
            let n = c
                .execute(
                    "DELETE FROM developer_keys WHERE developer = ?1 AND id = ?2",
                    params![developer, id],
                )
                .map_err(sql("deleting key"))?;
            if n == 0 {
                Err(StoreError::NotFound(format!("key {id} of {developer}")))
            } else {
                Ok(())
            }
        })
    }

    // ---- gateways

    /// Enrols a gateway with its agent's public key.
    pub fn add_gateway(
        &self,
        name: &str,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<Gateway, StoreError> {
        let created_at = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO gateways (name, public_key, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, public_key, fingerprint, created_at],
            )
            .map_err(conflict_or("adding gateway", format!("gateway {name} or its key")))?;
            Ok(Gateway {
                name: name.into(),
                public_key: public_key.into(),
                fingerprint: fingerprint.into(),
                created_at,
            })
        })
    }

    /// One gateway.
    pub fn gateway(&self, name: &str) -> Result<Option<Gateway>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT name, public_key, fingerprint, created_at FROM gateways WHERE name = ?1",
                params![name],
                gateway_row,
            )
            .optional()
            .map_err(sql("reading gateway"))
        })
    }

    /// All gateways.
    pub fn gateways(&self) -> Result<Vec<Gateway>, StoreError> {
        self.with(|c| {
            let mut st = c
                .prepare(
                    "SELECT name, public_key, fingerprint, created_at FROM gateways ORDER BY name",
                )
                .map_err(sql("listing gateways"))?;
            st.query_map([], gateway_row)
                .and_then(|rows| rows.collect())
                .map_err(sql("listing gateways"))
        })
    }

    /// Removes a gateway and its grants.
    pub fn delete_gateway(&self, name: &str) -> Result<(), StoreError> {
        self.delete("DELETE FROM gateways WHERE name = ?1", name, "gateway")
    }

    // ---- grants

    /// Adds a grant.
    pub fn add_grant(
        &self,
        developer: &str,
        gateway: &str,
        namespace: Option<&str>,
        pod: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<Grant, StoreError> {
        if self.developer(developer)?.is_none() {
            return Err(StoreError::NotFound(format!("developer {developer}")));
        }
        if self.gateway(gateway)?.is_none() {
            return Err(StoreError::NotFound(format!("gateway {gateway}")));
        }
        let created_at = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO grants (developer, gateway, namespace, pod, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![developer, gateway, namespace, pod, expires_at, created_at],
            )
            .map_err(sql("adding grant"))?;
            Ok(Grant {
                id: c.last_insert_rowid(),
                developer: developer.into(),
                gateway: gateway.into(),
                namespace: namespace.map(Into::into),
                pod: pod.map(Into::into),
                expires_at,
                created_at,
            })
        })
    }

    /// Grants, optionally only those of one developer and/or gateway.
    pub fn grants(
        &self,
        developer: Option<&str>,
        gateway: Option<&str>,
    ) -> Result<Vec<Grant>, StoreError> {
        self.with(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {GRANT_COLS} FROM grants WHERE (?1 IS NULL OR developer = ?1) AND (?2 IS NULL OR gateway = ?2) ORDER BY id"
                ))
                .map_err(sql("listing grants"))?;
            st.query_map(params![developer, gateway], grant_row)
                .and_then(|rows| rows.collect())
                .map_err(sql("listing grants"))
        })
    }

    /// One grant.
    pub fn grant(&self, id: i64) -> Result<Option<Grant>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {GRANT_COLS} FROM grants WHERE id = ?1"),
                params![id],
                grant_row,
            )
            .optional()
            .map_err(sql("reading grant"))
        })
    }

    /// Revokes (deletes) a grant.
    pub fn delete_grant(&self, id: i64) -> Result<(), StoreError> {
        self.with(|c| {
            let n = c
                .execute("DELETE FROM grants WHERE id = ?1", params![id])
                .map_err(sql("deleting grant"))?;
            if n == 0 {
                Err(StoreError::NotFound(format!("grant {id}")))
            } else {
                Ok(())
            }
        })
    }

    // ---- sessions

    /// Records a new live session.
    pub fn start_session(&self, developer: &str, gateway: &str) -> Result<i64, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sessions (developer, gateway, started_at) VALUES (?1, ?2, ?3)",
                params![developer, gateway, now()],
            )
            .map_err(sql("starting session"))?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Notes the target the agent authorised.
    pub fn set_session_target(&self, id: i64, target: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE sessions SET target = ?2 WHERE id = ?1",
                params![id, target],
            )
            .map_err(sql("updating session"))
            .map(drop)
        })
    }

    /// Marks a session ended.
    pub fn end_session(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE sessions SET ended_at = ?2, end_reason = ?3 WHERE id = ?1 AND ended_at IS NULL",
                params![id, now(), reason],
            )
            .map_err(sql("ending session"))
            .map(drop)
        })
    }

    /// Notes the file holding a session's recording.
    pub fn set_session_recording(&self, id: i64, file: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE sessions SET recording = ?2 WHERE id = ?1",
                params![id, file],
            )
            .map_err(sql("updating session"))
            .map(drop)
        })
    }

    /// One session.
    pub fn session(&self, id: i64) -> Result<Option<Session>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {SESSION_COLS} FROM sessions WHERE id = ?1"),
                params![id],
                session_row,
            )
            .optional()
            .map_err(sql("reading session"))
        })
    }

    /// Sessions, newest first; `live_only` keeps those not ended.
    pub fn sessions(&self, live_only: bool) -> Result<Vec<Session>, StoreError> {
        self.with(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {SESSION_COLS} FROM sessions WHERE (?1 = 0 OR ended_at IS NULL) ORDER BY id DESC"
                ))
                .map_err(sql("listing sessions"))?;
            st.query_map(params![live_only as i64], session_row)
                .and_then(|rows| rows.collect())
                .map_err(sql("listing sessions"))
        })
    }

    // ---- audit

    /// Appends an audit entry (also logged).
    pub fn audit(
        &self,
        event: &str,
        developer: Option<&str>,
        gateway: Option<&str>,
        session: Option<i64>,
        detail: &str,
    ) -> Result<(), StoreError> {
        tracing::info!(
            audit = event,
            developer = developer.unwrap_or(""),
            gateway = gateway.unwrap_or(""),
            session = session.unwrap_or(0),
            detail,
            "audit"
        );
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at, event, developer, gateway, session, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![now(), event, developer, gateway, session, detail],
            )
            .map_err(sql("appending audit entry"))
            .map(drop)
        })
    }

    /// Audit entries with id greater than `after`, oldest first, at most `limit`.
    pub fn audit_log(&self, after: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT id, at, event, developer, gateway, session, detail FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2")
                .map_err(sql("reading audit log"))?;
            st.query_map(params![after, limit], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    event: r.get(2)?,
                    developer: r.get(3)?,
                    gateway: r.get(4)?,
                    session: r.get(5)?,
                    detail: r.get(6)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(sql("reading audit log"))
        })
    }

    /// Tries to rewrite history (tests that the log is append-only).
    #[cfg(test)]
    fn tamper(&self) -> Result<usize, StoreError> {
        self.with(|c| c.execute("DELETE FROM audit", []).map_err(sql("tamper")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crud_and_cascade() {
        let s = Store::open_in_memory().unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.add_developer("alice", None).unwrap();
        assert!(matches!(
            s.add_developer("alice", None),
            Err(StoreError::Conflict(_))
        ));
        let k = s.add_key("alice", "ssh-ed25519 AAAA", "SHA256:x").unwrap();
        assert!(s.developer_has_key("alice", "SHA256:x").unwrap());
        assert!(matches!(
            s.add_key("bob", "k", "f"),
            Err(StoreError::NotFound(_))
        ));
        s.add_gateway("gw", "ssh-ed25519 BBBB", "SHA256:y").unwrap();
        let g = s
            .add_grant("alice", "gw", Some("ns"), None, Some(5))
            .unwrap();
        assert_eq!(
            s.grants(Some("alice"), Some("gw")).unwrap(),
            vec![g.clone()]
        );
        assert_eq!(s.grants(None, Some("other")).unwrap(), vec![]);
        s.delete_key("alice", k.id).unwrap();
        assert!(!s.developer_has_key("alice", "SHA256:x").unwrap());
        s.delete_developer("alice").unwrap();
        assert!(s.grant(g.id).unwrap().is_none(), "grant cascades");
        assert!(matches!(
            s.delete_developer("alice"),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn audit_is_append_only_and_state_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open(&path).unwrap();
            s.add_developer("alice", Some(10)).unwrap();
            s.audit("x", Some("alice"), None, None, "d").unwrap();
            let id = s.start_session("alice", "gw").unwrap();
            assert_eq!(s.sessions(true).unwrap().len(), 1);
            assert!(s.tamper().is_err());
            let _ = id;
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.developer("alice").unwrap().unwrap().expires_at, Some(10));
        assert_eq!(s.audit_log(0, 10).unwrap().len(), 1);
        assert_eq!(s.sessions(true).unwrap().len(), 0, "stale sessions closed");
        assert_eq!(
            s.sessions(false).unwrap()[0].end_reason.as_deref(),
            Some("comms restarted")
        );
    }
}
