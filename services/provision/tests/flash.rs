//! `smarter-flash` against real loop devices (root): it writes and verifies
//! an image, puts the provisioning file on the FAT boot partition (read back
//! with mtools: this kernel has no FAT driver and does not scan partitions
//! on loop devices), and each refusal leaves the target byte-for-byte as it
//! was (sha256 before and after).
//!
//! Peers: losetup, mount (util-linux), sfdisk (fdisk), mkfs.vfat
//! (dosfstools), mkfs.ext4 (e2fsprogs), mtools, bmaptool (bmap-tools). When
//! one is missing, or we are not root, the tests skip with the reason, and
//! fail instead when CI or SMARTER_REQUIRE_PEERS is set.

// Helpers outside #[test] functions may panic too: this file is test code.
#![cfg(test)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_smarter-flash");
const PEERS: &[&str] = &[
    "sha256sum",
    "losetup",
    "mount",
    "umount",
    "sfdisk",
    "mkfs.vfat",
    "mkfs.ext4",
    "mcopy",
    "mtype",
    "mdir",
    "bmaptool",
];
const MIB: u64 = 1 << 20;

/// Loop devices are few and shared: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn can_run() -> bool {
    let missing: Vec<&str> = PEERS
        .iter()
        .copied()
        .filter(|p| !smarter_test_support::have(p))
        .collect();
    let reason = if !missing.is_empty() {
        format!("missing peers {missing:?} (cross/setup-debian.sh installs them)")
    } else if !smarter_test_support::is_root() {
        "needs root (loop devices)".to_string()
    } else if !Path::new("/dev/loop-control").exists() {
        "no /dev/loop-control".to_string()
    } else {
        return true;
    };
    smarter_test_support::skip(format!("flasher tests cannot run: {reason}"));
    false
}

/// One test's hold on the loop devices and its fixture; `None` when the
/// flasher tests cannot run here (`can_run` skipped, or failed under CI).
fn start() -> Option<(std::sync::MutexGuard<'static, ()>, Fixture)> {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run() {
        return None;
    }
    Some((serial, Fixture::new()))
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device, detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path, extra: &[&str]) -> Self {
        let dev = sh(Command::new("losetup")
            .args(["-f", "--show"])
            .args(extra)
            .arg(file));
        Self(dev.trim().to_string())
    }
    fn path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A mount, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

struct Fixture {
    dir: tempfile::TempDir,
}

const GPT_BOOT: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
const GPT_LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

