//! The REST API of the real smarter-comms binary: CRUD, auth and input
//! validation (bad input is refused with a clear 4xx and changes nothing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json as j;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";

#[test]
fn rejects_bad_requests_and_changes_nothing() {
    let w = World::new();
    let p = w.api_port;

    // The OpenAPI document needs no auth.
    let (st, doc) = http(p, "GET", "/openapi.yaml", None, None);
    assert_eq!(st, 200);
    assert!(doc.starts_with("openapi: 3"));

    // Missing or wrong token.
    let (st, body) = http(p, "GET", "/v1/developers", None, None);
    assert_eq!(st, 401);
    assert!(body.contains("bearer token"), "{body}");
    let (st, _) = http(p, "GET", "/v1/developers", Some("wrong"), None);
    assert_eq!(st, 401);
    let (st, _) = http(p, "POST", "/v1/developers", None, Some(r#"{"name":"x"}"#));
    assert_eq!(st, 401);

    let bad = [
        ("/v1/developers", "{not json", "invalid JSON"),
        (
            "/v1/developers",
            r#"{"name":"x","admin":true}"#,
            "unknown field",
        ),
        (
            "/v1/developers",
            r#"{"name":"Bad Name"}"#,
            "invalid developer name",
        ),
        (
            "/v1/developers",
            r#"{"name":"x","expires_at":"soon"}"#,
            "invalid JSON",
        ),
        (
            "/v1/gateways",
            r#"{"name":"gw","public_key":"ssh-ed25519 notakey"}"#,
            "invalid SSH key",
        ),
        ("/v1/gateways", r#"{"name":"gw"}"#, "missing field"),
        (
            "/v1/grants",
            r#"{"developer":"x","gateway":"gw","pod":"p"}"#,
            "pod requires namespace",
        ),
    ];
    for (path, body, want) in bad {
        let (st, resp) = http(p, "POST", path, Some(TOKEN), Some(body));
        assert_eq!(st, 400, "{path} {body} -> {resp}");
        assert!(resp.contains(want), "{path} {body} -> {resp}");
    }
    let (st, _) = http_ct(
        p,
        "POST",
        "/v1/developers",
        Some(TOKEN),
        Some(r#"{"name":"x"}"#),
        "text/plain",
    );
    assert_eq!(st, 415);

    // Nothing was created.
    for path in ["/v1/developers", "/v1/gateways", "/v1/grants"] {
        let (st, v) = json(p, "GET", path, None);
        assert_eq!(st, 200);
        assert_eq!(v, j!([]), "{path}");
    }
}

#[test]
fn crud_round_trip() {
    let w = World::new();
    let p = w.api_port;

    let (st, dev) = json(
        p,
        "POST",
        "/v1/developers",
        Some(j!({"name": "alice", "expires_at": 4102444800i64})),
    );
    assert_eq!(st, 201);
    assert_eq!(dev["expires_at"], 4102444800i64);
    let (st, _) = json(p, "POST", "/v1/developers", Some(j!({"name": "alice"})));
    assert_eq!(st, 409);
    let (st, key) = json(
        p,
        "POST",
        "/v1/developers/alice/keys",
        Some(j!({"public_key": KEY})),
    );
    assert_eq!(st, 201);
    assert!(key["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    let (st, _) = json(
        p,
        "POST",
        "/v1/developers/nobody/keys",
        Some(j!({"public_key": KEY})),
    );
    assert_eq!(st, 404);

    let (st, v) = json(
        p,
        "PATCH",
        "/v1/developers/alice",
        Some(j!({"expires_at": null})),
    );
    assert_eq!(st, 200);
    assert_eq!(v["expires_at"], serde_json::Value::Null);
    let (st, v) = json(p, "GET", "/v1/developers/alice", None);
    assert_eq!(st, 200);
    assert_eq!(v["keys"].as_array().unwrap().len(), 1);

    let gw_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAeAeOo9IXF7D9RMpPpHDojsmowS1TM2j5pccDyLt19Y";
    let (st, _) = json(
        p,
        "POST",
        "/v1/gateways",
        Some(j!({"name": "gateway-17", "public_key": gw_key})),
    );
    assert_eq!(st, 201);
    let (st, kh) = http(
        p,
        "GET",
        "/v1/gateways/gateway-17/known_hosts",
        Some(TOKEN),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(kh, format!("gateway-17 {gw_key}\n"));
    let (st, v) = json(p, "GET", "/v1/gateways", None);
    assert_eq!(st, 200);
    assert_eq!(v[0]["connected"], false);

    let (st, g) = json(
        p,
        "POST",
        "/v1/grants",
        Some(
            j!({"developer": "alice", "gateway": "gateway-17", "namespace": "apps", "pod": "web"}),
        ),
    );
    assert_eq!(st, 201);
    let id = g["id"].as_i64().unwrap();
    let (st, v) = json(p, "GET", &format!("/v1/grants/{id}"), None);
    assert_eq!(st, 200);
    assert_eq!(v["pod"], "web");
    let (st, v) = json(p, "GET", "/v1/grants?gateway=gateway-17", None);
    assert_eq!((st, v.as_array().unwrap().len()), (200, 1));
    let (st, _) = json(
        p,
        "POST",
        "/v1/grants",
        Some(j!({"developer": "alice", "gateway": "nope"})),
    );
    assert_eq!(st, 404);

    let (st, _) = json(p, "DELETE", &format!("/v1/grants/{id}"), None);
    assert_eq!(st, 204);
    let (st, _) = json(p, "DELETE", &format!("/v1/grants/{id}"), None);
    assert_eq!(st, 404);
    let key_id = key["id"].as_i64().unwrap();
    let (st, _) = json(
        p,
        "DELETE",
        &format!("/v1/developers/alice/keys/{key_id}"),
        None,
    );
    assert_eq!(st, 204);
    let (st, _) = json(p, "DELETE", "/v1/developers/alice", None);
    assert_eq!(st, 204);
    let (st, _) = json(p, "DELETE", "/v1/gateways/gateway-17", None);
    assert_eq!(st, 204);
    let (st, _) = json(p, "GET", "/v1/developers/alice", None);
    assert_eq!(st, 404);

    // Every change is in the audit log.
    let events: Vec<String> = w
        .audit()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    for e in [
        "admin.developer.add",
        "admin.key.add",
        "admin.developer.update",
        "admin.gateway.add",
        "admin.grant.add",
        "admin.grant.revoke",
        "admin.key.delete",
        "admin.developer.delete",
        "admin.gateway.delete",
    ] {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }
}

#[test]
fn api_speaks_https_when_given_a_certificate() {
    // To make and check a certificate.
    if !smarter_test_support::require_peer("openssl", "openssl")
        || !smarter_test_support::require_peer("curl", "curl")
    {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let (c, k) = (cert.clone(), key.clone());
    let w = World::with_comms_config(move |_| {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            c.display(),
            k.display()
        )
    });
    let curl = |auth: bool| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&cert)
            .arg(format!("https://127.0.0.1:{}/v1/developers", w.api_port));
        if auth {
            cmd.args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
        }
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    assert_eq!(curl(true), "200");
    assert_eq!(curl(false), "401");
    // Plain HTTP is not served on the TLS port.
    let plain = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/healthz", w.api_port))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
}
