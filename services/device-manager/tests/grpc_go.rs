//! The real binary against a kubelet double on grpc-go, the gRPC stack of
//! real kubelets (`tests/grpc-go/kubelet.go`), dialing as kubelets before
//! 1.26 did: with the plugin's socket path as the HTTP/2 `:authority`.
//! Real device nodes by mknod (root; skipped otherwise), and Go with
//! Debian's grpc-go sources (skipped when missing, unless `CI` or
//! `SMARTER_REQUIRE_PEERS` is set).

mod support;

use support::gokubelet::{Event, GoKubelet};
use support::{Env, R, T, can_mknod};

use smarter_device_manager::proto::v1beta1 as pb;

/// gRPC status FAILED_PRECONDITION.
const FAILED_PRECONDITION: i32 = 9;

/// The Go kubelet on `env`'s plugin dir, or `None` (printed SKIP).
fn kubelet(test: &str, env: &Env) -> Result<Option<GoKubelet>, String> {
    if !can_mknod(test) {
        return Ok(None);
    }
    let Some(bin) = support::gokubelet::binary(test)? else {
        return Ok(None);
    };
    let log = env.tmp.path().join("gokubelet.log");
    GoKubelet::start(&bin, &env.plugins, &log).map(Some)
}

/// (ID, health) of each device in a list.
fn devices(l: &pb::ListAndWatchResponse) -> Vec<(&str, &str)> {
    l.devices
        .iter()
        .map(|d| (d.id.as_str(), d.health.as_str()))
        .collect()
}

/// Wait for `resource` to register (at `from` or later) with `endpoint`,
/// answer GetDevicePluginOptions with preferred allocation on, and list.
fn registered(k: &GoKubelet, from: usize, resource: &str, endpoint: &str) -> R {
    let is = |kind: &'static str| move |e: &Event| e.kind == kind && e.resource == resource;
    let reg = k.wait_event(from, T, is("register"))?;
    assert_eq!(reg.rest, endpoint);
    // Fail at once, with its message, when the call fails.
    let failed = |e: &Event| {
        e.kind == "error"
            && e.rest.starts_with(resource)
            && e.rest[resource.len()..].starts_with(' ')
    };
    let e = k.wait_event(from, T, |e| is("options")(e) || failed(e))?;
    if e.kind == "error" {
        return Err(format!("{} {}", e.resource, e.rest).into());
    }
    let opts: pb::DevicePluginOptions = e.decode()?;
    assert!(opts.get_preferred_allocation_available, "{opts:?}");
    assert!(!opts.pre_start_required);
    k.wait_event(from, T, is("list"))?;
    Ok(())
}

