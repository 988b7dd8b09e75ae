//! End to end: real smarter-comms and smarter-debug-agent on loopback, the
//! developer is Debian's OpenSSH client (`ssh -J`, `scp`) in BatchMode with a
//! temporary known_hosts and StrictHostKeyChecking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn command_shell_scp_and_recording_through_the_tunnel() {
    let Some(w) = World::standard() else {
        return;
    };
    let alice = w.path("alice");

    // One-off command: output, stderr and exit status come back.
    let t = Instant::now();
    let o = w.ssh(
        &alice,
        &[
            "gateway-17",
            "--",
            "echo out-$((40+2)); echo err >&2; exit 7",
        ],
    );
    let elapsed = t.elapsed();
    assert_eq!(o.status.code(), Some(7), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "out-42\n");
    assert!(stderr(&o).contains("err"));
    eprintln!("ssh start to command output through the tunnel: {elapsed:?}");

    // The command ran on the agent's side: it sees the agent's environment.
    let o = w.ssh(&alice, &["gateway-17", "echo $SMARTER_DEBUG_DEVELOPER"]);
    assert_eq!(stdout(&o), "alice\n", "{}", stderr(&o));

    // Interactive shell on a PTY, fed from stdin.
    let mut c = w.ssh_cmd(&alice, &["-tt", "gateway-17"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"tty; echo shell-$((6*7))\nexit 5\n")
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(5), "stderr: {}", stderr(&o));
    assert!(stdout(&o).contains("/dev/pts/"), "{}", stdout(&o));
    assert!(stdout(&o).contains("shell-42"));

    // File copy both ways (scp uses the sftp subsystem).
    let src = w.path("payload");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let remote = w.path("copied");
    let o = w.scp(
        &alice,
        &[
            src.to_str().unwrap(),
            &format!("gateway-17:{}", remote.display()),
        ],
    );
    assert!(o.status.success(), "scp up: {}", stderr(&o));
    assert_eq!(std::fs::read(&remote).unwrap(), data);
    let back = w.path("back");
    let o = w.scp(
        &alice,
        &[
            &format!("gateway-17:{}", remote.display()),
            back.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "scp down: {}", stderr(&o));
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // The shell session was recorded (asciinema v2) and shipped to comms.
    let cast = w.wait_recording();
    let mut lines = cast.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let text: String = events
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert!(text.contains("shell-42"), "{text}");

    // Audit: starts and ends.
    w.wait_audit("session.start", "target host");
    w.wait_audit("session.end", "closed");
    w.wait_audit("gateway.connected", "");
}

