//! What the flasher must know about a target before it writes: is it a whole
//! block device, how big, is any part of it in use (mounted, swap, held by
//! device-mapper/RAID, backing another loop device), is it the disk this
//! host runs from. Facts come from sysfs and procfs ([`inspect`]); the
//! verdict ([`refusals`]) is a pure function of them.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevNum {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl DevNum {
    /// From `st_rdev` / `st_dev`.
    pub fn from_raw(raw: u64) -> Self {
        Self {
            major: libc::major(raw),
            minor: libc::minor(raw),
        }
    }
    /// From `"8:1"`.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.trim().split_once(':')?;
        Some(Self {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Device number of the mounted filesystem.
    pub dev: DevNum,
    /// Mount point.
    pub target: String,
    /// Mount source (`/dev/sda1`...).
    pub source: String,
}

/// Parse mountinfo; octal escapes (`\040`) in paths are decoded.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let dev = DevNum::parse(fields.nth(2)?)?;
            let target = unescape(fields.nth(1)?);
            let (_, after) = line.split_once(" - ")?;
            let source = unescape(after.split(' ').nth(1)?);
            Some(Mount {
                dev,
                target,
                source,
            })
        })
        .collect()
}

/// `/proc/swaps` file names (first column, header skipped).
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(unescape))
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.clone().take(3).collect();
            if oct.len() == 3
                && oct.chars().all(|d| ('0'..='7').contains(&d))
                && let Ok(v) = u8::from_str_radix(&oct, 8)
            {
                out.push(char::from(v));
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The facts about one target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The path given.
    pub path: String,
    /// Not a block device at all: what it is instead.
    pub not_block: Option<String>,
    /// Kernel name (`sdb`, `loop3`, `mmcblk0`).
    pub name: String,
    /// A partition of this disk, not a whole disk.
    pub partition_of: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Host mount points (`/`, `/boot`...) that live on this disk.
    pub host_mounts: Vec<String>,
    /// `(device, mount point)` of every mount on the disk or its partitions.
    pub mounted: Vec<(String, String)>,
    /// Active swap areas on it.
    pub swaps: Vec<String>,
    /// Devices stacked on it (device-mapper, RAID...).
    pub holders: Vec<String>,
    /// Loop devices over it or over the same backing file, with their mounts.
    pub loop_users: Vec<LoopUser>,
}

/// A loop device that reads or writes the target's blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopUser {
    /// `/dev/loop5`.
    pub device: String,
    /// Why it counts (`backed by /dev/loop3`, `backed by the same file /x.img`).
    pub how: String,
    /// Where it (or a partition of it) is mounted.
    pub mounts: Vec<String>,
}