impl Fixture {
    /// A 48 MiB gateway image in the product's layout: boot (FAT, 16 MiB),
    /// rootfs-a, rootfs-b (ext4, 8 MiB) and data (ext4, the rest), plus its bmap.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let f = Self { dir };
        let img = f.path("gateway.img");
        sh(Command::new("truncate").args(["-s", "48M"]).arg(&img));
        let script = format!(
            "label: gpt\nsize=16MiB, type={GPT_BOOT}, name=\"boot\"\nsize=8MiB, type={GPT_LINUX}, name=\"rootfs-a\"\nsize=8MiB, type={GPT_LINUX}, name=\"rootfs-b\"\ntype={GPT_LINUX}, name=\"data\"\n"
        );
        let mut child = Command::new("sfdisk")
            .arg("--quiet")
            .arg(&img)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sfdisk: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(script.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(child.wait().is_ok_and(|s| s.success()), "sfdisk failed");

        let boot = f.path("boot.part");
        sh(Command::new("mkfs.vfat")
            .args(["-n", "BOOT", "-C"])
            .arg(&boot)
            .arg("16384"));
        std::fs::write(f.path("config.txt"), "# boot files\n").unwrap_or_else(|e| panic!("{e}"));
        sh(Command::new("mcopy")
            .arg("-i")
            .arg(&boot)
            .arg(f.path("config.txt"))
            .arg("::config.txt"));
        std::fs::create_dir_all(f.path("root/etc")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(f.path("root/etc/os-release"), "ID=smarter-test\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let root = f.path("rootfs.part");
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "rootfs-a", "-d"])
            .arg(f.path("root"))
            .arg(&root)
            .arg("8M"));
        let (data_off, data_size) = f.partition(&img, 4);
        let data = f.path("data.part");
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "data"])
            .arg(&data)
            .arg(format!("{}k", data_size / 1024)));
        for (part, off) in [(&boot, MIB), (&root, 17 * MIB), (&data, data_off)] {
            sh(Command::new("dd")
                .arg(format!("if={}", part.display()))
                .arg(format!("of={}", img.display()))
                .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
                .arg(format!("seek={}", off / MIB)));
        }
        sh(Command::new("bmaptool")
            .args(["create", "-o"])
            .arg(f.path("gateway.img.bmap"))
            .arg(&img));
        std::fs::write(
            f.path("smarter-provision.toml"),
            "version = 1\nserver = \"https://k3s.example.com:6443\"\ntoken = \"K10abc::server:s3cret\"\nnode_name = \"gw-0042\"\n\n[node_labels]\n\"smarter.nodemodel\" = \"raspberrypi4\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            f.path("bad-provision.toml"),
            "version = 1\nserver = \"https://k3s.example.com:6443\"\ntoken = \"K10abc::server:s3cret\"\nnode_name = \"GW_42\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        f
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// Byte offset and size of partition `n` of a disk or image.
    fn partition(&self, disk: &Path, n: usize) -> (u64, u64) {
        let json = sh(Command::new("sfdisk").arg("--json").arg(disk));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        let p = &v["partitiontable"]["partitions"][n - 1];
        let start = p["start"]
            .as_u64()
            .unwrap_or_else(|| panic!("no start: {json}"));
        let size = p["size"]
            .as_u64()
            .unwrap_or_else(|| panic!("no size: {json}"));
        (start * 512, size * 512)
    }
    /// A sparse target file of `mib` MiB on a loop device.
    fn target(&self, name: &str, mib: u64) -> (PathBuf, Loop) {
        let file = self.path(name);
        sh(Command::new("truncate")
            .arg("-s")
            .arg(format!("{mib}M"))
            .arg(&file));
        let lo = Loop::new(&file, &[]);
        (file, lo)
    }
    fn flash(&self, device: &Path, extra: &[&str]) -> Output {
        let out = Command::new(BIN)
            .arg("--image")
            .arg(self.path("gateway.img"))
            .arg("--device")
            .arg(device)
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("{BIN}: {e}"));
        eprintln!(
            "smarter-flash {extra:?}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// sha256 of a whole file or device, by coreutils' sha256sum (this test
/// binary is built without optimisation, far slower at hashing).
fn hash(p: &Path) -> String {
    let out = sh(Command::new("sha256sum").arg(p));
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Run a refusal: exit 2, the expected words, and not one byte changed.
fn assert_refused(f: &Fixture, device: &Path, extra: &[&str], expected: &[&str]) {
    let before = hash(device);
    let out = f.flash(device, extra);
    let after = hash(device);
    assert_eq!(out.status.code(), Some(2), "expected a refusal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to flash, nothing was written"),
        "{stderr}"
    );
    for e in expected {
        assert!(stderr.contains(e), "missing {e:?} in: {stderr}");
    }
    assert_eq!(
        before, after,
        "the target changed although the flasher refused"
    );
}

#[test]
fn writes_verifies_and_provisions_a_loop_device() {
    let Some((_serial, f)) = start() else {
        return;
    };
    let (_file, lo) = f.target("sd.img", 64);
    let prov = f.path("smarter-provision.toml");
    let out = f.flash(lo.path(), &["--provision", &prov.display().to_string()]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(stdout.contains("provisioning file in place"), "{stdout}");

    // Same table on the card as in the image.
    let (boot_off, _) = f.partition(lo.path(), 1);
    assert_eq!(boot_off, MIB);
    assert_eq!(
        f.partition(lo.path(), 4),
        f.partition(&f.path("gateway.img"), 4)
    );
    // Every partition's bytes equal the image's (the boot partition differs
    // only by the file we added, so compare the others).
    for n in 2..=4 {
        let (off, size) = f.partition(lo.path(), n);
        let read = |p: &Path| {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = std::fs::File::open(p).unwrap_or_else(|e| panic!("{e}"));
            file.seek(SeekFrom::Start(off))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
            file.read_exact(&mut buf).unwrap_or_else(|e| panic!("{e}"));
            buf
        };
        assert!(
            read(lo.path()) == read(&f.path("gateway.img")),
            "partition {n} differs"
        );
    }
    // The provisioning file is on the FAT boot partition, byte for byte,
    // next to what the image had there.
    let spec = format!("{}@@{boot_off}", lo.0);
    let back = sh(Command::new("mtype")
        .args(["-i", &spec, "::smarter-provision.toml"])
        .env("MTOOLS_SKIP_CHECK", "1"));
    assert_eq!(back.as_bytes(), std::fs::read(&prov).unwrap_or_default());
    let listing = sh(Command::new("mdir")
        .args(["-b", "-i", &spec, "::"])
        .env("MTOOLS_SKIP_CHECK", "1"));
    assert!(listing.to_lowercase().contains("config.txt"), "{listing}");
    // And the gateway's own parser accepts what landed there.
    assert!(smarter_provision::file::parse(Path::new("card"), &back).is_ok());
}

#[test]
fn refuses_an_invalid_provisioning_file_without_writing() {
    let Some((_serial, f)) = start() else {
        return;
    };
    let (_file, lo) = f.target("sd.img", 64);
    let bad = f.path("bad-provision.toml");
    assert_refused(
        &f,
        lo.path(),
        &["--provision", &bad.display().to_string()],
        &[
            "provisioning file is not valid",
            "field `node_name`: invalid value \"GW_42\"",
        ],
    );
}

#[test]
fn refuses_a_device_smaller_than_the_image_without_writing() {
    let Some((_serial, f)) = start() else {
        return;
    };
    let (_file, lo) = f.target("small.img", 32);
    assert_refused(
        &f,
        lo.path(),
        &[],
        &[&format!(
            "{} is smaller than the image: 33554432 bytes (32.0 MiB) < 50331648 bytes (48.0 MiB)",
            lo.0
        )],
    );
}

#[test]
fn refuses_a_device_with_a_mounted_partition_without_writing() {
    let Some((_serial, f)) = start() else {
        return;
    };
    let (file, lo) = f.target("sd.img", 64);
    // An earlier card: the image is already on it.
    sh(Command::new("dd")
        .arg(format!("if={}", f.path("gateway.img").display()))
        .arg(format!("of={}", lo.0))
        .args(["bs=1M", "conv=notrunc,fsync", "status=none"]));
    let (off, size) = f.partition(lo.path(), 4);
    let range = [
        "--offset".to_string(),
        off.to_string(),
        "--sizelimit".to_string(),
        size.to_string(),
    ];
    let range: Vec<&str> = range.iter().map(String::as_str).collect();

    // The data partition through a loop device stacked on the target, mounted
    // read-only so that the kernel itself (ext4's journal, lazy inode table
    // init) does not write to the card while the test hashes it.
    let part = Loop::new(lo.path(), &range);
    let mnt = f.path("mnt");
    std::fs::create_dir(&mnt).unwrap_or_else(|e| panic!("{e}"));
    sh(Command::new("mount")
        .args(["-t", "ext4", "-o", "ro"])
        .arg(&part.0)
        .arg(&mnt));
    let mounted = Mounted(mnt.clone());
    assert_refused(
        &f,
        lo.path(),
        &[],
        &[&format!(
            "{} is in use by {} (backed by {}), mounted at {}",
            lo.0,
            part.0,
            lo.0,
            mnt.display()
        )],
    );
    drop(mounted);
    drop(part);

    // The same partition through a loop device on the card's backing file.
    let part = Loop::new(&file, &range);
    sh(Command::new("mount")
        .args(["-t", "ext4", "-o", "ro"])
        .arg(&part.0)
        .arg(&mnt));
    let mounted = Mounted(mnt.clone());
    assert_refused(
        &f,
        lo.path(),
        &[],
        &[&format!(
            "backed by the same file, {}), mounted at {}",
            file.display(),
            mnt.display()
        )],
    );
    drop(mounted);

    // The loop device mounted directly (as a whole-disk filesystem would be).
    let whole = f.path("whole.img");
    sh(Command::new("truncate").args(["-s", "64M"]).arg(&whole));
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&whole));
    let wl = Loop::new(&whole, &[]);
    sh(Command::new("mount")
        .args(["-t", "ext4", "-o", "ro"])
        .arg(&wl.0)
        .arg(&mnt));
    let mounted = Mounted(mnt.clone());
    assert_refused(
        &f,
        wl.path(),
        &[],
        &[&format!(
            "{} is mounted ({} at {}); unmount it first",
            wl.0,
            wl.0,
            mnt.display()
        )],
    );
    drop(mounted);
}

#[test]
fn refuses_the_disk_the_host_runs_from() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run() {
        return;
    }
    // A device node for the disk holding `/` (this may be a container whose
    // /dev lacks it): made with mknod in a temp dir.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(root) = smarter_provision::flash::device::parse_mountinfo(&mountinfo)
        .into_iter()
        .rev()
        .find(|m| m.target == "/")
    else {
        panic!("no / in mountinfo");
    };
    let sys = PathBuf::from(format!("/sys/dev/block/{}", root.dev));
    if !sys.exists() {
        eprintln!(
            "SKIP: / is not on a block device here ({}, {}); the unit tests cover the rule",
            root.dev, root.source
        );
        return;
    }
    // The whole disk: the partition's parent when / is on a partition.
    let real = std::fs::canonicalize(&sys).unwrap_or_else(|e| panic!("{e}"));
    let disk_dir = if real.join("partition").exists() {
        real.parent().map(Path::to_path_buf).unwrap_or(real)
    } else {
        real
    };
    let dev = std::fs::read_to_string(disk_dir.join("dev")).unwrap_or_default();
    let f = Fixture::new();
    let node = f.path("hostdisk");
    let (major, minor) = dev
        .trim()
        .split_once(':')
        .unwrap_or_else(|| panic!("bad dev {dev}"));
    sh(Command::new("mknod").arg(&node).args(["b", major, minor]));
    // Hashing the whole host disk is not practical: the refusal happens
    // before the device is opened for writing, and bmaptool never runs.
    let out = f.flash(&node, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{} is the disk this computer runs from (/",
            node.display()
        )),
        "{stderr}"
    );
}

