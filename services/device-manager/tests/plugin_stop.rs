//! Stopping a plugin server (resource removed by a reload, or our socket
//! deleted) ends the kubelet's ListAndWatch stream on it and removes or
//! replaces the socket; the other resources' streams stay open. Root only
//! (mknod).

mod support;

use std::time::Duration;

use support::{Env, FakeKubelet, R, T, can_mknod};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_resource_ends_its_stream_others_stay() -> R {
    if !can_mknod("removed_resource_ends_its_stream_others_stay") {
        return Ok(());
    }
    let mut env = Env::new("dm.toml")?;
    env.write_config(
        "watch_config = false\n[[rules]]\npath = \"^ttyUSB[0-9]+$\"\n\n[[rules]]\npath = \"^video[0-9]+$\"\n",
    )?;
    env.mknod("ttyUSB0", 188, 0)?;
    env.mknod("video0", 81, 0)?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&[])?;
    let tty = "smarter-devices/ttyUSB0";
    let video = "smarter-devices/video0";
    for r in [tty, video] {
        k.wait_for(r, T, |p| p.updates >= 1).await?;
    }
    assert_eq!(k.plugin(video).map(|p| p.streams_ended), Some(0));

    // Drop the video rule: its server stops and closes the connection.
    env.write_config("watch_config = false\n[[rules]]\npath = \"^ttyUSB[0-9]+$\"\n")?;
    env.signal(libc::SIGHUP);
    k.wait_for(video, T, |p| p.streams_ended >= 1).await?;
    smarter_test_support::wait_until_async(
        "smarter-video0.sock to go",
        T,
        Duration::from_millis(20),
        || async { !env.plugins.join("smarter-video0.sock").exists() },
    )
    .await?;

    // The other resource's stream is untouched and still answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(k.plugin(tty).map(|p| p.streams_ended), Some(0));
    let a = k.allocate(tty, &["0"]).await?;
    assert_eq!(a.devices.len(), 1);

    // Our socket deleted: the old server closes its connection (its stream
    // ends) and a new one serves and registers; one stream ended, one open.
    let regs = k.plugin(tty).map_or(0, |p| p.registrations);
    std::fs::remove_file(env.plugins.join("smarter-ttyUSB0.sock"))?;
    let p = k
        .wait_for(tty, T, |p| {
            p.registrations > regs && p.updates >= 2 && p.streams_ended >= 1
        })
        .await?;
    assert_eq!(p.streams_ended, 1, "{p:?}");
    let a = k.allocate(tty, &["0"]).await?;
    assert_eq!(a.devices.len(), 1);
    Ok(())
}
