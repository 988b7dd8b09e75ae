//! Hotplug through a real systemd-udevd: real kernel uevents from loop
//! devices (LOOP_CTL_ADD/REMOVE), the real binary on the real /dev and /sys,
//! and the kubelet double. Root only (skipped otherwise, as without
//! `systemd-udevd`: `apt-get install udev`). The tests take turns: each may
//! start and stop its own udevd.

mod support;

use std::time::Instant;

use support::udevd::{LoopDev, Udevd};
use support::{Env, FakeKubelet, HOTPLUG, R, T, healthy, unhealthy};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// udevd with `rules`, or print why the test skips.
fn udevd(test: &str, rules: &str) -> Option<Udevd> {
    if !cfg!(feature = "udev") {
        smarter_test_support::skip(format!("{test}: built without the udev feature"));
        return None;
    }
    if !std::path::Path::new("/dev/loop-control").exists() {
        smarter_test_support::skip(format!("{test}: no /dev/loop-control (loop driver)"));
        return None;
    }
    match Udevd::ensure(rules) {
        Ok(u) => Some(u),
        Err(why) => {
            smarter_test_support::skip(format!("{test}: {why}"));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udev_monitor_add_remove_readd_within_100ms() -> R {
    let _turn = SERIAL.lock().await;
    let Some(udevd) = udevd("udev_monitor_add_remove_readd_within_100ms", "") else {
        return Ok(());
    };
    let mut keep = LoopDev::free(240)?;
    keep.add()?;
    let mut hot = LoopDev::free(keep.index + 1)?;
    let mut env = Env::new("dm.toml")?;
    env.write_config(&format!(
        "health_interval_secs = 0\n[[rules]]\nname = \"dm-test-loop\"\npath = \"^({}|{})$\"\nid = \"path\"\n",
        keep.name(),
        hot.name()
    ))?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn_on(
        std::path::Path::new("/dev"),
        std::path::Path::new("/sys"),
        &[],
    )?;
    let pool = "smarter-devices/dm-test-loop";
    k.wait_for(pool, T, |p| healthy(p, &keep.name())).await?;
    let log = env.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("hotplug source chosen") && l.contains("source=udev")),
        "auto did not choose udev (udevd started here: {}):\n{log}",
        udevd.started_here()
    );

    let t0 = Instant::now();
    hot.add()?;
    k.wait_for(pool, T, |p| healthy(p, &hot.name())).await?;
    let add = t0.elapsed();
    let t0 = Instant::now();
    hot.remove()?;
    // LOOP_CTL_REMOVE itself blocks for tens of ms (del_gendisk).
    let in_ioctl = t0.elapsed();
    let p = k.wait_for(pool, T, |p| unhealthy(p, &hot.name())).await?;
    let remove = t0.elapsed();
    assert!(healthy(&p, &keep.name()));
    let t0 = Instant::now();
    hot.add()?;
    k.wait_for(pool, T, |p| healthy(p, &hot.name())).await?;
    let readd = t0.elapsed();
    println!(
        "udev hotplug latency (ioctl to ListAndWatch): add {add:?}, remove {remove:?} (of which {in_ioctl:?} inside the ioctl), re-add {readd:?}"
    );
    // The changes came through the monitor: its events are logged.
    let log = env.log_text();
    let node = format!("node=/dev/{}", hot.name());
    let events = log
        .lines()
        .filter(|l| l.contains("udev event") && l.contains(&node))
        .count();
    assert!(events >= 3, "expected udev events for {node}:\n{log}");
    let rescans: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("device tree changed"))
        .collect();
    println!("rescans: {rescans:#?}");
    for (what, d) in [("add", add), ("remove", remove), ("re-add", readd)] {
        assert!(d < HOTPLUG, "{what} took {d:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_only_udev_knows_is_matched() -> R {
    let _turn = SERIAL.lock().await;
    let mut tagged = LoopDev::free(248)?;
    let mut plain = LoopDev::free(tagged.index + 1)?;
    // A property only this udev rule sets: neither sysfs nor the kernel's
    // uevent has it.
    let rule = format!(
        "KERNEL==\"{}\", ENV{{SMARTER_DM_TEST}}=\"tagged-%k\"\n",
        tagged.name()
    );
    let Some(_udevd) = udevd("property_only_udev_knows_is_matched", &rule) else {
        return Ok(());
    };
    let mut env = Env::new("dm.toml")?;
    // An empty udev database: the property can only come with the event.
    let no_db = env.tmp.path().join("no-udev-db");
    std::fs::create_dir_all(&no_db)?;
    env.write_config(&format!(
        "health_interval_secs = 0\nhotplug = \"udev\"\nudev_data_dir = \"{}\"\n[[rules]]\nname = \"dm-test-tagged\"\npath = \"^({}|{})$\"\nudev = {{ SMARTER_DM_TEST = \"tagged-*\" }}\nid = \"path\"\n",
        no_db.display(),
        tagged.name(),
        plain.name()
    ))?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn_on(
        std::path::Path::new("/dev"),
        std::path::Path::new("/sys"),
        &[],
    )?;
    assert!(
        env.wait_log("hotplug source chosen", T),
        "{}",
        env.log_text()
    );
    plain.add()?;
    let t0 = Instant::now();
    tagged.add()?;
    let pool = "smarter-devices/dm-test-tagged";
    let p = k.wait_for(pool, T, |p| healthy(p, &tagged.name())).await?;
    println!(
        "udev-only property matched {:?} after the ioctl (includes registering the new resource)",
        t0.elapsed()
    );
    // The node without the property is not part of the pool.
    assert_eq!(
        p.devices,
        [(tagged.name(), "Healthy".to_string())],
        "{}",
        env.log_text()
    );
    tagged.remove()?;
    k.wait_for(pool, T, |p| unhealthy(p, &tagged.name()))
        .await?;
    Ok(())
}