/// Bulk copies both ways, big enough for many channel windows and every
/// packet size on the way (the developer's 32 KiB packets, the tunnel's
/// 64 KiB ones, the agent's 1 MiB pipes to sftp-server), and not a multiple
/// of any of them, so comms' re-chunking of downloads must send the tail
/// without waiting for more. Both arrive byte for byte, and comms audits the
/// bytes it passed each way.
#[test]
fn large_scp_both_ways_is_byte_identical() {
    let Some(w) = World::standard() else {
        return;
    };
    let alice = w.path("alice");
    let size = 16 * 1024 * 1024 + 12_345;
    // xorshift: no repeating pattern a misplaced chunk could still match.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let src = w.path("big");
    std::fs::write(&src, &data).unwrap();

    let remote = w.path("big-on-gateway");
    let o = w.scp(
        &alice,
        &[
            src.to_str().unwrap(),
            &format!("gateway-17:{}", remote.display()),
        ],
    );
    assert!(o.status.success(), "scp up: {}", stderr(&o));
    assert!(std::fs::read(&remote).unwrap() == data, "upload differs");
    let up = w.wait_audit("session.end", "closed");
    let (sent_up, _) = audited_bytes(&up);
    assert!(sent_up >= size as u64, "{up}");

    let back = w.path("big-back");
    let o = w.scp(
        &alice,
        &[
            &format!("gateway-17:{}", remote.display()),
            back.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "scp down: {}", stderr(&o));
    assert!(std::fs::read(&back).unwrap() == data, "download differs");
    wait_for(
        "the download's session.end",
        Duration::from_secs(10),
        || {
            w.audit().iter().any(|e| {
                e["event"] == "session.end" && e["session"] != up["session"] && {
                    let (_, down) = audited_bytes(e);
                    down >= size as u64
                }
            })
        },
    );
}

/// The byte counts in a `session.end` detail ("... (N bytes up, M down)").
fn audited_bytes(entry: &serde_json::Value) -> (u64, u64) {
    let detail = entry["detail"].as_str().unwrap_or_default();
    let counts = detail.rsplit_once('(').map_or("", |(_, c)| c);
    let words: Vec<&str> = counts
        .split([' ', ',', ')'])
        .filter(|w| !w.is_empty())
        .collect();
    match words[..] {
        [up, "bytes", "up", down, "down"] => (up.parse().unwrap(), down.parse().unwrap()),
        _ => panic!("no byte counts in {detail:?}"),
    }
}

#[test]
fn denials_are_refused_and_audited() {
    let Some(mut w) = World::standard() else {
        return;
    };
    let past = now() - 10;

    // No grant.
    let bob = w.add_developer("bob", None);
    let o = w.ssh(&bob, &["gateway-17", "true"]);
    assert_eq!(o.status.code(), Some(255));
    w.wait_audit("session.denied", "no grant for this gateway");

    // Expired developer (with a grant).
    let carol = w.add_developer("carol", Some(past));
    w.grant("carol", "gateway-17", None, None, None);
    let o = w.ssh(&carol, &["gateway-17", "true"]);
    assert_eq!(o.status.code(), Some(255));
    w.wait_audit("auth.denied", "developer account expired: user carol");

    // Expired grant.
    let dave = w.add_developer("dave", None);
    w.grant("dave", "gateway-17", None, None, Some(past));
    let o = w.ssh(&dave, &["gateway-17", "true"]);
    assert_eq!(o.status.code(), Some(255));
    w.wait_audit("session.denied", "grant expired");

    // Wrong key: a key comms does not know for alice.
    let stranger = keygen(w.dir.path(), "stranger");
    let o = w
        .ssh_cmd_as(&stranger, "alice", &["gateway-17", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(255));
    w.wait_audit(
        "auth.denied",
        "key not registered for developer: user alice",
    );

    // Unknown gateway.
    let alice = w.path("alice");
    let o = w.ssh(&alice, &["gateway-99", "true"]);
    assert_eq!(o.status.code(), Some(255));
    w.wait_audit("session.denied", "unknown gateway");

    // Scope: a grant for one pod does not open the host.
    let erin = w.add_developer("erin", None);
    w.grant("erin", "gateway-17", Some("apps"), Some("web"), None);
    let o = w.ssh(&erin, &["gateway-17", "true"]);
    assert_eq!(o.status.code(), Some(255));
    w.wait_audit("session.denied", "at agent: no grant covers target host");

    // An agent with a key comms did not enrol is refused.
    w.start_agent("gateway-17", "impostor", "");
    w.wait_audit("gateway.denied", "wrong key");
    w.start_agent("gateway-42", "unknown", "");
    w.wait_audit("gateway.denied", "unknown gateway");

    // After all that, alice still gets in.
    let o = w.ssh(&alice, &["gateway-17", "echo ok"]);
    assert_eq!(stdout(&o), "ok\n", "{}", stderr(&o));
}

#[test]
fn revoking_a_grant_ends_a_live_session_within_a_second() {
    let Some(w) = World::standard() else {
        return;
    };
    let (_, grants) = json(w.api_port, "GET", "/v1/grants?developer=alice", None);
    let grant = grants[0]["id"].as_i64().unwrap();
    let alice = w.path("alice");
    let mut child = w.hold_session(&alice, "gateway-17");
    let t = Instant::now();
    let (st, _) = json(w.api_port, "DELETE", &format!("/v1/grants/{grant}"), None);
    assert_eq!(st, 204);
    ends_within_a_second(&mut child, t, "after revocation");
    w.wait_audit("session.end", "ended by comms: no grant for this gateway");
    assert_eq!(w.live_sessions().len(), 0);

    // Expiring the developer's account ends their live session the same way.
    w.grant("alice", "gateway-17", None, None, None);
    let mut child = w.hold_session(&alice, "gateway-17");
    let t = Instant::now();
    let (st, _) = json(
        w.api_port,
        "PATCH",
        "/v1/developers/alice",
        Some(serde_json::json!({"expires_at": now() - 1})),
    );
    assert_eq!(st, 200);
    wait_exit(&mut child, t, "session still alive after expiry");
    w.wait_audit("session.end", "ended by comms: developer account expired");
}

/// Asserts that the developer's side of the session `child` ends, failing,
/// within a second of `since` (`after` says what happened then).
fn ends_within_a_second(child: &mut Proc, since: Instant, after: &str) {
    let status = wait_exit(child, since, &format!("session still alive 5 s {after}"));
    let took = since.elapsed();
    eprintln!("session ended {took:?} {after}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(!status.success());
}

/// Deleting a developer's key ends every session authenticated with it
/// within a second, and the audit log names the key and the session.
#[test]
fn deleting_a_key_ends_its_live_sessions_within_a_second() {
    let Some(w) = World::standard() else {
        return;
    };
    let (_, keys) = json(w.api_port, "GET", "/v1/developers/alice/keys", None);
    let key_id = keys[0]["id"].as_i64().unwrap();
    let fingerprint = keys[0]["fingerprint"].as_str().unwrap().to_string();
    let alice = w.path("alice");
    let mut child = w.hold_session(&alice, "gateway-17");
    let session = w.live_sessions()[0]["id"].as_i64().unwrap();
    let t = Instant::now();
    let (st, _) = json(
        w.api_port,
        "DELETE",
        &format!("/v1/developers/alice/keys/{key_id}"),
        None,
    );
    assert_eq!(st, 204);
    ends_within_a_second(&mut child, t, "after its key was deleted");
    let entry = w.wait_audit("session.end", &format!("key {fingerprint} deleted"));
    assert_eq!(entry["session"].as_i64(), Some(session), "{entry}");
    assert_eq!(entry["developer"], "alice", "{entry}");
    w.wait_audit("admin.key.delete", &fingerprint);
    assert_eq!(w.live_sessions().len(), 0);
    // And the key opens nothing any more.
    let o = w.ssh(&alice, &["gateway-17", "true"]);
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
}

/// A developer comms refuses is told why in a line ssh prints, without
/// learning whether a gateway they hold no grant for exists.
#[test]
fn refusals_tell_the_developer_why() {
    let Some(mut w) = World::standard() else {
        return;
    };
    w.ssh_log_level = "INFO";
    let past = now() - 10;
    let refused = |o: &std::process::Output| {
        assert_eq!(o.status.code(), Some(255), "{}", stderr(o));
        let e = stderr(o);
        eprintln!("ssh said: {e}");
        e
    };

    let bob = w.add_developer("bob", None);
    let no_grant = refused(&w.ssh(&bob, &["gateway-17", "true"]));
    assert!(
        no_grant.contains(
            "open failed: administratively prohibited: smarter-comms: you have no grant for \
             gateway \"gateway-17\"; ask a comms administrator for one"
        ),
        "{no_grant}"
    );
    // An unknown gateway reads the same, name for name.
    let unknown = refused(&w.ssh(&bob, &["gateway-99", "true"]));
    assert!(!unknown.contains("gateway-17"), "{unknown}");
    assert_eq!(unknown.replace("gateway-99", "gateway-17"), no_grant);
    // Even for a developer who holds a grant for another gateway.
    let alice = w.path("alice");
    let other = refused(&w.ssh(&alice, &["gateway-99", "true"]));
    assert!(
        other.contains("you have no grant for gateway \"gateway-99\""),
        "{other}"
    );

    let dave = w.add_developer("dave", None);
    w.grant("dave", "gateway-17", None, None, Some(past));
    let expired = refused(&w.ssh(&dave, &["gateway-17", "true"]));
    assert!(
        expired.contains(
            "smarter-comms: your grant for gateway \"gateway-17\" has expired; ask a comms \
             administrator to renew it"
        ),
        "{expired}"
    );

    // The agent's own refusal (a grant scoped to a pod, used for the host)
    // reaches the developer too, through keyboard-interactive.
    // (BatchMode turns keyboard-interactive off; a developer at a terminal
    // has it on, and no prompt is shown, so no terminal is needed here.)
    let erin = w.add_developer("erin", None);
    w.grant("erin", "gateway-17", Some("apps"), Some("web"), None);
    w.ssh_options = "  BatchMode no\n";
    let scoped = refused(&w.ssh(&erin, &["gateway-17", "true"]));
    w.ssh_options = "";
    assert!(
        scoped.contains(
            "smarter-debug agent refused the session: no grant covers target host; log in as \
             NAMESPACE/POD"
        ),
        "{scoped}"
    );

    // Only a developer with a grant learns that the gateway is offline.
    w.agents.clear();
    let port = w.api_port;
    wait_for("gateway disconnected", Duration::from_secs(20), || {
        let (_, v) = json(port, "GET", "/v1/gateways/gateway-17", None);
        v["connected"] == false
    });
    let offline = refused(&w.ssh(&alice, &["gateway-17", "true"]));
    assert!(
        offline.contains(
            "open failed: connect failed: smarter-comms: gateway \"gateway-17\" is not \
             connected (its agent is offline); try again later"
        ),
        "{offline}"
    );
    let bob_offline = refused(&w.ssh(&bob, &["gateway-17", "true"]));
    assert_eq!(bob_offline, no_grant);
}

#[test]
fn grant_expiry_ends_a_live_session() {
    if !have_openssh() {
        return;
    }
    let mut w = World::new();
    let key = w.start_agent("gateway-17", "agent", "");
    w.enrol("gateway-17", &key);
    let alice = w.add_developer("alice", None);
    w.wait_connected("gateway-17");
    w.grant("alice", "gateway-17", None, None, Some(now() + 3));
    let t = Instant::now();
    let o = w.ssh(&alice, &["gateway-17", "echo started; sleep 20"]);
    assert_eq!(stdout(&o), "started\n", "{}", stderr(&o));
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    w.wait_audit("session.end", "grant expired");
}

#[test]
fn agent_reconnects_after_comms_restart_and_state_survives() {
    let Some(mut w) = World::standard() else {
        return;
    };
    let alice = w.path("alice");
    assert_eq!(stdout(&w.ssh(&alice, &["gateway-17", "echo one"])), "one\n");
    w.stop_comms();
    w.start_comms();
    w.wait_connected("gateway-17");
    let o = w.ssh(&alice, &["gateway-17", "echo two"]);
    assert_eq!(stdout(&o), "two\n", "{}", stderr(&o));
    let (_, devs) = json(w.api_port, "GET", "/v1/developers", None);
    assert_eq!(devs[0]["name"], "alice");
    // The audit log from before the restart is still there.
    w.wait_audit("session.start", "target host");
    let events: Vec<String> = w
        .audit()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert!(
        events.iter().filter(|e| *e == "gateway.connected").count() >= 2,
        "{events:?}"
    );

    // Deleting the gateway disconnects its agent, which is then refused.
    let (st, _) = json(w.api_port, "DELETE", "/v1/gateways/gateway-17", None);
    assert_eq!(st, 204);
    w.wait_audit("gateway.disconnected", "gateway removed");
    w.wait_audit("gateway.denied", "unknown gateway");
}

#[test]
fn recording_is_shipped_when_the_developer_drops_the_connection() {
    let Some(w) = World::standard() else {
        return;
    };
    let alice = w.path("alice");
    let mut c = w.ssh_cmd(&alice, &["-tt", "gateway-17"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = Proc(c.spawn().unwrap());
    {
        use std::io::{BufRead, Write};
        let mut stdin = child.0.stdin.take().unwrap();
        stdin.write_all(b"echo marker-$((40+2))\n").unwrap();
        let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("marker-42") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "ssh ended early");
        }
        // Keep stdin open: the shell is still running when we cut the connection.
        child.0.kill().unwrap();
        drop(stdin);
    }
    let cast = w.wait_recording();
    assert!(cast.contains("marker-42"), "{cast}");
}

#[test]
fn per_developer_session_cap() {
    let Some(w) = World::standard_with_comms_config(|_| "max_sessions_per_developer = 1\n".into())
    else {
        return;
    };
    let alice = w.path("alice");
    let first = w.hold_session(&alice, "gateway-17");
    let o = w.ssh(&alice, &["gateway-17", "true"]);
    assert_eq!(o.status.code(), Some(255));
    w.wait_audit("session.denied", "session limit reached (1 live sessions)");
    drop(first);
    // Once the first is gone, a new one is allowed.
    let start = Instant::now();
    loop {
        let o = w.ssh(&alice, &["gateway-17", "echo again"]);
        if stdout(&o) == "again\n" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{}", stderr(&o));
    }
}

#[test]
fn idle_sessions_are_ended() {
    let Some(w) = World::standard_with_comms_config(|_| "idle_timeout_secs = 1\n".into()) else {
        return;
    };
    let alice = w.path("alice");
    let t = Instant::now();
    let o = w.ssh(&alice, &["gateway-17", "echo started; sleep 19.25; true"]);
    assert_eq!(stdout(&o), "started\n", "{}", stderr(&o));
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    w.wait_audit("session.end", "idle for 1s");
    // The session's processes, grandchildren included, are gone.
    let running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0019.25\x00")
        })
    };
    smarter_test_support::wait_until(
        "the session's sleep 19.25 to go",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || !running(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

fn hangup(child: &std::process::Child) {
    let st = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// SIGHUP: the agent reconnects with a changed tunnel setting (here a new
/// gateway name), applies another change (a new shell) without ending the
/// session open across it, and keeps the old config when the file is broken; comms applies
/// what can change live (session cap, admin token), names what needs a
/// restart (API address) and keeps everything on a broken file.
#[test]
fn sighup_reloads_the_agent_and_comms() {
    let Some(mut w) = World::standard() else {
        return;
    };
    // The agent's key moves to a new gateway name (keys are unique per gateway).
    let key = std::fs::read_to_string(w.path("agent/agent_key.pub")).unwrap();
    let (st, _) = json(w.api_port, "DELETE", "/v1/gateways/gateway-17", None);
    assert_eq!(st, 204);
    w.enrol("gateway-18", key.trim());
    w.grant("alice", "gateway-18", None, None, None);
    let alice = w.path("alice");

    let cfg = w.path("agent.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"gateway-17\"", "\"gateway-18\"")).unwrap();
    hangup(&w.agents[0].0);
    w.wait_connected("gateway-18");
    let o = w.ssh(&alice, &["gateway-18", "echo renamed"]);
    assert_eq!(stdout(&o), "renamed\n", "{}", stderr(&o));

    // A new shell applies to the next session without reconnecting: a
    // session open across the reload goes on.
    let mut open = w.hold_session(&alice, "gateway-18");
    let shell = w.path("reloaded-shell");
    std::fs::write(
        &shell,
        "#!/bin/sh\nexport SMARTER_TEST_SHELL=reloaded\nexec /bin/sh \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&shell, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let renamed = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{renamed}shell = \"{}\"\n", shell.display())).unwrap();
    hangup(&w.agents[0].0);
    let log = w.path("agent.log");
    wait_for(
        "agent applies the new shell",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("config applied without reconnecting"))
        },
    );
    let o = w.ssh(&alice, &["gateway-18", "echo $SMARTER_TEST_SHELL"]);
    assert_eq!(stdout(&o), "reloaded\n", "{}", stderr(&o));
    assert!(
        open.0.try_wait().unwrap().is_none(),
        "the session open across the reload ended"
    );
    drop(open);
    let port = w.api_port;
    wait_for("the held session ends", Duration::from_secs(10), || {
        let (_, live) = json(port, "GET", "/v1/sessions?live=true", None);
        live.as_array().is_some_and(|a| a.is_empty())
    });

    std::fs::write(&cfg, "gateway_name = 18\n").unwrap();
    hangup(&w.agents[0].0);
    wait_for(
        "agent rejects the bad config",
        Duration::from_secs(10),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("new config rejected")),
    );
    let o = w.ssh(&alice, &["gateway-18", "echo still"]);
    assert_eq!(stdout(&o), "still\n", "{}", stderr(&o));

    // Comms: the session cap and the admin token change live; a new API
    // address needs a restart, so the running one stays and the log says so.
    let comms_cfg = w.path("comms.toml");
    let text = std::fs::read_to_string(&comms_cfg).unwrap();
    // Never bound (it applies on restart only), so any port will do.
    let other_api = w.api_port + 1;
    std::fs::write(
        &comms_cfg,
        text.replace(&sha256_hex(TOKEN), &sha256_hex("rotated-token"))
            .replace(
                &format!("api_listen = \"127.0.0.1:{}\"", w.api_port),
                &format!("api_listen = \"127.0.0.1:{other_api}\""),
            )
            + "max_sessions_per_developer = 1\n",
    )
    .unwrap();
    hangup(&w.comms.as_ref().unwrap().0);
    let comms_log = w.path("comms.log");
    wait_for("comms applies the config", Duration::from_secs(10), || {
        std::fs::read_to_string(&comms_log).is_ok_and(|l| l.contains("SIGHUP: config applied"))
    });
    let log = std::fs::read_to_string(&comms_log).unwrap();
    assert!(
        log.contains("change on restart only") && log.contains("api_listen"),
        "{log}"
    );
    let (st, _) = http(w.api_port, "GET", "/v1/developers", Some(TOKEN), None);
    assert_eq!(st, 401, "the old admin token still works");
    let (st, _) = http(
        w.api_port,
        "GET",
        "/v1/developers",
        Some("rotated-token"),
        None,
    );
    assert_eq!(st, 200, "the rotated admin token is refused");
    // One session is now the most a developer may have.
    let first = w.hold_session(&alice, "gateway-18");
    w.ssh_log_level = "INFO";
    let o = w.ssh(&alice, &["gateway-18", "echo second"]);
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("you already have 1 live sessions"),
        "{}",
        stderr(&o)
    );
    w.ssh_log_level = "ERROR";
    drop(first);

    // A broken file is rejected with its reason; comms goes on as before.
    std::fs::write(&comms_cfg, "ssh_listen = 1\n").unwrap();
    hangup(&w.comms.as_ref().unwrap().0);
    wait_for(
        "comms rejects a bad config",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&comms_log)
                .is_ok_and(|l| l.contains("new config rejected") && l.contains("ssh_listen"))
        },
    );
    let (st, _) = http(
        w.api_port,
        "GET",
        "/v1/developers",
        Some("rotated-token"),
        None,
    );
    assert_eq!(st, 200);
    // The session cap of the first reload still holds: wait for the
    // dropped session to be gone before the next one.
    wait_for("no live session", Duration::from_secs(10), || {
        let (_, v) = http(
            w.api_port,
            "GET",
            "/v1/sessions?live=true",
            Some("rotated-token"),
            None,
        );
        v.trim() == "[]"
    });
    let o = w.ssh(&alice, &["gateway-18", "echo served"]);
    assert_eq!(stdout(&o), "served\n", "{}", stderr(&o));
}