/// One reason not to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a block device.
    NotBlock(String, String),
    /// A partition, not a whole device.
    Partition(String, String),
    /// The host's own disk.
    HostDisk(String, Vec<String>),
    /// Mounted somewhere.
    Mounted(String, Vec<(String, String)>),
    /// Used as swap.
    Swap(String, Vec<String>),
    /// Held by a stacked device.
    Held(String, Vec<String>),
    /// Used by a loop device.
    LoopUsers(String, Vec<LoopUser>),
    /// Smaller than the image.
    TooSmall {
        /// Target path.
        path: String,
        /// Its size.
        size: u64,
        /// The image's size.
        image: u64,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotBlock(p, what) => write!(
                f,
                "{p} is not a block device ({what}); give the whole SD card or disk, e.g. /dev/sdb or /dev/mmcblk0"
            ),
            Refusal::Partition(p, disk) => write!(
                f,
                "{p} is a partition of /dev/{disk}; give the whole device, /dev/{disk}"
            ),
            Refusal::HostDisk(p, mounts) => write!(
                f,
                "{p} is the disk this computer runs from ({} on it); refusing to overwrite it",
                mounts.join(", ")
            ),
            Refusal::Mounted(p, list) => write!(
                f,
                "{p} is mounted ({}); unmount it first",
                list.iter()
                    .map(|(d, m)| format!("{d} at {m}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Refusal::Swap(p, list) => write!(
                f,
                "{p} is in use as swap ({}); swapoff first",
                list.join(", ")
            ),
            Refusal::Held(p, list) => write!(
                f,
                "{p} is in use by {} (device-mapper, LVM, RAID or encryption); release it first",
                list.join(", ")
            ),
            Refusal::LoopUsers(p, users) => write!(
                f,
                "{p} is in use by {}",
                users
                    .iter()
                    .map(|u| {
                        if u.mounts.is_empty() {
                            format!("{} ({})", u.device, u.how)
                        } else {
                            format!(
                                "{} ({}), mounted at {}",
                                u.device,
                                u.how,
                                u.mounts.join(", ")
                            )
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Refusal::TooSmall { path, size, image } => write!(
                f,
                "{path} is smaller than the image: {size} bytes ({}) < {image} bytes ({})",
                mib(*size),
                mib(*image)
            ),
        }
    }
}

/// Every reason not to write `image_size` bytes to the target; empty = go.
pub fn refusals(f: &Facts, image_size: u64) -> Vec<Refusal> {
    let p = f.path.clone();
    if let Some(what) = &f.not_block {
        return vec![Refusal::NotBlock(p, what.clone())];
    }
    let mut out = Vec::new();
    if let Some(disk) = &f.partition_of {
        out.push(Refusal::Partition(p.clone(), disk.clone()));
    }
    if !f.host_mounts.is_empty() {
        out.push(Refusal::HostDisk(p.clone(), f.host_mounts.clone()));
    }
    // The host's disk is mounted too; saying "unmount it" would be absurd.
    if !f.mounted.is_empty() && f.host_mounts.is_empty() {
        out.push(Refusal::Mounted(p.clone(), f.mounted.clone()));
    }
    if !f.swaps.is_empty() {
        out.push(Refusal::Swap(p.clone(), f.swaps.clone()));
    }
    if !f.holders.is_empty() {
        out.push(Refusal::Held(p.clone(), f.holders.clone()));
    }
    if !f.loop_users.is_empty() {
        out.push(Refusal::LoopUsers(p.clone(), f.loop_users.clone()));
    }
    if f.size < image_size {
        out.push(Refusal::TooSmall {
            path: p,
            size: f.size,
            image: image_size,
        });
    }
    out
}

/// Where procfs and sysfs are (tests of the parsers use fixtures; the
/// flasher uses the real ones).
#[derive(Debug, Clone)]
pub struct Roots {
    /// `/proc`.
    pub proc: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// A block device's kernel name and whether it is a partition (its disk).
fn sys_name(roots: &Roots, dev: DevNum) -> Option<(String, Option<String>)> {
    let link = roots.sys.join(format!("dev/block/{dev}"));
    let real = fs::canonicalize(&link).ok()?;
    let name = real.file_name()?.to_str()?.to_string();
    if real.join("partition").exists() {
        let parent = real.parent()?.file_name()?.to_str()?.to_string();
        Some((name, Some(parent)))
    } else {
        Some((name, None))
    }
}

/// The whole disks under a device, following device-mapper/RAID slaves.
fn underlying_disks(roots: &Roots, name: &str, depth: u32, out: &mut BTreeSet<String>) {
    let class = roots.sys.join("class/block").join(name);
    let slaves = dir_names(&class.join("slaves"));
    if slaves.is_empty() || depth > 8 {
        let disk = if class.join("partition").exists() {
            fs::canonicalize(&class)
                .ok()
                .and_then(|r| {
                    r.parent()
                        .and_then(|p| p.file_name())
                        .and_then(|n| n.to_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| name.to_string())
        } else {
            name.to_string()
        };
        out.insert(disk);
    } else {
        for s in slaves {
            underlying_disks(roots, &s, depth + 1, out);
        }
    }
}

/// The device number of a mount, falling back to its source node when the
/// filesystem reports an anonymous one (btrfs, overlay on a device).
fn mount_devices(m: &Mount) -> Vec<DevNum> {
    let mut v = vec![m.dev];
    if m.source.starts_with('/')
        && let Ok(meta) = fs::metadata(&m.source)
        && meta.file_type().is_block_device()
    {
        v.push(DevNum::from_raw(meta.rdev()));
    }
    v
}

/// Host mount points whose device lives on a disk: the system the flasher
/// runs on must never be its target.
const HOST_MOUNTS: &[&str] = &["/", "/boot", "/boot/efi", "/usr", "/var", "/home"];

/// Gather the facts about `path`.
pub fn inspect(roots: &Roots, path: &Path) -> Facts {
    let mut f = Facts {
        path: path.display().to_string(),
        ..Facts::default()
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            f.not_block = Some(format!("cannot stat it: {e}"));
            return f;
        }
    };
    if !meta.file_type().is_block_device() {
        f.not_block = Some(if meta.is_file() {
            "a regular file".into()
        } else if meta.is_dir() {
            "a directory".into()
        } else {
            "not a disk".into()
        });
        return f;
    }
    let dev = DevNum::from_raw(meta.rdev());
    let Some((name, partition_of)) = sys_name(roots, dev) else {
        f.not_block = Some(format!(
            "device {dev} is not in {}",
            roots.sys.join("dev/block").display()
        ));
        return f;
    };
    f.name = name.clone();
    f.partition_of = partition_of;
    let class = roots.sys.join("class/block").join(&name);
    f.size = read_trim(&class.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |sectors| sectors.saturating_mul(512));

    // The disk and its partitions.
    let mut parts: Vec<(String, DevNum)> = vec![(name.clone(), dev)];
    for child in dir_names(&class) {
        let cdir = class.join(&child);
        if cdir.join("partition").exists()
            && let Some(d) = read_trim(&cdir.join("dev")).and_then(|s| DevNum::parse(&s))
        {
            parts.push((child, d));
        }
    }
    let devs: BTreeSet<DevNum> = parts.iter().map(|(_, d)| *d).collect();
    let name_of = |d: DevNum| {
        parts
            .iter()
            .find(|(_, x)| *x == d)
            .map_or_else(|| d.to_string(), |(n, _)| format!("/dev/{n}"))
    };

    let mounts =
        parse_mountinfo(&fs::read_to_string(roots.proc.join("self/mountinfo")).unwrap_or_default());
    for m in &mounts {
        if let Some(d) = mount_devices(m).into_iter().find(|d| devs.contains(d)) {
            f.mounted.push((name_of(d), m.target.clone()));
        }
    }

    // The host's own disk(s).
    for hm in HOST_MOUNTS {
        let Some(m) = mounts.iter().rev().find(|m| m.target == *hm) else {
            continue;
        };
        for d in mount_devices(m) {
            if let Some((n, _)) = sys_name(roots, d) {
                let mut disks = BTreeSet::new();
                underlying_disks(roots, &n, 0, &mut disks);
                let target_disk = f.partition_of.clone().unwrap_or_else(|| name.clone());
                if disks.contains(&target_disk) && !f.host_mounts.contains(&hm.to_string()) {
                    f.host_mounts.push(hm.to_string());
                }
            }
        }
    }

    for s in parse_swaps(&fs::read_to_string(roots.proc.join("swaps")).unwrap_or_default()) {
        if let Ok(m) = fs::metadata(&s)
            && m.file_type().is_block_device()
            && devs.contains(&DevNum::from_raw(m.rdev()))
        {
            f.swaps.push(s);
        }
    }

    for (n, _) in &parts {
        for h in dir_names(&roots.sys.join("class/block").join(n).join("holders")) {
            f.holders.push(format!("/dev/{h} (on /dev/{n})"));
        }
    }

    f.loop_users = loop_users(roots, &name, &devs, &mounts);
    f
}

/// Loop devices whose backing file is the target (or a partition of it), or,
/// when the target is itself a loop device, the same file it is backed by.
fn loop_users(
    roots: &Roots,
    name: &str,
    devs: &BTreeSet<DevNum>,
    mounts: &[Mount],
) -> Vec<LoopUser> {
    let backing = |n: &str| -> Option<(String, fs::Metadata)> {
        let p = read_trim(&roots.sys.join("block").join(n).join("loop/backing_file"))?;
        let m = fs::metadata(&p).ok()?;
        Some((p, m))
    };
    let own = if name.starts_with("loop") {
        backing(name)
    } else {
        None
    };
    let mut out = Vec::new();
    for l in dir_names(&roots.sys.join("block")) {
        if l == name || !l.starts_with("loop") {
            continue;
        }
        let Some((file, meta)) = backing(&l) else {
            continue;
        };
        let how = if meta.file_type().is_block_device()
            && devs.contains(&DevNum::from_raw(meta.rdev()))
        {
            format!("backed by {file}")
        } else if own
            .as_ref()
            .is_some_and(|(_, m)| m.dev() == meta.dev() && m.ino() == meta.ino())
        {
            format!("backed by the same file, {file}")
        } else {
            continue;
        };
        // Where it, or a partition of it, is mounted.
        let mut ldevs = BTreeSet::new();
        if let Some(d) =
            read_trim(&roots.sys.join("block").join(&l).join("dev")).and_then(|s| DevNum::parse(&s))
        {
            ldevs.insert(d);
        }
        for child in dir_names(&roots.sys.join("block").join(&l)) {
            if let Some(d) = read_trim(&roots.sys.join("block").join(&l).join(&child).join("dev"))
                .and_then(|s| DevNum::parse(&s))
            {
                ldevs.insert(d);
            }
        }
        let lm = mounts
            .iter()
            .filter(|m| mount_devices(m).iter().any(|d| ldevs.contains(d)))
            .map(|m| m.target.clone())
            .collect();
        out.push(LoopUser {
            device: format!("/dev/{l}"),
            how,
            mounts: lm,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    90 27 7:4 / /mnt/with\\040space rw - ext4 /dev/loop4 rw\n\
                    garbage\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                Mount {
                    dev: DevNum {
                        major: 254,
                        minor: 0
                    },
                    target: "/".into(),
                    source: "/dev/vda".into()
                },
                Mount {
                    dev: DevNum { major: 7, minor: 4 },
                    target: "/mnt/with space".into(),
                    source: "/dev/loop4".into()
                },
            ]
        );
    }

    #[test]
    fn swaps_file() {
        let text =
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/sdb2 partition 1048572 0 -2\n";
        assert_eq!(parse_swaps(text), ["/dev/sdb2"]);
        assert!(parse_swaps("Filename Type Size Used Priority\n").is_empty());
    }

    fn sd() -> Facts {
        Facts {
            path: "/dev/sdb".into(),
            name: "sdb".into(),
            size: 32 << 30,
            ..Facts::default()
        }
    }

    #[test]
    fn a_free_big_disk_is_accepted() {
        assert_eq!(refusals(&sd(), 4 << 30), vec![]);
    }

    #[test]
    fn each_reason_is_reported_with_its_detail() {
        let mut f = sd();
        f.size = 1 << 30;
        f.mounted = vec![("/dev/sdb1".into(), "/media/boot".into())];
        f.swaps = vec!["/dev/sdb3".into()];
        f.holders = vec!["/dev/dm-0 (on /dev/sdb2)".into()];
        let r: Vec<String> = refusals(&f, 2 << 30)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            r,
            [
                "/dev/sdb is mounted (/dev/sdb1 at /media/boot); unmount it first",
                "/dev/sdb is in use as swap (/dev/sdb3); swapoff first",
                "/dev/sdb is in use by /dev/dm-0 (on /dev/sdb2) (device-mapper, LVM, RAID or encryption); release it first",
                "/dev/sdb is smaller than the image: 1073741824 bytes (1024.0 MiB) < 2147483648 bytes (2048.0 MiB)",
            ]
        );
    }

    #[test]
    fn the_host_disk_is_named_as_such() {
        let mut f = sd();
        f.host_mounts = vec!["/".into(), "/boot".into()];
        f.mounted = vec![("/dev/sdb2".into(), "/".into())];
        let r: Vec<String> = refusals(&f, 1).iter().map(|r| r.to_string()).collect();
        assert_eq!(
            r,
            [
                "/dev/sdb is the disk this computer runs from (/, /boot on it); refusing to overwrite it"
            ]
        );
    }

    #[test]
    fn not_a_block_device_or_a_partition() {
        let f = Facts {
            path: "/tmp/x".into(),
            not_block: Some("a regular file".into()),
            ..Facts::default()
        };
        assert!(
            refusals(&f, 0)[0]
                .to_string()
                .starts_with("/tmp/x is not a block device (a regular file)")
        );
        let mut f = sd();
        f.path = "/dev/sdb1".into();
        f.partition_of = Some("sdb".into());
        assert_eq!(
            refusals(&f, 0)[0].to_string(),
            "/dev/sdb1 is a partition of /dev/sdb; give the whole device, /dev/sdb"
        );
    }

    #[test]
    fn the_real_root_disk_is_refused_when_visible() {
        // The device node of the disk holding `/`, when this host has one.
        let roots = Roots::default();
        let mounts =
            parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        let Some(root) = mounts.iter().rev().find(|m| m.target == "/") else {
            return;
        };
        let Some((name, parent)) = sys_name(&roots, root.dev) else {
            return;
        };
        let node = PathBuf::from(format!("/dev/{}", parent.unwrap_or(name)));
        if !node.exists() {
            return;
        }
        let f = inspect(&roots, &node);
        assert!(f.host_mounts.contains(&"/".to_string()), "{f:?}");
    }
}
