//! The comms REST API: JSON over HTTP/1.1 (HTTPS with rustls when a
//! certificate is configured), admin calls authenticated with a bearer token
//! of which only the SHA-256 is stored. The OpenAPI document is
//! `openapi.yaml` beside this crate, served at `/openapi.yaml`.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::comms::ssh::Hub;
use crate::comms::store::StoreError;
use crate::keys;

/// The OpenAPI document.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// API state.
#[derive(Debug)]
pub struct Api {
    hub: Arc<Hub>,
    token_sha256: std::sync::Mutex<Option<[u8; 32]>>,
}

fn hex_decode(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// SHA-256 of `token` as lowercase hex (what goes into `admin_token_sha256`).
pub fn token_hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

type Resp = Response<Full<Bytes>>;

/// An API error: status and message, rendered as `{"error": "..."}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Conflict(_) => ApiError(StatusCode::CONFLICT, e.to_string()),
            _ => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn not_found(what: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("{what} not found"))
}

/// The grant named by a path segment: 400 when it is not a number, 404 when
/// there is no such grant.
fn grant_by_id(
    store: &crate::comms::store::Store,
    id: &str,
) -> Result<crate::policy::Grant, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("invalid grant id {id:?}")))?;
    let grant = store
        .grant(id)?
        .ok_or_else(|| not_found(format!("grant {id}")))?;
    Ok(grant)
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn no_content() -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Validates a developer or gateway name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
}