/// The one container response of an Allocate, sorted by container path.
fn specs(a: &pb::AllocateResponse) -> Vec<(String, String, String)> {
    assert_eq!(a.container_responses.len(), 1, "{a:?}");
    let mut v: Vec<_> = a.container_responses[0]
        .devices
        .iter()
        .map(|d| {
            (
                d.container_path.clone(),
                d.host_path.clone(),
                d.permissions.clone(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn grpc_go_kubelet_conf_yaml_registers_lists_allocates_restarts() -> R {
    let test = "grpc_go_kubelet_conf_yaml_registers_lists_allocates_restarts";
    let mut env = Env::new("conf.yaml")?;
    let Some(k) = kubelet(test, &env)? else {
        return Ok(());
    };
    env.write_config(
        "- devicematch: ^ttyUSB[0-9]*$\n  nummaxdevices: 1\n- devicematch: ^snd$\n  nummaxdevices: 4\n- devicematch: ^net/tun$\n  nummaxdevices: 1\n",
    )?;
    env.mknod("ttyUSB0", 188, 0)?;
    env.mknod("snd/controlC0", 116, 0)?;
    env.mknod("snd/pcmC0D0p", 116, 16)?;
    env.mknod("net/tun", 10, 200)?;
    env.spawn(&[])?;

    let (tty, snd, tun) = (
        "smarter-devices/ttyUSB0",
        "smarter-devices/snd",
        "smarter-devices/net_tun",
    );
    registered(&k, 0, tty, "smarter-ttyUSB0.sock")?;
    registered(&k, 0, snd, "smarter-snd.sock")?;
    registered(&k, 0, tun, "smarter-net_tun.sock")?;
    let l = k.wait_list(snd, 0, T, |l| l.devices.len() == 4)?;
    assert_eq!(
        devices(&l),
        [
            ("0", "Healthy"),
            ("1", "Healthy"),
            ("2", "Healthy"),
            ("3", "Healthy")
        ]
    );
    let l = k.wait_list(tty, 0, T, |l| !l.devices.is_empty())?;
    assert_eq!(devices(&l), [("0", "Healthy")]);
    assert!(
        !k.events().iter().any(|e| e.kind == "error"),
        "{:?}",
        k.events()
    );

    // Allocate: the DeviceSpecs of the node(s) behind the ID.
    let dev = |p: &str| env.dev.join(p).to_string_lossy().into_owned();
    let a = k.allocate(tty, &["0"])?.map_err(|e| format!("{e:?}"))?;
    assert_eq!(
        specs(&a),
        [("/dev/ttyUSB0".into(), dev("ttyUSB0"), "rw".into())]
    );
    let a = k.allocate(snd, &["3"])?.map_err(|e| format!("{e:?}"))?;
    assert_eq!(
        specs(&a),
        [
            (
                "/dev/snd/controlC0".into(),
                dev("snd/controlC0"),
                "rw".into()
            ),
            ("/dev/snd/pcmC0D0p".into(), dev("snd/pcmC0D0p"), "rw".into()),
        ]
    );
    // An ID never advertised: a gRPC error, not a broken connection.
    let e = k.allocate(snd, &["99"])?;
    let (code, msg) = e.err().ok_or("allocate of ID 99 succeeded")?;
    assert_eq!(code, FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("unknown device ID"), "{msg}");

    // GetPreferredAllocation: `size` of the available IDs.
    let p = k
        .preferred(snd, &["1", "2", "3"], 2)?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(p.container_responses.len(), 1, "{p:?}");
    let ids = &p.container_responses[0].device_i_ds;
    assert_eq!(ids.len(), 2, "{p:?}");
    assert!(ids.iter().all(|i| ["1", "2", "3"].contains(&i.as_str())));

    // Hotplug: the node goes, a new list says Unhealthy; back, Healthy.
    let m = k.mark();
    std::fs::remove_file(env.dev.join("ttyUSB0"))?;
    let l = k.wait_list(tty, m, T, |l| !l.devices.is_empty())?;
    assert_eq!(devices(&l), [("0", "Unhealthy")]);
    let m = k.mark();
    env.mknod("ttyUSB0", 188, 0)?;
    let l = k.wait_list(tty, m, T, |l| !l.devices.is_empty())?;
    assert_eq!(devices(&l), [("0", "Healthy")]);
    // A new node of a per-node rule: a new resource registers.
    env.mknod("ttyUSB1", 188, 1)?;
    registered(&k, m, "smarter-devices/ttyUSB1", "smarter-ttyUSB1.sock")?;

    // Kubelet restart: every plugin registers again on the new kubelet.sock
    // and serves a new ListAndWatch on a new connection.
    let m = k.restart()?;
    for (r, ep) in [
        (tty, "smarter-ttyUSB0.sock"),
        (snd, "smarter-snd.sock"),
        (tun, "smarter-net_tun.sock"),
        ("smarter-devices/ttyUSB1", "smarter-ttyUSB1.sock"),
    ] {
        registered(&k, m, r, ep)?;
        assert!(env.plugins.join(ep).exists(), "{ep}");
    }
    k.wait_list(snd, m, T, |l| l.devices.len() == 4)?;
    let a = k.allocate(tty, &["0"])?.map_err(|e| format!("{e:?}"))?;
    assert_eq!(specs(&a).len(), 1);
    Ok(())
}

#[test]
fn grpc_go_kubelet_pooled_hotplug_and_allocate() -> R {
    let test = "grpc_go_kubelet_pooled_hotplug_and_allocate";
    let mut env = Env::new("dm.toml")?;
    let Some(k) = kubelet(test, &env)? else {
        return Ok(());
    };
    // inotify pinned: nodes made by mknod are never announced by a udevd.
    env.write_config(
        "health_interval_secs = 0\nhotplug = \"inotify\"\n[[rules]]\nname = \"usb-serial\"\npath = \"^ttyUSB[0-9]+$\"\nid = \"path\"\ncontainer_path = \"/dev/ttyUSB0\"\n",
    )?;
    env.mknod("ttyUSB0", 188, 0)?;
    env.spawn(&[])?;
    let pool = "smarter-devices/usb-serial";
    registered(&k, 0, pool, "smarter-usb-serial.sock")?;
    k.wait_list(pool, 0, T, |l| devices(l) == [("ttyUSB0", "Healthy")])?;

    // Added: a new list with it Healthy; removed: Unhealthy, still listed;
    // back: Healthy.
    let m = k.mark();
    env.mknod("ttyUSB1", 188, 1)?;
    k.wait_list(pool, m, T, |l| {
        devices(l) == [("ttyUSB0", "Healthy"), ("ttyUSB1", "Healthy")]
    })?;
    let m = k.mark();
    std::fs::remove_file(env.dev.join("ttyUSB1"))?;
    k.wait_list(pool, m, T, |l| {
        devices(l) == [("ttyUSB0", "Healthy"), ("ttyUSB1", "Unhealthy")]
    })?;
    let e = k.allocate(pool, &["ttyUSB1"])?;
    let (code, msg) = e.err().ok_or("allocate of an absent device succeeded")?;
    assert_eq!(code, FAILED_PRECONDITION, "{msg}");
    let m = k.mark();
    env.mknod("ttyUSB1", 188, 1)?;
    k.wait_list(pool, m, T, |l| {
        devices(l) == [("ttyUSB0", "Healthy"), ("ttyUSB1", "Healthy")]
    })?;

    let a = k
        .allocate(pool, &["ttyUSB1"])?
        .map_err(|e| format!("{e:?}"))?;
    let host = env.dev.join("ttyUSB1").to_string_lossy().into_owned();
    assert_eq!(specs(&a), [("/dev/ttyUSB0".into(), host, "rw".into())]);
    let p = k
        .preferred(pool, &["ttyUSB0", "ttyUSB1"], 1)?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(p.container_responses.len(), 1, "{p:?}");
    assert_eq!(p.container_responses[0].device_i_ds.len(), 1, "{p:?}");
    Ok(())
}
