//! SIGHUP on the real binary: a valid new config takes effect (here a new
//! TTL and a new port), a broken one is rejected with the reason in the log
//! while the server keeps answering with the old one, SIGTERM still stops it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use hickory_proto::rr::RecordType;
use smarter_test_support::{StartError, start_with_retry};

const BIN: &str = env!("CARGO_BIN_EXE_smarter-dns");

fn write_config(dir: &Path, port: u16, ttl: u32) -> std::io::Result<()> {
    std::fs::write(
        dir.join("dns.toml"),
        format!(
            "records_dir = \"{records}\"\nresolv_conf = \"{resolv}\"\nlisten = [\"127.0.0.1\"]\n\
             port = {port}\nttl = {ttl}\ndummy_interface = \"\"\nruntime = \"none\"\n",
            records = dir.join("records").display(),
            resolv = dir.join("resolv.conf").display(),
        ),
    )
}

/// The TTL of the first answer for `camera.`, once the server gives one.
async fn ttl(server: SocketAddr) -> Option<u32> {
    match udp_query(server, "camera.", RecordType::A, Duration::from_millis(200)).await {
        Ok(Some(m)) => m.answers.first().map(|r| r.ttl),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_config_and_keeps_running_on_a_bad_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("resolv.conf"), "")?;
    write_record(
        &dir.path().join("records"),
        &record("c1", "camera", "iot", &["172.39.0.5"]),
    )?;
    // The log goes to a file the test reads while the server runs: a reload's outcome is
    // known from its log line, not from how long the test waited.
    let log_path = dir.path().join("smarter-dns.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let limit = Duration::from_secs(5);
    let poll = Duration::from_millis(5);
    let in_use = std::io::Error::from_raw_os_error(libc::EADDRINUSE).to_string();
    // The server binds the port itself; a port taken meanwhile is retried.
    let (mut server, first) = start_with_retry("smarter-dns", 10, |port| {
        write_config(dir.path(), port, 30)?;
        let mut child = ChildGuard(
            Command::new(BIN)
                .arg("--config")
                .arg(dir.path().join("dns.toml"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path)?)
                .spawn()?,
        );
        let serving =
            smarter_test_support::wait_until("smarter-dns to serve or exit", limit, poll, || {
                if child.0.try_wait().ok().flatten().is_some() {
                    return Some(false);
                }
                log().contains("serving").then_some(true)
            })
            .map_err(|e| StartError::Other(e.into()))?;
        if serving {
            Ok(child)
        } else {
            Err(StartError::from_output(&log()))
        }
    })?;
    assert!(
        wait_until(limit, || async { ttl(at(first)).await == Some(30) })
            .await
            .is_some(),
        "the server never answered with the first config's TTL"
    );

    // A good config: new TTL, new port (retried when the port is taken,
    // which the server rejects with the OS reason and keeps the old one).
    let rt = tokio::runtime::Handle::current();
    let (_, second) = start_with_retry("smarter-dns on a reloaded port", 10, |port| {
        let rejected_before = log().matches(&in_use).count();
        write_config(dir.path(), port, 77)?;
        server.signal(libc::SIGHUP)?;
        let applied =
            smarter_test_support::wait_until("SIGHUP's new TTL and port", limit, poll, || {
                if log().matches(&in_use).count() > rejected_before {
                    return Some(false);
                }
                let got = tokio::task::block_in_place(|| rt.block_on(ttl(at(port))));
                (got == Some(77)).then_some(true)
            })
            .map_err(|e| StartError::Other(e.into()))?;
        if applied {
            Ok(())
        } else {
            Err(StartError::AddrInUse(format!("port {port}")))
        }
    })?;
    assert_eq!(ttl(at(first)).await, None, "the old port still answers");

    // A broken config: rejected, the server keeps answering as before.
    std::fs::write(dir.path().join("dns.toml"), "ttl = \"soon\"\n")?;
    server.signal(libc::SIGHUP)?;
    assert!(
        wait_until(limit, || async { log().contains("new config rejected") })
            .await
            .is_some(),
        "the broken config's rejection was never logged:\n{}",
        log()
    );
    assert_eq!(
        ttl(at(second)).await,
        Some(77),
        "a bad config stopped the server"
    );

    // A config whose port is taken: rejected with the OS reason (once),
    // and the old sockets are bound again.
    let rejected_before = log().matches(&in_use).count();
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    write_config(dir.path(), taken.local_addr()?.port(), 88)?;
    server.signal(libc::SIGHUP)?;
    assert!(
        wait_until(limit, || async { log().contains(&in_use) })
            .await
            .is_some(),
        "the taken port's rejection was never logged:\n{}",
        log()
    );
    assert!(
        wait_until(limit, || async { ttl(at(second)).await == Some(77) })
            .await
            .is_some(),
        "a config with a taken port stopped the server"
    );
    drop(taken);

    server.signal(libc::SIGTERM)?;
    let status = server.0.wait()?;
    let log = log();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        log.contains("new config rejected") && log.contains("ttl"),
        "the rejection and its reason are not in the log:\n{log}"
    );
    assert_eq!(
        log.matches(&in_use).count(),
        rejected_before + 1,
        "the taken port's OS reason is not in the log exactly once:\n{log}"
    );
    Ok(())
}
