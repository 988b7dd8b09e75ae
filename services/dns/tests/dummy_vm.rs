//! The dummy interface for real, in a virtual machine.
//!
//! The CI machine's kernel is built without the dummy link type, so there
//! smarter-dns falls back to `lo` (tested in netns.rs). Here the real binary
//! runs as the only program of a small VM booted with qemu on Debian's
//! kernel (which has `dummy.ko`), and must: create `smarterdns0` as a dummy
//! interface over rtnetlink, put 169.254.0.2/32 on it, answer a pod name on
//! that address (busybox nslookup), and come back cleanly after a restart
//! with the interface already there.
//!
//! Needs root, x86_64, qemu-system-x86_64, cpio, busybox (static), and a
//! kernel in /boot with its dummy.ko (`linux-image-amd64`). qemu emulates
//! the CPU (TCG, about 15 s to boot here): this machine's /dev/kvm is nested
//! and hangs early in boot, and emulation behaves the same everywhere.
//! `SMARTER_VM_ACCEL=kvm` uses KVM where it works.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smarter_test_support::{have, is_root, skip};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A kernel in /boot and the dummy module built for it.
fn kernel_and_dummy() -> Option<(PathBuf, PathBuf)> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.into_iter().rev().find_map(|k| {
        let version = k
            .file_name()?
            .to_str()?
            .strip_prefix("vmlinuz-")?
            .to_string();
        let module = Path::new("/lib/modules")
            .join(version)
            .join("kernel/drivers/net/dummy.ko");
        module.exists().then_some((k, module))
    })
}

