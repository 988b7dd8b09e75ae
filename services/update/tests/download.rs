//! The resumable downloader against a real HTTP/1.1 server on 127.0.0.1
//! (written here with std's TcpListener, so every misbehaviour a bundle
//! server or the link can show is one flag away): ranges, cut connections,
//! throttling, wrong bytes, ignored ranges, error statuses, stalls; and a
//! full data partition (a small tmpfs in a private mount namespace, as root).
#![allow(clippy::expect_used, clippy::panic)] // test harness: a failed setup step fails the test

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::bundle_server::{ETAG, Server, bundle, target};
use smarter_test_support::{ChildGuard, stderr_text, wait_started};
use smarter_update::download::{
    CaCerts, DownloadError, Downloader, Options, PART_FILE, Progress, STATE_FILE, Target,
};

fn options() -> Options {
    Options {
        connect_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(20),
        bytes_per_second: 0,
        ca_certs: None,
    }
}

fn no_progress(_: Progress) {}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

const SIZE: usize = 1 << 20;

/// A bundle of `len` bytes served on 127.0.0.1, an empty data directory and
/// the target naming the bundle: (bytes, server, dir, target).
fn served(len: usize) -> (Vec<u8>, Server, tempfile::TempDir, Target) {
    let bytes = bundle(len);
    let server = Server::start(bytes.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let t = target(&server, &bytes);
    (bytes, server, dir, t)
}

#[test]
fn fresh_download_is_verified_counted_and_kept() {
    let (bytes, server, dir, t) = served(SIZE);
    let mut d = Downloader::new(dir.path(), options());
    let mut reports = Vec::new();
    let done = d.fetch(&t, &mut |p| reports.push(p)).expect("download");
    assert_eq!(done.transferred, SIZE as u64);
    assert_eq!(done.resumed_from, 0);
    assert_eq!(done.path, d.bundle_path(&t));
    assert_eq!(std::fs::read(&done.path).expect("read bundle"), bytes);
    assert!(!dir.path().join(PART_FILE).exists());
    assert!(!dir.path().join(STATE_FILE).exists());
    assert_eq!(
        reports.last(),
        Some(&Progress {
            have: SIZE as u64,
            size: SIZE as u64
        })
    );
    assert!(reports.windows(2).all(|w| w[0].have < w[1].have));
    let counters = d.counters();
    assert_eq!(
        counters.bytes_transferred.load(Ordering::Relaxed),
        SIZE as u64
    );
    assert_eq!(counters.completed.load(Ordering::Relaxed), 1);

    // Asked again: verified from disk, nothing fetched.
    let again = d.fetch(&t, &mut no_progress).expect("second fetch");
    assert_eq!(again.transferred, 0);
    assert_eq!(server.requests().len(), 1);
    assert_eq!(server.requests()[0], (None, None));
}

#[test]
fn cut_download_resumes_after_a_restart_and_transfers_only_the_rest() {
    let (bytes, server, dir, t) = served(SIZE);
    let cut = 400 * 1024;
    server.set(|b| b.cut_after = Some(cut));
    {
        let mut first = Downloader::new(dir.path(), options());
        let e = first.fetch(&t, &mut no_progress).expect_err("cut download");
        assert!(matches!(e, DownloadError::Interrupted { .. }), "{e}");
        assert!(e.resumable(), "{e}");
        assert!(e.to_string().contains("will resume"), "{e}");
        assert_eq!(first.counters().failed.load(Ordering::Relaxed), 1);
    } // the "restart": the first downloader is gone
    let kept = file_len(&dir.path().join(PART_FILE));
    assert!(kept > 0 && kept <= cut, "partial file kept: {kept} bytes");
    assert!(dir.path().join(STATE_FILE).exists());

    server.set(|b| b.cut_after = None);
    let before = server.sent();
    let mut second = Downloader::new(dir.path(), options());
    let done = second
        .fetch(&t, &mut no_progress)
        .expect("resumed download");
    let resumed_bytes = server.sent() - before;
    assert_eq!(done.resumed_from, kept);
    assert_eq!(done.transferred, SIZE as u64 - kept);
    assert_eq!(resumed_bytes, SIZE as u64 - kept);
    assert!(resumed_bytes < SIZE as u64);
    assert_eq!(std::fs::read(&done.path).expect("read bundle"), bytes);
    let last = server.requests().pop().expect("a request");
    assert_eq!(last.0.as_deref(), Some(format!("bytes={kept}-").as_str()));
    assert_eq!(last.1.as_deref(), Some(ETAG));
    eprintln!(
        "figure: fresh download {SIZE} bytes; cut at {kept}, resumed download transferred {resumed_bytes} bytes"
    );
}

#[test]
fn a_server_ignoring_range_restarts_the_download_cleanly() {
    let (bytes, server, dir, t) = served(SIZE);
    server.set(|b| b.cut_after = Some(300 * 1024));
    let mut d = Downloader::new(dir.path(), options());
    assert!(d.fetch(&t, &mut no_progress).is_err());
    server.set(|b| {
        b.cut_after = None;
        b.ignore_range = true;
    });
    let done = d.fetch(&t, &mut no_progress).expect("restarted download");
    assert_eq!(done.transferred, SIZE as u64, "the whole file again");
    assert_eq!(std::fs::read(&done.path).expect("read bundle"), bytes);
    assert!(
        server.requests().last().is_some_and(|r| r.0.is_some()),
        "a range was asked for"
    );
}

#[test]
fn wrong_bytes_are_refused_and_removed() {
    let (bytes, server, dir, t) = served(SIZE);
    let mut evil = bytes.clone();
    evil[SIZE / 2] ^= 0xff;
    server.set(|b| b.body_override = Some(evil));
    let mut d = Downloader::new(dir.path(), options());
    let e = d.fetch(&t, &mut no_progress).expect_err("wrong hash");
    assert!(matches!(e, DownloadError::WrongHash { .. }), "{e}");
    assert!(!e.resumable());
    let msg = e.to_string();
    assert!(
        msg.contains(&t.sha256.to_string()) && msg.contains("removed"),
        "{msg}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "nothing left behind: {left:?}");

    // A file of the wrong size is refused from its Content-Length, before
    // a byte is stored.
    server.set(|b| b.body_override = Some(bundle(SIZE / 2)));
    let e = d.fetch(&t, &mut no_progress).expect_err("wrong size");
    assert!(
        matches!(e, DownloadError::WrongSize { actual, .. } if actual == SIZE as u64 / 2),
        "{e}"
    );
    assert!(!dir.path().join(PART_FILE).exists());
}

#[test]
fn error_statuses_and_unreachable_servers_are_reported_and_keep_the_partial_file() {
    let (_, server, dir, t) = served(SIZE);
    server.set(|b| b.status = Some(404));
    let mut d = Downloader::new(dir.path(), options());
    let e = d.fetch(&t, &mut no_progress).expect_err("404");
    assert!(
        matches!(e, DownloadError::Status { status: 404, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains(&t.url) && e.to_string().contains("404"),
        "{e}"
    );

    server.set(|b| {
        b.status = None;
        b.cut_after = Some(200 * 1024);
    });
    assert!(d.fetch(&t, &mut no_progress).is_err());
    let kept = file_len(&dir.path().join(PART_FILE));
    assert!(kept > 0);
    server.set(|b| b.status = Some(500));
    let e = d.fetch(&t, &mut no_progress).expect_err("500");
    assert!(
        matches!(e, DownloadError::Status { status: 500, .. }),
        "{e}"
    );
    assert_eq!(
        file_len(&dir.path().join(PART_FILE)),
        kept,
        "partial file kept"
    );

    // A port held bound that nothing listens on.
    let refused = smarter_test_support::RefusedPort::new().expect("a refused port");
    let gone = Target {
        url: format!("http://127.0.0.1:{}/b.raucb", refused.port()),
        ..t.clone()
    };
    let e = d.fetch(&gone, &mut no_progress).expect_err("unreachable");
    assert!(matches!(e, DownloadError::Request { .. }), "{e}");
    assert!(e.to_string().contains(&gone.url), "{e}");

    // The kept partial file belonged to the other URL: discarded, then the
    // original URL downloads whole.
    server.set(|b| {
        b.status = None;
        b.cut_after = None;
    });
    let done = d.fetch(&t, &mut no_progress).expect("download");
    assert_eq!(done.transferred, SIZE as u64);
}

#[test]
fn a_stalled_server_times_out_and_the_download_resumes() {
    let (bytes, server, dir, t) = served(256 * 1024);
    server.set(|b| b.stall = Some(Duration::from_secs(4)));
    let mut d = Downloader::new(
        dir.path(),
        Options {
            read_timeout: Duration::from_secs(1),
            ..options()
        },
    );
    let e = d.fetch(&t, &mut no_progress).expect_err("stall");
    assert!(matches!(e, DownloadError::Interrupted { .. }), "{e}");
    server.set(|b| b.stall = None);
    // A patient downloader for the rest, so a busy machine cannot fail it.
    let mut d = Downloader::new(dir.path(), options());
    let done = d.fetch(&t, &mut no_progress).expect("resumed");
    assert!(done.resumed_from > 0 && done.transferred < bytes.len() as u64);
}

#[test]
fn bandwidth_limit_holds() {
    // 512 KiB at 256 KiB/s: ideally 2 s. Only a loose lower bound is
    // asserted (sleeps never end early; a busy machine only makes it slower).
    let (bytes, _server, dir, t) = served(512 * 1024);
    let rate = 256 * 1024;
    let mut d = Downloader::new(
        dir.path(),
        Options {
            bytes_per_second: rate,
            ..options()
        },
    );
    let start = Instant::now();
    d.fetch(&t, &mut no_progress).expect("download");
    let took = start.elapsed();
    let ideal = Duration::from_secs_f64(bytes.len() as f64 / rate as f64);
    assert!(took >= ideal.mul_f64(0.7), "took {took:?}, ideal {ideal:?}");
    eprintln!(
        "figure: 512 KiB at a limit of 256 KiB/s took {took:?} (ideal {ideal:?}), {:.0} KiB/s",
        bytes.len() as f64 / 1024.0 / took.as_secs_f64()
    );
}

#[test]
fn another_desired_bundle_discards_the_old_partial_file() {
    let (_, server, dir, old) = served(SIZE);
    server.set(|b| b.cut_after = Some(100 * 1024));
    let mut d = Downloader::new(dir.path(), options());
    assert!(d.fetch(&old, &mut no_progress).is_err());
    let newer = bundle(SIZE - 1);
    server.set(|b| {
        b.cut_after = None;
        b.body_override = Some(newer.clone());
    });
    let t = target(&server, &newer);
    let done = d.fetch(&t, &mut no_progress).expect("download");
    assert_eq!(done.resumed_from, 0);
    assert_eq!(done.transferred, newer.len() as u64);
    assert_eq!(std::fs::read(&done.path).expect("read"), newer);
}

/// Runs `f` on a thread in a private mount namespace with a tmpfs of
/// `size_kib` mounted on a fresh temp dir; the mount dies with the thread.
fn with_small_tmpfs(size_kib: u64, f: impl FnOnce(&Path) + Send + 'static) {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let outcome = std::thread::spawn(move || {
        // Mount namespaces are per thread once CLONE_FS is unshared, which
        // CLONE_NEWNS implies; this thread's mounts are invisible elsewhere.
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare mount namespace");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private");
        mount(
            Some("smarter-test"),
            &path,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(format!("size={size_kib}k").as_str()),
        )
        .expect("mount tmpfs");
        f(&path);
    })
    .join();
    drop(dir);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn a_full_data_partition_is_reported_and_given_back() {
    if !smarter_test_support::require_root("mounting a small tmpfs") {
        return;
    }
    let bytes = bundle(SIZE);
    let server = Server::start(bytes.clone());
    let t = target(&server, &bytes);
    // Too small from the start: refused before a byte is fetched.
    let url_server = Arc::new(server);
    let s = url_server.clone();
    let tt = t.clone();
    with_small_tmpfs(512, move |dir| {
        let mut d = Downloader::new(dir.join("update"), options());
        let e = d.fetch(&tt, &mut no_progress).expect_err("disk full");
        assert!(matches!(e, DownloadError::DiskFull { .. }), "{e}");
        assert!(e.to_string().contains("data partition full"), "{e}");
        assert_eq!(s.sent(), 0, "nothing fetched");
    });

    // Fills up while downloading (something else writes to /data): the
    // write fails, the partial file is removed and the space given back.
    let s = url_server.clone();
    s.set(|b| b.throttle = Some(512 * 1024));
    with_small_tmpfs(1536, move |dir| {
        let down = dir.join("update");
        let d_dir = down.clone();
        let tt = t.clone();
        let worker = std::thread::spawn(move || {
            let mut d = Downloader::new(d_dir, options());
            d.fetch(&tt, &mut no_progress)
        });
        let part = down.join(PART_FILE);
        smarter_test_support::wait_until(
            "the download to start",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || file_len(&part) > 0,
        )
        .expect("download started");
        // Fill the file system.
        let mut filler = std::fs::File::create(dir.join("filler")).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let e = worker.join().expect("worker").expect_err("disk full");
        assert!(
            matches!(e, DownloadError::DiskFull { removed: true, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("partial download removed"), "{e}");
        assert!(!part.exists());
        assert!(!down.join(STATE_FILE).exists());
    });
}

/// `openssl s_server -WWW` (HTTP/1.0, whole files, no ranges) over TLS with a
/// certificate from a private CA; killed when dropped.
fn openssl(dir: &Path, args: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn https_from_a_server_with_a_private_ca_needs_its_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let made = openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=smarter-test-ca",
                "-days",
                "1",
            ],
        ]
        .concat(),
    );
    if !made {
        smarter_test_support::skip("openssl cannot run; install Debian's openssl package");
        return;
    }
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    assert!(openssl(
        d,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=127.0.0.1"
            ]
        ]
        .concat()
    ));
    assert!(openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf"
        ]
    ));
    let bytes = bundle(300 * 1024);
    std::fs::write(d.join("b.raucb"), &bytes).expect("bundle");
    // s_server cannot report a port it chose: it gets a picked one, and
    // another when it says the address is in use.
    let (_server, port) = smarter_test_support::start_with_retry("openssl s_server", 10, |port| {
        let mut child = ChildGuard(
            std::process::Command::new("openssl")
                .args([
                    "s_server",
                    "-accept",
                    &format!("127.0.0.1:{port}"),
                    "-cert",
                    "srv.pem",
                    "-key",
                    "srv.key",
                    "-WWW",
                    "-quiet",
                ])
                .current_dir(d)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()?,
        );
        let pid = child.0.id();
        wait_started(
            &mut child.0,
            format_args!("s_server on {port}"),
            Duration::from_secs(30),
            // Its own socket: another test's peer may hold the port.
            || smarter_test_support::listening(pid, port),
            stderr_text,
        )?;
        Ok(child)
    })
    .expect("openssl s_server");
    let mut sha = [0u8; 32];
    sha.copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let t = Target {
        url: format!("https://127.0.0.1:{port}/b.raucb"),
        size: bytes.len() as u64,
        sha256: smarter_update::desired::Sha256Digest(sha),
    };

    // The compiled-in roots do not know the private CA.
    let plain = tempfile::tempdir().expect("tempdir");
    let mut d1 = Downloader::new(plain.path(), options());
    let e = d1.fetch(&t, &mut no_progress).expect_err("unknown issuer");
    assert!(matches!(e, DownloadError::Request { .. }), "{e}");

    let ca = CaCerts::load(&d.join("ca.pem")).expect("CA file");
    assert_eq!(ca.len(), 1);
    let out = tempfile::tempdir().expect("tempdir");
    let mut d2 = Downloader::new(
        out.path(),
        Options {
            ca_certs: Some(ca),
            ..options()
        },
    );
    let done = d2.fetch(&t, &mut no_progress).expect("https download");
    assert_eq!(std::fs::read(&done.path).expect("read"), bytes);

    let e = CaCerts::load(&d.join("ext.cnf")).expect_err("not PEM");
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
}