fn valid_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDeveloper {
    name: String,
    #[serde(default)]
    expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchDeveloper {
    expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    public_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGateway {
    name: String,
    public_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGrant {
    developer: String,
    gateway: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    expires_at: Option<i64>,
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

impl Api {
    /// An API over `hub`; `token_sha256_hex` as in the config.
    pub fn new(hub: Arc<Hub>, token_sha256_hex: Option<&str>) -> Arc<Api> {
        Arc::new(Api {
            hub,
            token_sha256: std::sync::Mutex::new(token_sha256_hex.and_then(hex_decode)),
        })
    }

    /// Replaces the admin token's hash (SIGHUP); the next request is checked
    /// against the new one.
    pub fn set_token(&self, token_sha256_hex: Option<&str>) {
        *locked(&self.token_sha256) = token_sha256_hex.and_then(hex_decode);
    }

    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let Some(want) = *locked(&self.token_sha256) else {
            return false;
        };
        let Some(token) = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let got = Sha256::digest(token.trim().as_bytes());
        // Constant-time comparison of the digests.
        got.iter()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Serves one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Resp, Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let r = self.route(req).await;
        let resp = match r {
            Ok(resp) => resp,
            Err(ApiError(status, msg)) => json(status, &serde_json::json!({ "error": msg })),
        };
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "api request");
        Ok(resp)
    }

    /// `GET /metrics` (no auth, like `/healthz`: counts only, no names).
    fn metrics(&self) -> String {
        let (gateways, sessions) = self.hub.counts();
        let mut out = smarter_common::metrics::Exposition::new();
        out.gauge(
            "smarter_comms_gateways_connected",
            "Gateways whose agent has its tunnel up.",
            i64::try_from(gateways).unwrap_or(i64::MAX),
        );
        out.gauge(
            "smarter_comms_sessions",
            "Live developer sessions.",
            i64::try_from(sessions).unwrap_or(i64::MAX),
        );
        out.process();
        out.finish()
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Resp, ApiError> {
        let method = req.method().clone();
        let path = req.uri().path().trim_end_matches('/').to_string();
        let query = req.uri().query().map(str::to_string);
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match (&method, segs.as_slice()) {
            (&Method::GET, ["openapi.yaml"]) => {
                return Ok(text(StatusCode::OK, "application/yaml", OPENAPI));
            }
            (&Method::GET, ["healthz"]) => return Ok(text(StatusCode::OK, "text/plain", "ok\n")),
            (&Method::GET, ["metrics"]) => {
                return Ok(text(
                    StatusCode::OK,
                    smarter_common::metrics::CONTENT_TYPE,
                    self.metrics(),
                ));
            }
            _ => {}
        }
        if !self.authorised(&req) {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({ "error": "missing or invalid bearer token" }),
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return Ok(r);
        }
        let has_body = matches!(method, Method::POST | Method::PATCH | Method::PUT);
        if has_body {
            let ct = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ct.starts_with("application/json") {
                return Err(ApiError(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Content-Type must be application/json".into(),
                ));
            }
        }
        let body = Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("reading body: {e}")))?
            .to_bytes();
        let store = &self.hub.store;
        let q = query.as_deref();
        match (&method, segs.as_slice()) {
            (&Method::GET, ["v1", "developers"]) => Ok(json(StatusCode::OK, &store.developers()?)),
            (&Method::POST, ["v1", "developers"]) => {
                let d: NewDeveloper = parse_body(&body)?;
                if !valid_name(&d.name) {
                    return Err(bad(format!(
                        "invalid developer name {:?}: use [a-z0-9][a-z0-9._-]{{0,62}}",
                        d.name
                    )));
                }
                let dev = store.add_developer(&d.name, d.expires_at)?;
                self.admin_audit(
                    "developer.add",
                    Some(&d.name),
                    None,
                    &format!("expires_at {:?}", d.expires_at),
                );
                Ok(json(StatusCode::CREATED, &dev))
            }
            (&Method::GET, ["v1", "developers", name]) => {
                let dev = store
                    .developer(name)?
                    .ok_or_else(|| not_found(format!("developer {name}")))?;
                let keys = store.keys(name)?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "developer": dev, "keys": keys }),
                ))
            }
            (&Method::PATCH, ["v1", "developers", name]) => {
                let p: PatchDeveloper = parse_body(&body)?;
                let dev = store.set_developer_expiry(name, p.expires_at)?;
                self.admin_audit(
                    "developer.update",
                    Some(name),
                    None,
                    &format!("expires_at {:?}", p.expires_at),
                );
                self.hub.state_changed();
                Ok(json(StatusCode::OK, &dev))
            }
            (&Method::DELETE, ["v1", "developers", name]) => {
                store.delete_developer(name)?;
                self.admin_audit("developer.delete", Some(name), None, "");
                self.hub.state_changed();
                Ok(no_content())
            }
            (&Method::GET, ["v1", "developers", name, "keys"]) => {
                store
                    .developer(name)?
                    .ok_or_else(|| not_found(format!("developer {name}")))?;
                Ok(json(StatusCode::OK, &store.keys(name)?))
            }
            (&Method::POST, ["v1", "developers", name, "keys"]) => {
                let k: NewKey = parse_body(&body)?;
                let key = keys::parse_public(&k.public_key).map_err(|e| bad(e.to_string()))?;
                let fp = keys::fingerprint(&key);
                let row = store.add_key(name, &keys::public_line(&key), &fp)?;
                self.admin_audit("key.add", Some(name), None, &fp);
                Ok(json(StatusCode::CREATED, &row))
            }
            (&Method::DELETE, ["v1", "developers", name, "keys", id]) => {
                let id: i64 = id
                    .parse()
                    .map_err(|_| bad(format!("invalid key id {id:?}")))?;
                let fingerprint = store
                    .keys(name)?
                    .into_iter()
                    .find(|k| k.id == id)
                    .map(|k| k.fingerprint)
                    .unwrap_or_default();
                store.delete_key(name, id)?;
                self.admin_audit(
                    "key.delete",
                    Some(name),
                    None,
                    &format!("key {id} {fingerprint}"),
                );
                // Sessions authenticated with this key end now.
                self.hub.state_changed();
                Ok(no_content())
            }
            (&Method::GET, ["v1", "gateways"]) => {
                let list: Vec<_> = store
                    .gateways()?
                    .into_iter()
                    .map(|g| {
                        let connected = self.hub.gateway_connected(&g.name);
                        serde_json::json!({ "gateway": g, "connected": connected })
                    })
                    .collect();
                Ok(json(StatusCode::OK, &list))
            }
            (&Method::POST, ["v1", "gateways"]) => {
                let g: NewGateway = parse_body(&body)?;
                if !valid_name(&g.name) {
                    return Err(bad(format!(
                        "invalid gateway name {:?}: use [a-z0-9][a-z0-9._-]{{0,62}}",
                        g.name
                    )));
                }
                let key = keys::parse_public(&g.public_key).map_err(|e| bad(e.to_string()))?;
                let fp = keys::fingerprint(&key);
                let row = store.add_gateway(&g.name, &keys::public_line(&key), &fp)?;
                self.admin_audit("gateway.add", None, Some(&g.name), &fp);
                Ok(json(StatusCode::CREATED, &row))
            }
            (&Method::GET, ["v1", "gateways", name]) => {
                let g = store
                    .gateway(name)?
                    .ok_or_else(|| not_found(format!("gateway {name}")))?;
                let connected = self.hub.gateway_connected(name);
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "gateway": g, "connected": connected }),
                ))
            }
            (&Method::GET, ["v1", "gateways", name, "known_hosts"]) => {
                let g = store
                    .gateway(name)?
                    .ok_or_else(|| not_found(format!("gateway {name}")))?;
                Ok(text(
                    StatusCode::OK,
                    "text/plain",
                    format!("{} {}\n", g.name, g.public_key),
                ))
            }
            (&Method::DELETE, ["v1", "gateways", name]) => {
                store.delete_gateway(name)?;
                self.admin_audit("gateway.delete", None, Some(name), "");
                self.hub.state_changed();
                Ok(no_content())
            }
            (&Method::GET, ["v1", "grants"]) => Ok(json(
                StatusCode::OK,
                &store.grants(query_param(q, "developer"), query_param(q, "gateway"))?,
            )),
            (&Method::POST, ["v1", "grants"]) => {
                let g: NewGrant = parse_body(&body)?;
                for (field, v) in [("namespace", &g.namespace), ("pod", &g.pod)] {
                    if let Some(v) = v
                        && !valid_k8s_name(v)
                    {
                        return Err(bad(format!("invalid {field} {v:?}")));
                    }
                }
                if g.pod.is_some() && g.namespace.is_none() {
                    return Err(bad("pod requires namespace"));
                }
                let row = store.add_grant(
                    &g.developer,
                    &g.gateway,
                    g.namespace.as_deref(),
                    g.pod.as_deref(),
                    g.expires_at,
                )?;
                self.admin_audit(
                    "grant.add",
                    Some(&g.developer),
                    Some(&g.gateway),
                    &format!(
                        "grant {} namespace {:?} pod {:?} expires_at {:?}",
                        row.id, g.namespace, g.pod, g.expires_at
                    ),
                );
                Ok(json(StatusCode::CREATED, &row))
            }
            (&Method::GET, ["v1", "grants", id]) => {
                let g = grant_by_id(store, id)?;
                Ok(json(StatusCode::OK, &g))
            }
            (&Method::DELETE, ["v1", "grants", id]) => {
                let g = grant_by_id(store, id)?;
                store.delete_grant(g.id)?;
                self.admin_audit(
                    "grant.revoke",
                    Some(&g.developer),
                    Some(&g.gateway),
                    &format!("grant {}", g.id),
                );
                self.hub.state_changed();
                Ok(no_content())
            }
            (&Method::GET, ["v1", "sessions"]) => {
                let live = query_param(q, "live") == Some("true");
                Ok(json(StatusCode::OK, &store.sessions(live)?))
            }
            (&Method::GET, ["v1", "sessions", id]) => {
                let id: i64 = id
                    .parse()
                    .map_err(|_| bad(format!("invalid session id {id:?}")))?;
                let s = store
                    .session(id)?
                    .ok_or_else(|| not_found(format!("session {id}")))?;
                Ok(json(StatusCode::OK, &s))
            }
            (&Method::GET, ["v1", "sessions", id, "recording"]) => {
                let id: i64 = id
                    .parse()
                    .map_err(|_| bad(format!("invalid session id {id:?}")))?;
                let s = store
                    .session(id)?
                    .ok_or_else(|| not_found(format!("session {id}")))?;
                let file = s
                    .recording
                    .ok_or_else(|| not_found(format!("recording of session {id}")))?;
                let path = self.hub.recordings_dir().join(&file);
                let data = tokio::fs::read(&path).await.map_err(|e| {
                    ApiError(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("reading {}: {e}", path.display()),
                    )
                })?;
                Ok(text(StatusCode::OK, "application/x-asciicast", data))
            }
            (&Method::GET, ["v1", "audit"]) => {
                let after = query_param(q, "after")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let limit = query_param(q, "limit")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1000i64)
                    .clamp(1, 10_000);
                Ok(json(StatusCode::OK, &store.audit_log(after, limit)?))
            }
            (_, ["v1", ..]) | (_, ["openapi.yaml"]) | (_, ["healthz"]) => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no route {method} {path}"),
            )),
            _ => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no route {method} {path}"),
            )),
        }
    }

    fn admin_audit(
        &self,
        event: &str,
        developer: Option<&str>,
        gateway: Option<&str>,
        detail: &str,
    ) {
        if let Err(e) =
            self.hub
                .store
                .audit(&format!("admin.{event}"), developer, gateway, None, detail)
        {
            tracing::error!(error = %e, "audit write failed");
        }
    }
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The TLS acceptor new API connections get (none: plain HTTP); SIGHUP may
/// replace it with one for a renewed certificate.
pub type SharedTls = Arc<std::sync::Mutex<Option<tokio_rustls::TlsAcceptor>>>;

/// Serves the API on `listener`, with TLS when `tls` holds an acceptor.
pub async fn serve(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    tls: SharedTls,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        let tls = locked(&tls).clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| api.clone().handle(req));
            let builder = hyper::server::conn::http1::Builder::new();
            let r = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => {
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "API connection error");
            }
        });
    }
}

/// Builds a TLS acceptor from PEM files.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("reading certificate {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS configuration: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("gateway-17"));
        assert!(valid_name("alice"));
        assert!(!valid_name("gateway:1"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
        assert!(!valid_name("Alice"));
    }

    #[test]
    fn token_hash() {
        let h = token_hash_hex("example-token");
        assert_eq!(
            h,
            "4d1566a1d7df42a8517456d60ea06ed284e535cfe4c956aa6ee172dbcdf945f7"
        );
        assert!(hex_decode(&h).is_some());
        assert!(hex_decode("zz").is_none());
    }
}