/// The agent's `/readyz` follows its tunnel to comms; `/metrics` counts the
/// tunnel's ups and failures and has the process series.
#[test]
fn agent_probes_follow_the_tunnel() {
    let mut w = World::new();
    let (key, port) = w.start_agent_with_metrics("gateway-17", "agent");
    let get = |path: &str| http(port, "GET", path, None, None);
    // Not enrolled yet: comms refuses it, so alive but not ready.
    wait_for("a refused attempt", Duration::from_secs(20), || {
        get("/metrics").1.lines().any(|l| {
            l.starts_with("smarter_debug_agent_tunnel_failures_total ") && !l.ends_with(" 0")
        })
    });
    assert_eq!(get("/healthz"), (200, "ok\n".to_string()));
    let (st, why) = get("/readyz");
    assert_eq!(st, 503, "{why}");
    assert!(why.starts_with("tunnel to comms down: "), "{why}");
    w.enrol("gateway-17", &key);
    w.wait_connected("gateway-17");
    wait_for("ready", Duration::from_secs(20), || get("/readyz").0 == 200);
    let (st, metrics) = get("/metrics");
    assert_eq!(st, 200);
    for line in [
        "smarter_debug_agent_tunnel_up 1",
        "smarter_debug_agent_tunnel_connects_total 1",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_start_time_seconds gauge",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    // Comms counts it on its own /metrics (API port, no auth).
    let (st, comms) = http(w.api_port, "GET", "/metrics", None, None);
    assert_eq!(st, 200);
    for line in [
        "smarter_comms_gateways_connected 1",
        "smarter_comms_sessions 0",
        "# TYPE process_resident_memory_bytes gauge",
    ] {
        assert!(comms.lines().any(|l| l == line), "no {line:?} in\n{comms}");
    }
    // Comms gone: the tunnel drops (keepalives) and readiness with it.
    w.stop_comms();
    wait_for("not ready", Duration::from_secs(30), || {
        get("/readyz").0 == 503
    });
    assert_eq!(get("/healthz").0, 200);
}

/// comms' `aes_gcm_only` and the agent's `session_aes_gcm_only` (both on by
/// default): a default OpenSSH client gets through on AES-GCM; where this
/// CPU has AES instructions, a client offering only ChaCha20-Poly1305 is
/// refused at the session (agent) and at the jump hop (comms), while an
/// agent's tunnel is still offered it.
#[test]
fn aes_gcm_only_serves_default_clients_and_refuses_chacha_only_ones() {
    let Some(mut w) = World::standard() else {
        return;
    };
    let alice = w.path("alice");
    let o = w.ssh(&alice, &["gateway-17", "echo gcm"]);
    assert_eq!(stdout(&o), "gcm\n", "{}", stderr(&o));
    if !smarter_debug::transfer::aes_in_hardware() {
        eprintln!("no AES instructions here: both ends keep ChaCha20-Poly1305");
        return;
    }
    // OpenSSH reports a failed negotiation at INFO.
    w.ssh_log_level = "INFO";
    // `-o` reaches only the session: the `-J` process reads the config file.
    let chacha = ["-o", "Ciphers=chacha20-poly1305@openssh.com"];
    let o = w.ssh(&alice, &[chacha[0], chacha[1], "gateway-17", "echo no"]);
    assert_eq!(o.status.code(), Some(255), "{}", stdout(&o));
    assert!(stderr(&o).contains("no matching cipher"), "{}", stderr(&o));
    // In the config file it applies to the jump hop too, refused by comms.
    w.ssh_options = "  Ciphers chacha20-poly1305@openssh.com\n";
    let o = w.ssh(&alice, &["gateway-17", "echo no"]);
    assert_eq!(o.status.code(), Some(255), "{}", stdout(&o));
    let port = format!("port {}", w.ssh_port);
    assert!(
        stderr(&o).contains("no matching cipher") && stderr(&o).contains(&port),
        "{}",
        stderr(&o)
    );
}

/// Completes a key exchange with comms as a russh client sending
/// identification line `id` and offering only ChaCha20-Poly1305.
fn chacha_only_kex(port: u16, id: &str) -> Result<(), russh::Error> {
    struct AnyHost;
    impl russh::client::Handler for AnyHost {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            _: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }
    let config = std::sync::Arc::new(russh::client::Config {
        client_id: russh::SshId::Standard(id.to_string().into()),
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[russh::cipher::CHACHA20_POLY1305]),
            ..Default::default()
        },
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let handle = tokio::time::timeout(
            Duration::from_secs(10),
            russh::client::connect(config, ("127.0.0.1", port), AnyHost),
        )
        .await
        .map_err(|_| russh::Error::ConnectionTimeout)??;
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "", "")
            .await;
        Ok(())
    })
}