/// Shared libraries `bin` loads (ldd), the dynamic loader included.
fn libraries(bin: &Path) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let out = Command::new("ldd").arg(bin).output()?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => l.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn copy_into(root: &Path, src: &Path, dst: &str) -> Result<(), Box<dyn std::error::Error>> {
    let to = root.join(dst.trim_start_matches('/'));
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(src, &to)?;
    Ok(())
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /run
mkdir -p /tmp
ip link set lo up
insmod /dummy.ko && echo "MARK insmod ok"
start() {
    /smarter-dns --config /etc/smarter-dns.toml --log-level info >>/tmp/dns.log 2>&1 &
    PID=$!
    ok=no
    for i in $(seq 100); do
        if nslookup camera 169.254.0.2 >/tmp/ns 2>&1 && grep -q 172.39.0.5 /tmp/ns; then ok=yes; break; fi
        sleep 0.1
    done
    echo "MARK answer-$1 $ok"
}
start first
echo "MARK kind $(cat /sys/class/net/smarterdns0/uevent 2>/dev/null | tr '\n' ' ')"
echo "MARK virtual $(ls -d /sys/devices/virtual/net/smarterdns0 2>/dev/null)"
ip -o addr show dev smarterdns0 | sed 's/^/MARK addr /'
ip -o addr show dev lo | grep 169.254 | sed 's/^/MARK lo-has /'
kill -TERM $PID; wait $PID; echo "MARK exit-first $?"
start second
kill -TERM $PID; wait $PID; echo "MARK exit-second $?"
sed 's/^/MARK log /' /tmp/dns.log
echo "MARK done"
poweroff -f
"#;

const CONFIG: &str = r#"records_dir = "/records"
resolv_conf = "/etc/resolv.conf"
listen = ["169.254.0.2"]
dummy_interface = "smarterdns0"
"#;

const RECORD: &str = r#"{"version":1,"container_id":"c1","ifname":"eth0","network":"smartnet","pod_name":"camera","namespace":"iot","ips":["172.39.0.5"]}"#;

/// Build the initramfs: busybox, the binary with its libraries, dummy.ko,
/// a config, one record and the init script.
fn initramfs(dir: &Path, dummy: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let root = dir.join("root");
    for d in ["bin", "proc", "sys", "run", "tmp", "etc", "records", "dev"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no busybox")?;
    copy_into(&root, Path::new(busybox), "/bin/busybox")?;
    let bin = Path::new(env!("CARGO_BIN_EXE_smarter-dns"));
    copy_into(&root, bin, "/smarter-dns")?;
    for lib in libraries(bin)? {
        copy_into(&root, &lib, &lib.to_string_lossy())?;
    }
    copy_into(&root, dummy, "/dummy.ko")?;
    std::fs::write(root.join("etc/smarter-dns.toml"), CONFIG)?;
    std::fs::write(root.join("etc/resolv.conf"), "")?;
    std::fs::write(root.join("records/c1_eth0.json"), RECORD)?;
    let init = root.join("init");
    std::fs::write(&init, INIT)?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let image = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .current_dir(&root)
        .args([
            "-c",
            &format!(
                "find . | cpio --quiet -o -H newc > '{}'",
                image.to_string_lossy()
            ),
        ])
        .status()?;
    if !status.success() {
        return Err("cpio failed".into());
    }
    Ok(image)
}

/// Boot the VM and return its console output.
fn boot(kernel: &Path, image: &Path, accel: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", accel, "-m", "512", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(image)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    if let Err(e) = smarter_test_support::wait_exit(&mut child, Duration::from_secs(240)) {
        let _ = child.kill();
        let _ = child.wait();
        let out = reader.join().unwrap_or_default();
        return Err(format!("the VM did not finish: {e}; console:\n{out}").into());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let out = reader.join().map_err(|_| "console reader panicked")?;
    if !out.contains("MARK") {
        return Err(format!("VM printed no marks; qemu said: {err}\nconsole:\n{out}").into());
    }
    Ok(out)
}

#[test]
fn dummy_interface_carries_the_cluster_dns_address_in_a_vm() -> TestResult {
    let root = is_root();
    let kernel = kernel_and_dummy();
    let tools = ["qemu-system-x86_64", "cpio", "ldd"].into_iter().all(have);
    let (Some((kernel, dummy)), true, true, true) =
        (kernel, root, tools, cfg!(target_arch = "x86_64"))
    else {
        skip(
            "needs root, x86_64, qemu-system-x86_64, cpio and a /boot kernel with dummy.ko \
             (apt-get install qemu-system-x86 cpio linux-image-amd64)",
        );
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let image = initramfs(dir.path(), &dummy)?;
    let accel = std::env::var("SMARTER_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
    let accel = accel.as_str();
    let started = Instant::now();
    let out = boot(&kernel, &image, accel)?;
    eprintln!("VM ({accel}) ran in {:?}", started.elapsed());
    let marks: Vec<&str> = out
        .lines()
        // The first line may follow the BIOS's terminal escapes.
        .filter_map(|l| l.trim_end_matches('\r').split_once("MARK ").map(|(_, m)| m))
        .collect();
    let mut report = format!("console:\n{out}\nmarks:\n");
    for m in &marks {
        let _ = writeln!(report, "  {m}");
    }
    let has = |p: &str| marks.iter().any(|m| m.starts_with(p));
    assert!(has("insmod ok"), "dummy.ko did not load:\n{report}");
    assert!(
        has("answer-first yes"),
        "no answer on 169.254.0.2:\n{report}"
    );
    assert!(
        marks
            .iter()
            .any(|m| m.starts_with("kind ") && m.contains("INTERFACE=smarterdns0")),
        "smarterdns0 missing:\n{report}"
    );
    assert!(
        has("virtual /sys/devices/virtual/net/smarterdns0"),
        "smarterdns0 is not a virtual (dummy) device:\n{report}"
    );
    assert!(
        marks
            .iter()
            .any(|m| m.starts_with("addr ") && m.contains("169.254.0.2/32")),
        "169.254.0.2/32 not on smarterdns0:\n{report}"
    );
    assert!(
        !has("lo-has"),
        "the address went on lo, not the dummy:\n{report}"
    );
    assert!(
        !marks
            .iter()
            .any(|m| m.contains("putting the cluster DNS address on lo")),
        "fell back to lo:\n{report}"
    );
    assert!(
        has("exit-first 0"),
        "first run did not stop cleanly:\n{report}"
    );
    assert!(
        has("answer-second yes"),
        "no answer after a restart with the interface present:\n{report}"
    );
    assert!(
        has("exit-second 0"),
        "second run did not stop cleanly:\n{report}"
    );
    assert!(has("done"), "init did not finish:\n{report}");
    Ok(())
}
