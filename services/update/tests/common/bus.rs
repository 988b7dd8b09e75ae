//! A private `dbus-daemon` and stand-ins for RAUC's Installer and logind's
//! Manager, written with zbus, speaking the real services' names, paths,
//! methods, signals and properties.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedValue, Value};

/// A private bus; the daemon is killed when this is dropped.
pub struct Bus {
    pub child: Child,
    pub address: String,
    pub _dir: tempfile::TempDir,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `dbus-daemon`, or `None` (skipped, or failed in CI) without one.
pub fn private_bus() -> Option<Bus> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bus.conf");
    std::fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            dir.path().join("bus").display()
        ),
    )
    .expect("write bus config");
    let child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--nopidfile", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            smarter_test_support::skip(format!(
                "dbus-daemon cannot run ({e}); install Debian's dbus package"
            ));
            return None;
        }
    };
    let mut line = String::new();
    let stdout = child.stdout.take().expect("dbus-daemon stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the bus address");
    let address = line.trim().to_string();
    assert!(
        address.starts_with("unix:"),
        "dbus-daemon printed {address:?}"
    );
    Some(Bus {
        child,
        address,
        _dir: dir,
    })
}

/// What the stand-in RAUC does with the next InstallBundle.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Install into rootfs.1 as this version, then Completed(0).
    Succeed(String),
    /// LastError = this, then Completed(1).
    Fail(String),
    /// Answer the method call with this D-Bus error.
    Refuse(String),
    /// Never complete.
    Hang,
}

pub type Slots = Vec<(String, Vec<(&'static str, String)>)>;

pub struct FakeRauc {
    pub plan: Plan,
    pub operation: String,
    pub last_error: String,
    pub progress: (i32, String, i32),
    pub boot_slot: String,
    pub slots: Slots,
    pub installs: Arc<Mutex<Vec<(String, usize)>>>,
}

pub fn slots(booted: &str, version_a: &str, status_b: &str) -> Slots {
    let state = |name: &str| if name == booted { "booted" } else { "inactive" };
    vec![
        (
            "rootfs.0".to_string(),
            vec![
                ("bootname", "A".to_string()),
                ("class", "rootfs".to_string()),
                ("state", state("A").to_string()),
                ("boot-status", "good".to_string()),
                ("bundle.version", version_a.to_string()),
                ("bundle.compatible", "smarter-qemuarm64".to_string()),
            ],
        ),
        (
            "rootfs.1".to_string(),
            vec![
                ("bootname", "B".to_string()),
                ("class", "rootfs".to_string()),
                ("state", state("B").to_string()),
                ("boot-status", status_b.to_string()),
            ],
        ),
    ]
}

#[zbus::interface(name = "de.pengutronix.rauc.Installer")]
impl FakeRauc {
    async fn install_bundle(
        &mut self,
        source: String,
        args: HashMap<String, OwnedValue>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> zbus::fdo::Result<()> {
        self.installs
            .lock()
            .expect("lock")
            .push((source.clone(), args.len()));
        if let Plan::Refuse(message) = &self.plan {
            return Err(zbus::fdo::Error::Failed(message.clone()));
        }
        self.operation = "installing".into();
        let plan = self.plan.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            let iface = connection
                .object_server()
                .interface::<_, FakeRauc>("/")
                .await
                .expect("own interface");
            let emitter = iface.signal_emitter().clone();
            if matches!(plan, Plan::Hang) {
                return;
            }
            for (percent, message) in [
                (0, "Installing"),
                (40, "Checking bundle"),
                (100, "Installing done."),
            ] {
                iface.get_mut().await.progress = (percent, message.to_string(), 1);
                iface
                    .get()
                    .await
                    .progress_changed(&emitter)
                    .await
                    .expect("emit Progress");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let result = {
                let mut me = iface.get_mut().await;
                me.operation = "idle".into();
                match &plan {
                    Plan::Succeed(version) => {
                        if let Some((_, fields)) =
                            me.slots.iter_mut().find(|(n, _)| n == "rootfs.1")
                        {
                            fields.push(("bundle.version", version.clone()));
                        }
                        me.last_error = String::new();
                        0
                    }
                    Plan::Fail(message) => {
                        me.last_error = message.clone();
                        1
                    }
                    Plan::Refuse(_) | Plan::Hang => 1,
                }
            };
            FakeRauc::completed(&emitter, result)
                .await
                .expect("emit Completed");
        });
        Ok(())
    }

    async fn get_slot_status(&self) -> Vec<(String, HashMap<String, Value<'static>>)> {
        self.slots
            .iter()
            .map(|(name, fields)| {
                let dict = fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::from(v.clone())))
                    .collect();
                (name.clone(), dict)
            })
            .collect()
    }

    async fn get_primary(&self) -> String {
        "rootfs.0".into()
    }

    #[zbus(signal)]
    async fn completed(emitter: &SignalEmitter<'_>, result: i32) -> zbus::Result<()>;

    #[zbus(property)]
    async fn operation(&self) -> String {
        self.operation.clone()
    }

    #[zbus(property)]
    async fn last_error(&self) -> String {
        self.last_error.clone()
    }

    #[zbus(property)]
    async fn progress(&self) -> (i32, String, i32) {
        self.progress.clone()
    }

    #[zbus(property)]
    async fn compatible(&self) -> String {
        "smarter-qemuarm64".into()
    }

    #[zbus(property)]
    async fn boot_slot(&self) -> String {
        self.boot_slot.clone()
    }
}

/// Stand-in RAUC on `bus`; returns the calls it receives and its connection
/// (dropping that takes the name off the bus).
pub async fn serve_rauc(
    bus: &Bus,
    plan: Plan,
    slots: Slots,
    boot_slot: &str,
) -> (Arc<Mutex<Vec<(String, usize)>>>, zbus::Connection) {
    let installs = Arc::new(Mutex::new(Vec::new()));
    let fake = FakeRauc {
        plan,
        operation: "idle".into(),
        last_error: String::new(),
        progress: (0, String::new(), 0),
        boot_slot: boot_slot.into(),
        slots,
        installs: installs.clone(),
    };
    let connection = zbus::connection::Builder::address(bus.address.as_str())
        .expect("bus address")
        .name("de.pengutronix.rauc")
        .expect("name")
        .serve_at("/", fake)
        .expect("serve")
        .build()
        .await
        .expect("stand-in RAUC on the bus");
    (installs, connection)
}

pub async fn client(bus: &Bus) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address.as_str())
        .expect("bus address")
        .build()
        .await
        .expect("client connection")
}

/// Stand-in logind on `bus`; returns the `Reboot` calls it receives (their
/// `interactive` argument) and its connection (dropping that takes the name
/// off the bus).
pub async fn serve_logind(bus: &Bus) -> (Arc<Mutex<Vec<bool>>>, zbus::Connection) {
    let reboots = Arc::new(Mutex::new(Vec::new()));
    let connection = zbus::connection::Builder::address(bus.address.as_str())
        .expect("address")
        .name("org.freedesktop.login1")
        .expect("name")
        .serve_at(
            "/org/freedesktop/login1",
            FakeLogind {
                reboots: reboots.clone(),
            },
        )
        .expect("serve")
        .build()
        .await
        .expect("stand-in logind");
    (reboots, connection)
}

pub struct FakeLogind {
    pub reboots: Arc<Mutex<Vec<bool>>>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl FakeLogind {
    async fn reboot(&self, interactive: bool) {
        self.reboots.lock().expect("lock").push(interactive);
    }
}
