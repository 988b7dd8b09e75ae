//! The real binary against the kubelet double, with real device nodes made
//! by mknod in a temporary device root (root only; skipped otherwise).

mod support;

use std::time::Duration;

use smarter_test_support::{
    StartError, listening, start_with_retry, wait_started, wait_until_async,
};
use support::{Env, FakeKubelet, R, T, can_mknod, healthy, hotplug_cycle, unhealthy};

/// How often a wait polls what it cannot be told about (files, the log).
const POLL: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_conf_yaml_registers_lists_and_allocates() -> R {
    if !can_mknod("original_conf_yaml_registers_lists_and_allocates") {
        return Ok(());
    }
    let mut env = Env::new("conf.yaml")?;
    env.write_config(
        "- devicematch: ^ttyUSB[0-9]*$\n  nummaxdevices: 1\n- devicematch: ^snd$\n  nummaxdevices: 20\n- devicematch: ^net/tun$\n  nummaxdevices: 1\n",
    )?;
    env.mknod("ttyUSB0", 188, 0)?;
    env.mknod("snd/controlC0", 116, 0)?;
    env.mknod("snd/pcmC0D0p", 116, 16)?;
    env.mknod("net/tun", 10, 200)?;
    env.mknod("null", 1, 3)?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;

    let snd = k
        .wait_for("smarter-devices/snd", T, |p| p.devices.len() == 20)
        .await?;
    assert_eq!(snd.endpoint, "smarter-snd.sock");
    assert!(snd.devices.iter().all(|(_, h)| h == "Healthy"));
    let ids: Vec<&str> = snd.devices.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids[..3], ["0", "1", "2"]);
    let opts = snd.options.unwrap_or_default();
    assert!(opts.get_preferred_allocation_available);
    assert_eq!(snd.served_options, Some(opts));
    let tun = k
        .wait_for("smarter-devices/net_tun", T, |p| p.devices.len() == 1)
        .await?;
    assert_eq!(tun.endpoint, "smarter-net_tun.sock");
    k.wait_for("smarter-devices/ttyUSB0", T, |p| p.devices.len() == 1)
        .await?;
    assert!(env.plugins.join("smarter-ttyUSB0.sock").exists());
    assert!(k.plugin("smarter-devices/null").is_none());
    assert!(k.refused().is_empty(), "{:?}", k.refused());

    let a = k.allocate("smarter-devices/ttyUSB0", &["0"]).await?;
    assert_eq!(a.devices.len(), 1);
    assert_eq!(
        a.devices[0].host_path,
        env.dev.join("ttyUSB0").to_string_lossy()
    );
    assert_eq!(a.devices[0].container_path, "/dev/ttyUSB0");
    assert_eq!(a.devices[0].permissions, "rw");
    let a = k.allocate("smarter-devices/snd", &["3"]).await?;
    let mut paths: Vec<&str> = a
        .devices
        .iter()
        .map(|d| d.container_path.as_str())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/dev/snd/controlC0", "/dev/snd/pcmC0D0p"]);
    let e = k.allocate("smarter-devices/snd", &["99"]).await;
    assert!(
        e.as_ref().is_err_and(|m| m.contains("unknown device ID")),
        "{e:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotplug_add_remove_readd_within_100ms() -> R {
    if !can_mknod("hotplug_add_remove_readd_within_100ms") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    env.write_config(
        // inotify pinned: these nodes are made by mknod, which a udevd on
        // the host would never announce (tests/hotplug_source.rs covers that).
        "health_interval_secs = 0\nhotplug = \"inotify\"\n[[rules]]\nname = \"usb-serial\"\npath = \"^ttyUSB[0-9]+$\"\nid = \"path\"\n\n[[rules]]\npath = \"^ttyACM[0-9]+$\"\n",
    )?;
    env.mknod("ttyUSB0", 188, 0)?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;
    let pool = "smarter-devices/usb-serial";
    k.wait_for(pool, T, |p| healthy(p, "ttyUSB0")).await?;

    // Added: Healthy; removed: Unhealthy, still listed; back: Healthy.
    hotplug_cycle(&env, &k, pool, "hotplug latency").await?;

    // A per-node rule: a new node is a new resource that registers.
    env.mknod("ttyACM0", 166, 0)?;
    k.wait_for("smarter-devices/ttyACM0", T, |p| healthy(p, "0"))
        .await?;
    // In a directory created after start.
    env.mknod("sub/dir/ttyUSB7", 188, 7)?;
    let e = k
        .wait_for(pool, Duration::from_millis(500), |p| {
            healthy(p, "sub/dir/ttyUSB7")
        })
        .await;
    // The rule is anchored at ^ttyUSB, so a nested node must not match.
    assert!(e.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restart_and_own_socket_deleted_reregister() -> R {
    if !can_mknod("kubelet_restart_and_own_socket_deleted_reregister") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    env.write_config("[[rules]]\npath = \"^ttyUSB[0-9]+$\"\n\n[[rules]]\npath = \"^video[0-9]+$\"\nmax_users = 2\n")?;
    env.mknod("ttyUSB0", 188, 0)?;
    env.mknod("video0", 81, 0)?;
    let mut k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;
    let tty = "smarter-devices/ttyUSB0";
    let video = "smarter-devices/video0";
    k.wait_for(tty, T, |p| p.registrations == 1 && p.updates >= 1)
        .await?;
    k.wait_for(video, T, |p| p.registrations == 1 && p.updates >= 1)
        .await?;

    // Kubelet restart: sockets deleted, kubelet.sock re-created. (Both the
    // deleted socket and the new kubelet.sock trigger a registration, so a
    // plugin may register twice; the kubelet takes the latest.)
    k.restart().await?;
    k.wait_for(tty, T, |p| p.registrations >= 2 && p.updates >= 2)
        .await?;
    k.wait_for(video, T, |p| p.registrations >= 2 && p.updates >= 2)
        .await?;
    assert!(env.plugins.join("smarter-ttyUSB0.sock").exists());
    let a = k.allocate(tty, &["0"]).await?;
    assert_eq!(a.devices.len(), 1);

    // Only our socket deleted: that plugin (alone) serves again and registers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tty_regs = k.plugin(tty).map(|p| p.registrations);
    let video_regs = k.plugin(video).map_or(0, |p| p.registrations);
    std::fs::remove_file(env.plugins.join("smarter-video0.sock"))?;
    k.wait_for(video, T, |p| p.registrations > video_regs)
        .await?;
    assert!(env.plugins.join("smarter-video0.sock").exists());
    let a = k.allocate(video, &["1"]).await?;
    assert_eq!(a.devices.len(), 1);
    assert_eq!(k.plugin(tty).map(|p| p.registrations), tty_regs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_after_kubelet_appears_late() -> R {
    if !can_mknod("registers_after_kubelet_appears_late") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    env.write_config("[[rules]]\npath = \"^ttyUSB[0-9]+$\"\n")?;
    env.mknod("ttyUSB0", 188, 0)?;
    env.spawn(&[])?;
    // No kubelet yet: the plugin serves and retries with backoff.
    let sock = env.plugins.join("smarter-ttyUSB0.sock");
    wait_until_async("the plugin's socket", T, POLL, || async { sock.exists() }).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let k = FakeKubelet::start(&env.plugins)?;
    k.wait_for("smarter-devices/ttyUSB0", T, |p| {
        p.registrations == 1 && p.updates >= 1
    })
    .await?;
    assert!(env.log_text().contains("registration failed"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_changes_only_changed_resources() -> R {
    if !can_mknod("sighup_reload_changes_only_changed_resources") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    // No file watch here: only the signal may trigger the reload.
    env.write_config(
        "watch_config = false\n[[rules]]\nname = \"serial\"\npath = \"^ttyUSB[0-9]+$\"\nid = \"path\"\n\n[[rules]]\npath = \"^snd$\"\n\n[[rules]]\npath = \"^video0$\"\n",
    )?;
    env.mknod("ttyUSB0", 188, 0)?;
    env.mknod("snd/controlC0", 116, 0)?;
    env.mknod("video0", 81, 0)?;
    env.mknod("net/tun", 10, 200)?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;
    k.wait_for("smarter-devices/serial", T, |p| p.devices.len() == 1)
        .await?;
    k.wait_for("smarter-devices/snd", T, |p| p.devices.len() == 1)
        .await?;
    k.wait_for("smarter-devices/video0", T, |p| p.devices.len() == 1)
        .await?;

    // serial: more users; snd: removed; video0: unchanged; net/tun: added.
    env.write_config(
        "watch_config = false\n[[rules]]\nname = \"serial\"\npath = \"^ttyUSB[0-9]+$\"\nid = \"path\"\nmax_users = 3\npermissions = \"rwm\"\n\n[[rules]]\npath = \"^video0$\"\n\n[[rules]]\npath = \"^net/tun$\"\n",
    )?;
    // Without the signal nothing changes.
    let e = k
        .wait_for(
            "smarter-devices/net_tun",
            Duration::from_millis(300),
            |_| true,
        )
        .await;
    assert!(e.is_err(), "reloaded without SIGHUP");
    env.signal(libc::SIGHUP);
    k.wait_for("smarter-devices/net_tun", T, |p| p.devices.len() == 1)
        .await?;
    let serial = k
        .wait_for("smarter-devices/serial", T, |p| p.devices.len() == 3)
        .await?;
    assert_eq!(
        serial.registrations, 1,
        "unchanged server must not re-register"
    );
    assert_eq!(
        k.plugin("smarter-devices/video0").map(|p| p.registrations),
        Some(1)
    );
    wait_until_async("smarter-snd.sock to go", T, POLL, || async {
        !env.plugins.join("smarter-snd.sock").exists()
    })
    .await?;
    let a = k.allocate("smarter-devices/serial", &["ttyUSB0.2"]).await?;
    assert_eq!(a.devices[0].permissions, "rwm");

    // A broken config is refused; the last good one keeps serving.
    env.write_config("[[rules]]\npath = \"^tty(\"\n")?;
    env.signal(libc::SIGHUP);
    wait_until_async(
        "the broken config's refusal in the log",
        T,
        POLL,
        || async { env.log_text().contains("keeping the last good config") },
    )
    .await?;
    assert!(
        env.log_text().contains("rules[0].path"),
        "{}",
        env.log_text()
    );
    let a = k.allocate("smarter-devices/serial", &["ttyUSB0.0"]).await?;
    assert_eq!(a.devices.len(), 1);
    assert!(env.plugins.join("smarter-net_tun.sock").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_unhealthy_and_removes_sockets() -> R {
    if !can_mknod("sigterm_sends_unhealthy_and_removes_sockets") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    env.write_config("[[rules]]\npath = \"^ttyUSB[0-9]+$\"\n")?;
    env.mknod("ttyUSB0", 188, 0)?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;
    k.wait_for("smarter-devices/ttyUSB0", T, |p| healthy(p, "0"))
        .await?;
    env.signal(libc::SIGTERM);
    k.wait_for("smarter-devices/ttyUSB0", T, |p| unhealthy(p, "0"))
        .await?;
    let st = env.wait_exit(T);
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    assert!(!env.plugins.join("smarter-ttyUSB0.sock").exists());
    assert!(env.plugins.join("kubelet.sock").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_udev_match_preferred_allocation_env_mounts_cdi() -> R {
    if !can_mknod("pooled_udev_match_preferred_allocation_env_mounts_cdi") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    // Fake sysfs: ttyUSB0 and ttyUSB1 are FTDI (0403), ttyUSB2 is a CP210x.
    for (n, vendor, serial) in [(0, "0403", "A1"), (1, "0403", "B2"), (2, "10c4", "C3")] {
        let usb = env.sys.join(format!("devices/usb1/1-{n}"));
        let tty = usb.join(format!("1-{n}:1.0/ttyUSB{n}/tty/ttyUSB{n}"));
        std::fs::create_dir_all(&tty)?;
        std::fs::write(usb.join("idVendor"), vendor)?;
        std::fs::write(usb.join("serial"), serial)?;
        std::fs::write(
            tty.join("uevent"),
            format!("MAJOR=188\nMINOR={n}\nDEVNAME=ttyUSB{n}\n"),
        )?;
        std::fs::create_dir_all(env.sys.join("dev/char"))?;
        std::os::unix::fs::symlink(&tty, env.sys.join(format!("dev/char/188:{n}")))?;
        env.mknod(&format!("ttyUSB{n}"), 188, n)?;
    }
    env.write_config(
        "udev_data_dir = \"/nonexistent\"\n[[rules]]\nname = \"ftdi\"\npath = \"^ttyUSB\"\nudev = { ID_VENDOR_ID = \"0403\" }\nmax_users = 2\ncontainer_path = \"/dev/serial0\"\nenv = { SERIAL = \"{id}\" }\nmounts = [{ host_path = \"/etc/hostname\", container_path = \"/etc/gw\" }]\ncdi_kind = \"smarter.io/serial\"\n",
    )?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;
    let p = k
        .wait_for("smarter-devices/ftdi", T, |p| p.devices.len() == 4)
        .await?;
    let ids: Vec<&str> = p.devices.iter().map(|(i, _)| i.as_str()).collect();
    // IDs from the USB serial numbers; the CP210x is not matched.
    assert_eq!(ids, ["A1.0", "A1.1", "B2.0", "B2.1"]);
    // A1.0 is in use elsewhere: B2 is the least shared.
    let pref = k
        .preferred("smarter-devices/ftdi", &["A1.1", "B2.0", "B2.1"], &[], 1)
        .await?;
    assert_eq!(pref, ["B2.0"]);
    let a = k.allocate("smarter-devices/ftdi", &["B2.0"]).await?;
    assert_eq!(a.devices[0].container_path, "/dev/serial0");
    assert_eq!(
        a.devices[0].host_path,
        env.dev.join("ttyUSB1").to_string_lossy()
    );
    assert_eq!(a.envs.get("SERIAL").map(String::as_str), Some("B2"));
    assert_eq!(a.mounts[0].container_path, "/etc/gw");
    assert!(a.mounts[0].read_only);
    assert_eq!(a.cdi_devices[0].name, "smarter.io/serial=B2");
    Ok(())
}

/// One GET to the metrics server: the whole answer.
async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Poll `path` until its answer starts with `status` (a generous bound, not
/// a timing assertion).
async fn wait_http(port: u16, path: &str, status: &str) -> Result<String, String> {
    let last = std::sync::Mutex::new(String::new());
    wait_until_async(
        format_args!("{path} to answer {status:?}"),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let a = http_get(port, path).await.ok()?;
            if a.starts_with(status) {
                return Some(a);
            }
            if let Ok(mut l) = last.lock() {
                *l = a;
            }
            None
        },
    )
    .await
    .map_err(|e| {
        format!(
            "{e}; last {:?}",
            last.lock().map(|l| l.clone()).unwrap_or_default()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes() -> R {
    if !can_mknod("metrics_and_probes") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    env.mknod("ttyUSB0", 188, 0)?;
    // No kubelet yet: alive, but not ready (nothing registered). The binary
    // binds the metrics port itself: a picked one, another while taken.
    let ((), port) = start_with_retry("smarter-device-manager's metrics", 10, |port| {
        env.write_config(&format!(
            "metrics_address = \"127.0.0.1:{port}\"\n[[rules]]\npath = \"^ttyUSB[0-9]+$\"\n"
        ))?;
        env.spawn(&[])?;
        let log = env.log.clone();
        let Some(child) = env.child.as_mut() else {
            return Err(StartError::Other("not spawned".into()));
        };
        let pid = child.id();
        wait_started(
            child,
            "smarter-device-manager",
            T,
            || listening(pid, port),
            |_| std::fs::read_to_string(&log).unwrap_or_default(),
        )
    })?;
    let h = wait_http(port, "/healthz", "HTTP/1.1 200").await?;
    assert!(h.ends_with("\r\n\r\nok\n"), "{h}");
    let r = wait_http(port, "/readyz", "HTTP/1.1 503").await?;
    assert!(r.contains("not registered with the kubelet"), "{r}");
    let k = FakeKubelet::start(&env.plugins)?;
    k.wait_for("smarter-devices/ttyUSB0", T, |p| p.updates >= 1)
        .await?;
    let r = wait_http(port, "/readyz", "HTTP/1.1 200").await?;
    assert!(r.contains("1 resources registered"), "{r}");
    let m = http_get(port, "/metrics").await?;
    for line in [
        "smarter_device_manager_registrations_total 1",
        "smarter_device_manager_registered_resources 1",
        "smarter_device_manager_devices{resource=\"smarter-devices/ttyUSB0\",health=\"Healthy\"} 1",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_start_time_seconds gauge",
    ] {
        assert!(m.lines().any(|l| l == line), "no {line:?} in\n{m}");
    }
    assert_eq!(
        http_get(port, "/nope").await?.lines().next(),
        Some("HTTP/1.1 404 Not Found")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_change_reloads_without_a_signal() -> R {
    if !can_mknod("config_file_change_reloads_without_a_signal") {
        return Ok(());
    }
    let mut env = Env::new("conf.yaml")?;
    env.write_config("- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 1\n")?;
    env.mknod("ttyUSB0", 188, 0)?;
    env.mknod("video0", 81, 0)?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;
    k.wait_for("smarter-devices/ttyUSB0", T, |p| p.updates >= 1)
        .await?;
    // As a ConfigMap update does: the file is replaced, nobody sends SIGHUP.
    env.write_config(
        "- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 2\n- devicematch: ^video0$\n  nummaxdevices: 5\n",
    )?;
    k.wait_for("smarter-devices/video0", T, |p| p.devices.len() == 5)
        .await?;
    let p = k
        .wait_for("smarter-devices/ttyUSB0", T, |p| p.devices.len() == 2)
        .await?;
    assert_eq!(p.registrations, 1);
    assert!(env.log_text().contains("config file changed"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udev_database_written_after_the_node_is_picked_up() -> R {
    if !can_mknod("udev_database_written_after_the_node_is_picked_up") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    let udev = env.tmp.path().join("udev-data");
    std::fs::create_dir_all(&udev)?;
    env.write_config(&format!(
        "health_interval_secs = 0\nudev_data_dir = \"{}\"\n[[rules]]\nname = \"widget\"\npath = \"^ttyUSB\"\nudev = {{ ID_SERIAL = \"Widget_*\" }}\n\n[[rules]]\npath = \"^keepalive$\"\n",
        udev.display()
    ))?;
    env.mknod("keepalive", 1, 3)?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;
    k.wait_for("smarter-devices/keepalive", T, |p| p.updates >= 1)
        .await?;
    // The kernel makes the node first; udev only later writes what it knows.
    env.mknod("ttyUSB3", 188, 3)?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(k.plugin("smarter-devices/widget").is_none());
    let tmp = udev.join(".c188:3.tmp");
    std::fs::write(&tmp, "E:ID_SERIAL=Widget_123\nE:SUBSYSTEM=tty\n")?;
    std::fs::rename(&tmp, udev.join("c188:3"))?;
    k.wait_for("smarter-devices/widget", T, |p| healthy(p, "Widget_123"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_spec_files_follow_hotplug() -> R {
    if !can_mknod("cdi_spec_files_follow_hotplug") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    let cdi = env.tmp.path().join("cdi");
    env.write_config(&format!(
        "health_interval_secs = 0\ncdi_spec_dir = \"{}\"\n[[rules]]\nname = \"serial\"\npath = \"^ttyUSB[0-9]+$\"\nid = \"path\"\ncdi_kind = \"smarter.io/serial\"\n",
        cdi.display()
    ))?;
    env.mknod("ttyUSB0", 188, 0)?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;
    k.wait_for("smarter-devices/serial", T, |p| healthy(p, "ttyUSB0"))
        .await?;
    let spec = cdi.join("smarter-smarter.io_serial.json");
    let read = || std::fs::read_to_string(&spec).unwrap_or_default();
    assert!(read().contains("\"name\": \"ttyUSB0\""), "{}", read());
    let a = k.allocate("smarter-devices/serial", &["ttyUSB0"]).await?;
    assert_eq!(a.cdi_devices[0].name, "smarter.io/serial=ttyUSB0");
    // Hotplug updates the spec: a new device is added, a removed one dropped.
    env.mknod("ttyUSB1", 188, 1)?;
    k.wait_for("smarter-devices/serial", T, |p| healthy(p, "ttyUSB1"))
        .await?;
    assert!(read().contains("\"name\": \"ttyUSB1\""), "{}", read());
    std::fs::remove_file(env.dev.join("ttyUSB0"))?;
    k.wait_for("smarter-devices/serial", T, |p| unhealthy(p, "ttyUSB0"))
        .await?;
    assert!(!read().contains("\"name\": \"ttyUSB0\""), "{}", read());
    Ok(())
}
