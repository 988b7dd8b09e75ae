//! The RAUC and logind clients against a private `dbus-daemon` (started here
//! with its own config and socket in a temp dir), with stand-ins for RAUC's
//! `de.pengutronix.rauc.Installer` and logind's Manager written in the test
//! with zbus, speaking the same names, paths, methods, signals and
//! properties as the real services.
#![allow(clippy::expect_used, clippy::panic)] // test harness: a failed setup step fails the test

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bus::{Bus, Plan, client, private_bus, serve_logind, serve_rauc, slots};
use smarter_update::rauc::{Progress, Rauc, RaucError};

const BUNDLE: &str = "/data/smarter/update/9f86d081.raucb";

/// What the stand-in RAUC was asked to install (bundle, argument count).
type Installs = Arc<Mutex<Vec<(String, usize)>>>;

/// A private bus (`None`: no `dbus-daemon`, see [`private_bus`]) with a
/// stand-in RAUC following `plan`, booted from slot A (2026.11.0, good), and
/// a client's connection: (bus, installs, RAUC's connection, client's).
async fn bus_with_rauc(plan: Plan) -> Option<(Bus, Installs, zbus::Connection, zbus::Connection)> {
    let bus = private_bus()?;
    let (installs, rauc) = serve_rauc(&bus, plan, slots("A", "2026.11.0", "good"), "A").await;
    let conn = client(&bus).await;
    Some((bus, installs, rauc, conn))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_reports_progress_then_completion_and_the_slot_carries_the_version() {
    let Some((_bus, installs, _rauc, conn)) =
        bus_with_rauc(Plan::Succeed("2026.12.1".into())).await
    else {
        return;
    };
    let rauc = Rauc::new(&conn).await.expect("client");
    let booted = rauc.booted().await.expect("booted slot");
    assert_eq!(booted.name, "rootfs.0");
    assert_eq!(booted.bundle_version.as_deref(), Some("2026.11.0"));
    assert!(booted.is_good());
    assert_eq!(rauc.operation().await.expect("Operation"), "idle");

    let mut seen = Vec::new();
    rauc.install(BUNDLE, Duration::from_secs(30), &mut |p| seen.push(p))
        .await
        .expect("install");
    assert_eq!(
        installs.lock().expect("lock").as_slice(),
        &[(BUNDLE.to_string(), 0)]
    );
    assert!(
        seen.iter().any(|p| p.percent == 100),
        "progress reported: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0].percent <= w[1].percent));
    assert_eq!(
        rauc.progress().await.expect("Progress"),
        Progress {
            percent: 100,
            message: "Installing done.".into(),
            depth: 1
        }
    );
    let status = rauc.slot_status().await.expect("slot status");
    assert_eq!(status.compatible, "smarter-qemuarm64");
    let other = status
        .slots
        .iter()
        .find(|s| s.name == "rootfs.1")
        .expect("rootfs.1");
    assert_eq!(other.bundle_version.as_deref(), Some("2026.12.1"));
    assert_eq!(rauc.primary().await.expect("GetPrimary"), "rootfs.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_install_reports_last_error_and_changes_no_slot() {
    let why = "signature verification failed: certificate has expired";
    let Some((_bus, _, _rauc, conn)) = bus_with_rauc(Plan::Fail(why.into())).await else {
        return;
    };
    let rauc = Rauc::new(&conn).await.expect("client");
    let before = rauc.slot_status().await.expect("status");
    let e = rauc
        .install(BUNDLE, Duration::from_secs(30), &mut |_| {})
        .await
        .expect_err("install fails");
    assert!(
        matches!(e, RaucError::InstallFailed { result: 1, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains(why) && e.to_string().contains(BUNDLE),
        "{e}"
    );
    assert_eq!(rauc.slot_status().await.expect("status"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_install_and_a_hung_one_are_reported() {
    let Some((bus, _, rauc_conn, conn)) =
        bus_with_rauc(Plan::Refuse("Already processing a different method".into())).await
    else {
        return;
    };
    let rauc = Rauc::new(&conn).await.expect("client");
    let e = rauc
        .install(BUNDLE, Duration::from_secs(30), &mut |_| {})
        .await
        .expect_err("refused");
    assert!(matches!(e, RaucError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("Already processing"), "{e}");
    drop(rauc_conn);

    let (_, _hung) = serve_rauc(&bus, Plan::Hang, slots("A", "1", "good"), "A").await;
    let rauc = Rauc::new(&conn).await.expect("client");
    let e = rauc
        .install(BUNDLE, Duration::from_secs(1), &mut |_| {})
        .await
        .expect_err("timeout");
    assert!(matches!(e, RaucError::Timeout { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_booted_slot_after_a_switch_and_without_state_fields() {
    let Some(bus) = private_bus() else { return };
    // Booted B, not yet marked good by anyone.
    let mut s = slots("B", "2026.11.0", "bad");
    if let Some((_, fields)) = s.iter_mut().find(|(n, _)| n == "rootfs.1") {
        fields.push(("bundle.version", "2026.12.1".into()));
    }
    let (_, rauc_conn) = serve_rauc(&bus, Plan::Hang, s.clone(), "B").await;
    let conn = client(&bus).await;
    let rauc = Rauc::new(&conn).await.expect("client");
    let booted = rauc.booted().await.expect("booted");
    assert_eq!(booted.name, "rootfs.1");
    assert_eq!(booted.bundle_version.as_deref(), Some("2026.12.1"));
    assert!(!booted.is_good());
    drop(rauc_conn);

    // No `state` fields: BootSlot (the bootname) decides.
    for (_, fields) in &mut s {
        fields.retain(|(k, _)| *k != "state");
    }
    let (_, _rauc) = serve_rauc(&bus, Plan::Hang, s, "B").await;
    let rauc = Rauc::new(&conn).await.expect("client");
    assert_eq!(rauc.booted().await.expect("booted").name, "rootfs.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rauc_missing_from_the_bus_is_reported() {
    let Some(bus) = private_bus() else { return };
    let conn = client(&bus).await;
    let result = match Rauc::new(&conn).await {
        Ok(rauc) => rauc.booted().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let e = result.expect_err("no RAUC");
    assert!(matches!(e, RaucError::Bus { .. }), "{e}");
    assert!(e.to_string().contains("de.pengutronix.rauc"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_goes_through_logind_without_asking() {
    let Some(bus) = private_bus() else { return };
    let conn = client(&bus).await;
    let e = smarter_update::logind::reboot(&conn)
        .await
        .expect_err("no logind yet");
    assert!(e.to_string().contains("org.freedesktop.login1"), "{e}");

    let (reboots, _logind) = serve_logind(&bus).await;
    smarter_update::logind::reboot(&conn)
        .await
        .expect("reboot asked");
    assert_eq!(reboots.lock().expect("lock").as_slice(), &[false]);
}

/// Debian's real `rauc service` on the private bus (as its system bus), with
/// a custom bootloader backend script and two raw slots in plain files.
struct RealRauc {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for RealRauc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn real_rauc(bus: &Bus) -> Option<RealRauc> {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let backend = d.join("backend.sh");
    std::fs::write(
        &backend,
        "#!/bin/sh\ncase \"$1\" in\n  get-primary|get-current) echo A ;;\n  get-state) echo good ;;\nesac\nexit 0\n",
    )
    .expect("backend");
    let status = Command::new("chmod")
        .arg("+x")
        .arg(&backend)
        .status()
        .expect("chmod");
    assert!(status.success());
    for slot in ["slot-a.img", "slot-b.img"] {
        std::fs::write(d.join(slot), vec![0u8; 64 * 1024]).expect("slot file");
    }
    std::fs::create_dir(d.join("data")).expect("data dir");
    // The keyring is only read when a bundle is checked; any PEM will do for
    // the service to start, and the bundles here never get that far.
    std::fs::write(d.join("keyring.pem"), "").expect("keyring");
    std::fs::write(
        d.join("system.conf"),
        format!(
            "[system]\ncompatible=smarter-test\nbootloader=custom\ndata-directory={d}/data\n\n\
             [handlers]\nbootloader-custom-backend={d}/backend.sh\n\n\
             [keyring]\npath={d}/keyring.pem\n\n\
             [slot.rootfs.0]\ndevice={d}/slot-a.img\ntype=raw\nbootname=A\n\n\
             [slot.rootfs.1]\ndevice={d}/slot-b.img\ntype=raw\nbootname=B\n",
            d = d.display()
        ),
    )
    .expect("system.conf");
    let child = Command::new("rauc")
        .arg(format!("--conf={}", d.join("system.conf").display()))
        .args(["service", "--override-boot-slot=A"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => Some(RealRauc { child, dir }),
        Err(e) => {
            smarter_test_support::skip(format!(
                "rauc cannot run ({e}); install Debian's rauc package"
            ));
            None
        }
    }
}

/// Wait (up to a generous bound; not a timing assertion) until `name` is
/// owned on the bus.
async fn wait_for_name(conn: &zbus::Connection, name: &str) {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.expect("DBus proxy");
    let name = zbus::names::BusName::try_from(name).expect("bus name");
    smarter_test_support::wait_until_async(
        format_args!("{name} on the bus"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { dbus.name_has_owner(name.clone()).await.unwrap_or(false) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_rauc_service_reports_its_slots_and_refuses_a_bad_bundle() {
    let Some(bus) = private_bus() else { return };
    let Some(real) = real_rauc(&bus) else { return };
    let conn = client(&bus).await;
    wait_for_name(&conn, "de.pengutronix.rauc").await;
    let rauc = Rauc::new(&conn).await.expect("client");

    let status = rauc.slot_status().await.expect("slot status");
    assert_eq!(status.compatible, "smarter-test");
    assert_eq!(status.boot_slot, "A");
    let booted = status.booted().expect("a booted slot");
    assert_eq!(booted.name, "rootfs.0");
    assert_eq!(booted.bootname.as_deref(), Some("A"));
    assert!(booted.is_good(), "{booted:?}");
    assert_eq!(rauc.operation().await.expect("Operation"), "idle");

    let bad = real.dir.path().join("bad.raucb");
    std::fs::write(&bad, b"not a bundle\n").expect("bad bundle");
    let e = rauc
        .install(&bad.to_string_lossy(), Duration::from_secs(60), &mut |_| {})
        .await
        .expect_err("RAUC refuses garbage");
    assert!(
        matches!(&e, RaucError::InstallFailed { last_error, .. } if !last_error.is_empty()),
        "{e}"
    );
    eprintln!("real RAUC: {e}");
    let slot_b = std::fs::read(real.dir.path().join("slot-b.img")).expect("slot b");
    assert!(
        slot_b.iter().all(|b| *b == 0),
        "the other slot was not written"
    );
    assert_eq!(rauc.operation().await.expect("Operation"), "idle");
}
