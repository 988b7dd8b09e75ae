//! How `hotplug = "auto"` picks its source, with real mknod'd nodes in a
//! temporary device root (root only; skipped otherwise): no udev daemon →
//! inotify; a live udev control socket → the udev monitor, and a node udev
//! never announces (made by hand) still shows up through the inotify
//! fallback within the latency target.

mod support;

use support::{Env, FakeKubelet, R, T, can_mknod, healthy, hotplug_cycle};

fn chosen(env: &Env) -> String {
    env.log_text()
        .lines()
        .find(|l| l.contains("hotplug source chosen"))
        .unwrap_or_default()
        .to_string()
}

/// Start with `ttyUSB0`, then add, remove and re-add `ttyUSB1` by mknod;
/// each must reach ListAndWatch within [`HOTPLUG`].
async fn add_remove_readd(env: &mut Env, run_dir: &std::path::Path) -> R {
    env.write_config(&format!(
        "health_interval_secs = 0\nudev_data_dir = \"{}/data\"\n[[rules]]\nname = \"usb-serial\"\npath = \"^ttyUSB[0-9]+$\"\nid = \"path\"\n",
        run_dir.display()
    ))?;
    env.mknod("ttyUSB0", 188, 0)?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;
    let pool = "smarter-devices/usb-serial";
    k.wait_for(pool, T, |p| healthy(p, "ttyUSB0")).await?;
    hotplug_cycle(env, &k, pool, &chosen(env)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_udevd_uses_inotify() -> R {
    if !can_mknod("auto_without_udevd_uses_inotify") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    let run = env.tmp.path().join("run-udev");
    std::fs::create_dir_all(&run)?;
    // A socket file left by a udevd that stopped: refuses, so no udevd.
    drop(std::os::unix::net::UnixListener::bind(run.join("control"))?);
    add_remove_readd(&mut env, &run).await?;
    let line = chosen(&env);
    assert!(line.contains("source=inotify"), "{line}");
    if cfg!(feature = "udev") {
        assert!(line.contains("refuses connections"), "{line}");
    } else {
        assert!(line.contains("without the udev feature"), "{line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_with_udevd_still_sees_nodes_udev_does_not_announce() -> R {
    if !can_mknod("auto_with_udevd_still_sees_nodes_udev_does_not_announce") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    let run = env.tmp.path().join("run-udev");
    std::fs::create_dir_all(&run)?;
    // Stands in for udevd's control socket: auto only checks it is live.
    let _control = std::os::unix::net::UnixListener::bind(run.join("control"))?;
    add_remove_readd(&mut env, &run).await?;
    let line = chosen(&env);
    let log = env.log_text();
    if cfg!(feature = "udev") {
        assert!(line.contains("source=udev"), "{line}");
        // udev announced nothing here: the inotify fallback rescanned.
        assert!(log.contains("InotifyUnannounced"), "{log}");
    } else {
        assert!(line.contains("source=inotify"), "{line}");
        assert!(line.contains("without the udev feature"), "{line}");
    }
    Ok(())
}
