//! SIGHUP on the real binary: a valid new config takes effect (here a new
//! TTL and a new port), a broken one is rejected with the reason in the log
//! while the server keeps answering with the old one, SIGTERM still stops it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use hickory_proto::rr::RecordType;

const BIN: &str = env!("CARGO_BIN_EXE_smarter-dns");

/// Kills the server if the test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

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

fn signal(child: &Child, sig: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
    let first = free_port()?;
    write_config(dir.path(), first, 30)?;
    write_record(
        &dir.path().join("records"),
        &record("c1", "camera", "iot", &["172.39.0.5"]),
    )?;
    // The log goes to a file the test reads while the server runs: a reload's outcome is
    // known from its log line, not from how long the test waited.
    let log_path = dir.path().join("smarter-dns.log");
    let mut server = Server(
        Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("dns.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?,
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let limit = Duration::from_secs(5);
    assert!(
        wait_until(limit, || async { ttl(at(first)).await == Some(30) })
            .await
            .is_some(),
        "the server never answered with the first config's TTL"
    );

    // A good config: new TTL, new port.
    let second = free_port()?;
    write_config(dir.path(), second, 77)?;
    signal(&server.0, libc::SIGHUP)?;
    assert!(
        wait_until(limit, || async { ttl(at(second)).await == Some(77) })
            .await
            .is_some(),
        "SIGHUP did not apply the new TTL and port"
    );
    assert_eq!(ttl(at(first)).await, None, "the old port still answers");

    // A broken config: rejected, the server keeps answering as before.
    std::fs::write(dir.path().join("dns.toml"), "ttl = \"soon\"\n")?;
    signal(&server.0, libc::SIGHUP)?;
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
    let in_use = std::io::Error::from_raw_os_error(libc::EADDRINUSE).to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    write_config(dir.path(), taken.local_addr()?.port(), 88)?;
    signal(&server.0, libc::SIGHUP)?;
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

    signal(&server.0, libc::SIGTERM)?;
    let status = server.0.wait()?;
    let log = log();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        log.contains("new config rejected") && log.contains("ttl"),
        "the rejection and its reason are not in the log:\n{log}"
    );
    assert_eq!(
        log.matches(&in_use).count(),
        1,
        "the taken port's OS reason is not in the log exactly once:\n{log}"
    );
    Ok(())
}