/// With `aes_gcm_only` (the default) comms tells agents' tunnels from
/// developers' clients by their identification line: a ChaCha20-only agent
/// (a gateway without AES instructions) still completes its key exchange,
/// and so does an agent of the release before agents named themselves
/// (russh's default line); a ChaCha20-only client with any other line is
/// refused where comms has AES instructions, and accepted with the option
/// off.
#[test]
fn comms_offers_chacha_to_agents_and_aes_gcm_to_developers() {
    let Some(w) = World::standard() else {
        return;
    };
    chacha_only_kex(w.ssh_port, smarter_debug::transfer::AGENT_SSH_ID)
        .expect("an agent's tunnel negotiates ChaCha20-Poly1305");
    chacha_only_kex(w.ssh_port, "SSH-2.0-russh_0.65.1")
        .expect("an older agent's tunnel negotiates ChaCha20-Poly1305");
    let developer = chacha_only_kex(w.ssh_port, "SSH-2.0-OpenSSH_9.9");
    if smarter_debug::transfer::aes_in_hardware() {
        assert!(
            developer.is_err(),
            "a ChaCha20-only developer client was accepted"
        );
    } else {
        developer.expect("without AES instructions developers keep ChaCha20-Poly1305");
    }
    drop(w);
    let Some(w) = World::standard_with_comms_config(|_| "aes_gcm_only = false\n".into()) else {
        return;
    };
    chacha_only_kex(w.ssh_port, "SSH-2.0-OpenSSH_9.9")
        .expect("with aes_gcm_only = false developers may use ChaCha20-Poly1305");
}