#[test]
fn refuses_non_fat_boot_partition_and_non_devices_without_writing() {
    let Some((_serial, f)) = start() else {
        return;
    };
    let (file, lo) = f.target("sd.img", 64);
    let prov = f.path("smarter-provision.toml").display().to_string();
    assert_refused(
        &f,
        lo.path(),
        &["--provision", &prov, "--boot-partition", "2"],
        &["image partition 2 is not a FAT filesystem"],
    );
    // A regular file is not a card.
    let before = hash(&file);
    let out = f.flash(&file, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a block device (a regular file)")
    );
    assert_eq!(before, hash(&file));
    // No bmap and no --no-bmap: refused with the way out.
    let bmap = f.path("gateway.img.bmap");
    std::fs::rename(&bmap, f.path("moved.bmap")).unwrap_or_else(|e| panic!("{e}"));
    assert_refused(&f, lo.path(), &[], &["no bmap for", "--no-bmap"]);
    // --no-bmap copies every byte and still verifies.
    let out = f.flash(lo.path(), &["--no-bmap", "--provision", &prov]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified 50331648 bytes"));
}

#[test]
fn image_only_puts_the_file_into_an_image_for_uuu_or_tegraflash() {
    let Some((_serial, f)) = start() else {
        return;
    };
    let img = f.path("gateway.img");
    let run = |prov: &str| {
        let out = Command::new(BIN)
            .args(["--image-only", "--image"])
            .arg(&img)
            .arg("--provision")
            .arg(f.path(prov))
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let before = hash(&img);
    let out = run("bad-provision.toml");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("field `node_name`"));
    assert_eq!(
        before,
        hash(&img),
        "a refused --image-only changed the image"
    );

    let out = run("smarter-provision.toml");
    assert_eq!(out.status.code(), Some(0));
    let spec = format!("{}@@{MIB}", img.display());
    // A bare FAT image (Jetson's esp.img in a tegraflash bundle) is its own
    // boot partition.
    let esp = f.path("esp.img");
    sh(Command::new("mkfs.vfat").arg("-C").arg(&esp).arg("8192"));
    let out = Command::new(BIN)
        .args(["--image-only", "--image"])
        .arg(&esp)
        .arg("--provision")
        .arg(f.path("smarter-provision.toml"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_esp = sh(Command::new("mtype")
        .arg("-i")
        .arg(&esp)
        .arg("::smarter-provision.toml"));
    assert!(on_esp.contains("node_name = \"gw-0042\""), "{on_esp}");
    let back = sh(Command::new("mtype")
        .args(["-i", &spec, "::smarter-provision.toml"])
        .env("MTOOLS_SKIP_CHECK", "1"));
    assert_eq!(
        back.as_bytes(),
        std::fs::read(f.path("smarter-provision.toml")).unwrap_or_default()
    );
}

/// images/flash/uuu.sh with a stand-in `uuu` (no Coral board here): the
/// image handed to uuu carries the provisioning file, the original does not
/// change, and a bad provisioning file stops it before uuu runs.
#[test]
fn uuu_wrapper_provisions_a_copy_and_calls_uuu_emmc_all() {
    let Some((_serial, f)) = start() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/flash/uuu.sh");
    let fake = f.path("uuu");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" > {args}\ncp \"$4\" {got}\n",
            args = f.path("uuu.args").display(),
            got = f.path("uuu.img").display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    sh(Command::new("chmod").arg("+x").arg(&fake));
    std::fs::write(f.path("flash.bin"), "bootloader").unwrap_or_else(|e| panic!("{e}"));
    let img = f.path("gateway.img");
    let before = hash(&img);
    let run = |prov: &str| {
        Command::new("bash")
            .arg(&script)
            .arg(&img)
            .arg(f.path("flash.bin"))
            .arg(f.path(prov))
            .env("UUU", &fake)
            .env("SMARTER_FLASH", BIN)
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let out = run("bad-provision.toml");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !f.path("uuu.args").exists(),
        "uuu ran despite a bad provisioning file"
    );

    let out = run("smarter-provision.toml");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = std::fs::read_to_string(f.path("uuu.args")).unwrap_or_default();
    assert!(
        args.starts_with(&format!("-b emmc_all {} ", f.path("flash.bin").display())),
        "{args}"
    );
    let spec = format!("{}@@{MIB}", f.path("uuu.img").display());
    let back = sh(Command::new("mtype")
        .args(["-i", &spec, "::smarter-provision.toml"])
        .env("MTOOLS_SKIP_CHECK", "1"));
    assert!(back.contains("gw-0042"), "{back}");
    assert_eq!(before, hash(&img), "the original image changed");
}
