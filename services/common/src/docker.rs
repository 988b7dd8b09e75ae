//! The Docker Engine API client smarter-dns and smarter-debug-agent share:
//! `bollard` over the daemon's unix socket, and one error naming the socket,
//! the call and the container (decision 0120).
//!
//! A bollard client is made per call: making one opens nothing (it only
//! checks that the socket exists) and bollard keeps no idle connections on
//! unix sockets, so a dockerd that starts or restarts after us is found at
//! the next call, and a socket path changed by a config reload is followed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use bollard;
use bollard::models::{ContainerInspectResponse, ContainerSummary};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};

/// How long one request may take to answer. The `/events` stream is not
/// bounded by it: bollard bounds only the wait for a response's headers.
pub const REQUEST_TIMEOUT_S: u64 = 30;

/// A Docker Engine API call failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "docker API at {}: {call}{}: {source}",
    socket.display(),
    container.as_ref().map(|c| format!(" container {c}")).unwrap_or_default()
)]
pub struct DockerError {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// What we asked.
    pub call: &'static str,
    /// The container asked about, if any.
    pub container: Option<String>,
    /// bollard's error (boxed: it is large); carries Docker's `message`.
    pub source: Box<bollard::errors::Error>,
}

/// Whether `id` is a plain container id or name that may become a request
/// path: bollard puts it into the URL as given, where `..` or `/` would
/// name another endpoint.
pub fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The daemon at one socket.
#[derive(Debug, Clone)]
pub struct Docker {
    socket: PathBuf,
}

impl Docker {
    /// The daemon at `socket` (nothing is opened until a call).
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A typed error for `call` (on `container`) from bollard's.
    pub fn error(
        &self,
        call: &'static str,
        container: Option<&str>,
    ) -> impl FnOnce(bollard::errors::Error) -> DockerError + use<> {
        let socket = self.socket.clone();
        let container = container.map(str::to_string);
        move |source| DockerError {
            socket,
            call,
            container,
            source: Box::new(source),
        }
    }

    /// A bollard client for one call (or one event stream).
    pub fn client(&self) -> Result<bollard::Docker, DockerError> {
        bollard::Docker::connect_with_unix(
            &self.socket.to_string_lossy(),
            REQUEST_TIMEOUT_S,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(self.error("connect", None))
    }

    /// Containers matching `filters` (running ones only unless a `status`
    /// filter says otherwise), as `GET /containers/json` lists them.
    pub async fn list(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let options = ListContainersOptions {
            filters: (!filters.is_empty()).then_some(filters),
            ..Default::default()
        };
        self.client()?
            .list_containers(Some(options))
            .await
            .map_err(self.error("list containers", None))
    }

    /// `GET /containers/{id}/json`; `None` when there is no such container
    /// (404) or `id` is not a plain id.
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, DockerError> {
        if !is_plain_id(id) {
            return Ok(None);
        }
        match self
            .client()?
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.error("inspect", Some(id))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A daemon answering every request with `status` and `body`.
    fn daemon(socket: &Path, status: &'static str, body: &'static str) {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
    }

    #[tokio::test]
    async fn errors_name_the_socket_call_and_container() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let d = Docker::new(&socket);
        // No daemon: the socket is named.
        let e = d.list(HashMap::new()).await.unwrap_err();
        assert_eq!(e.call, "connect");
        assert!(e.to_string().contains(&socket.display().to_string()), "{e}");
        // A daemon answering 500: the container and Docker's message too.
        daemon(
            &socket,
            "500 Internal Server Error",
            r#"{"message":"daemon is sulking"}"#,
        );
        let msg = d.inspect("c0ffee").await.unwrap_err().to_string();
        for part in [
            socket.display().to_string().as_str(),
            "inspect container c0ffee",
            "daemon is sulking",
        ] {
            assert!(msg.contains(part), "{part:?} missing from {msg:?}");
        }
        let msg = d.list(HashMap::new()).await.unwrap_err().to_string();
        assert!(msg.contains(": list containers: "), "{msg}");
    }

    #[tokio::test]
    async fn missing_containers_and_odd_ids_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        daemon(
            &socket,
            "404 Not Found",
            r#"{"message":"No such container: x"}"#,
        );
        let d = Docker::new(&socket);
        assert!(d.inspect("x").await.unwrap().is_none());
        // Never sent: these would name other endpoints.
        for id in ["../info", "a/b", "", ".."] {
            assert!(!is_plain_id(id), "{id}");
            assert!(d.inspect(id).await.unwrap().is_none());
        }
        assert!(is_plain_id("3f2a9c0e"));
        assert!(is_plain_id("my_web-1.x"));
    }
}
