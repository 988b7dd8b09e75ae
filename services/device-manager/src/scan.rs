//! Reading the host: the device tree under the device root, Jetson GPUs in
//! sysfs, and udev properties from sysfs and the udev database.
//!
//! Properties come without libudev: `SUBSYSTEM` and the `uevent` keys from
//! `<sys>/dev/{char,block}/MAJ:MIN`, USB `ID_VENDOR_ID`/`ID_MODEL_ID`/
//! `ID_SERIAL_SHORT`/`ID_VENDOR`/`ID_MODEL` from the nearest USB ancestor's
//! attributes, and everything udev computed (`ID_PATH`, `ID_SERIAL`, …) from
//! `<udev_data_dir>/{c,b}MAJ:MIN` when a udev daemon runs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::discover::{DeviceInfo, Entry, Inventory, Kind};

/// How deep the original walks `/dev`.
pub const MAX_DEPTH: usize = 10;

/// Major number of a kernel `dev_t`.
pub fn major(rdev: u64) -> u64 {
    ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)
}

/// Minor number of a kernel `dev_t`.
pub fn minor(rdev: u64) -> u64 {
    ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)
}

/// A kernel `dev_t` from major and minor (the inverse of [`major`] and
/// [`minor`]).
pub fn makedev(major: u64, minor: u64) -> u64 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12) | ((major & !0xfff) << 32)
}

/// Walk `dev_root` (to [`MAX_DEPTH`]) and `<sys_root>/devices` for Jetson
/// GPUs. Unreadable parts are skipped: a scan never fails, it sees less.
/// Also returns every directory seen, for the watcher.
pub fn scan(dev_root: &Path, sys_root: &Path) -> (Inventory, Vec<PathBuf>) {
    let mut inv = Inventory::default();
    let mut dirs = vec![dev_root.to_path_buf()];
    let canon_root = fs::canonicalize(dev_root).unwrap_or_else(|_| dev_root.to_path_buf());
    walk(dev_root, &canon_root, "", 0, &mut inv, &mut dirs);
    inv.jetson_gpus = jetson_gpus(sys_root);
    (inv, dirs)
}

fn walk(
    dir: &Path,
    canon_root: &Path,
    prefix: &str,
    depth: usize,
    inv: &mut Inventory,
    dirs: &mut Vec<PathBuf>,
) {
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for item in rd.flatten() {
        let Some(name) = item.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let rel = format!("{prefix}{name}");
        let path = item.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            inv.entries.insert(
                rel.clone(),
                Entry {
                    rel: rel.clone(),
                    kind: Kind::Dir,
                    rdev: 0,
                    target: None,
                },
            );
            dirs.push(path.clone());
            walk(&path, canon_root, &format!("{rel}/"), depth + 1, inv, dirs);
        } else if let Some(kind) = node_kind(&ft) {
            inv.entries.insert(
                rel.clone(),
                Entry {
                    rel,
                    kind,
                    rdev: meta.rdev(),
                    target: None,
                },
            );
        } else if ft.is_symlink() {
            // Resolve within the device root only; links elsewhere are ignored.
            let Ok(real) = fs::canonicalize(&path) else {
                continue;
            };
            let Ok(target_rel) = real.strip_prefix(canon_root) else {
                continue;
            };
            let Some(target_rel) = target_rel.to_str().map(str::to_string) else {
                continue;
            };
            let Ok(tmeta) = fs::metadata(&real) else {
                continue;
            };
            let kind = if tmeta.is_dir() {
                Kind::Dir
            } else if let Some(k) = node_kind(&tmeta.file_type()) {
                k
            } else {
                continue;
            };
            inv.entries.insert(
                rel.clone(),
                Entry {
                    rel,
                    kind,
                    rdev: tmeta.rdev(),
                    target: Some(target_rel),
                },
            );
        }
    }
}

fn node_kind(ft: &fs::FileType) -> Option<Kind> {
    if ft.is_char_device() {
        Some(Kind::Char)
    } else if ft.is_block_device() {
        Some(Kind::Block)
    } else {
        None
    }
}

/// `gpu.N` directories in `<sys_root>/devices` (depth 0), as the original.
fn jetson_gpus(sys_root: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(sys_root.join("devices")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| {
            let num = n.strip_prefix("gpu.")?;
            (!num.is_empty() && num.chars().all(|c| c.is_ascii_digit())).then(|| num.to_string())
        })
        .collect();
    v.sort();
    v
}

/// udev properties from sysfs and the udev database.
#[derive(Debug, Clone)]
pub struct SysfsInfo {
    /// Sysfs root.
    pub sys_root: PathBuf,
    /// udev database directory.
    pub udev_data_dir: PathBuf,
}

impl DeviceInfo for SysfsInfo {
    fn properties(&self, kind: Kind, rdev: u64) -> BTreeMap<String, String> {
        let (class, letter) = match kind {
            Kind::Char => ("char", 'c'),
            Kind::Block => ("block", 'b'),
            Kind::Dir => return BTreeMap::new(),
        };
        let id = format!("{}:{}", major(rdev), minor(rdev));
        let mut props = BTreeMap::new();
        let link = self.sys_root.join("dev").join(class).join(&id);
        if let Ok(dev_dir) = fs::canonicalize(&link) {
            read_kv(&dev_dir.join("uevent"), "", &mut props);
            if let Ok(sub) = fs::read_link(dev_dir.join("subsystem"))
                && let Some(s) = sub.file_name().and_then(|s| s.to_str())
            {
                props.insert("SUBSYSTEM".into(), s.to_string());
            }
            usb_ancestor(&dev_dir, &self.sys_root, &mut props);
        }
        read_kv(
            &self.udev_data_dir.join(format!("{letter}{id}")),
            "E:",
            &mut props,
        );
        props
    }
}

/// Read `KEY=value` lines (after `prefix`) into `props`.
fn read_kv(path: &Path, prefix: &str, props: &mut BTreeMap<String, String>) {
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        if let Some(kv) = line.strip_prefix(prefix)
            && let Some((k, v)) = kv.split_once('=')
        {
            props.insert(k.to_string(), v.to_string());
        }
    }
}

/// Walk up from a device dir to the first USB device (has `idVendor`).
fn usb_ancestor(dev_dir: &Path, sys_root: &Path, props: &mut BTreeMap<String, String>) {
    let mut dir = Some(dev_dir);
    while let Some(d) = dir {
        if !d.starts_with(sys_root) || d == sys_root {
            return;
        }
        if d.join("idVendor").exists() {
            for (file, key) in [
                ("idVendor", "ID_VENDOR_ID"),
                ("idProduct", "ID_MODEL_ID"),
                ("serial", "ID_SERIAL_SHORT"),
                ("manufacturer", "ID_VENDOR"),
                ("product", "ID_MODEL"),
            ] {
                if let Ok(v) = fs::read_to_string(d.join(file)) {
                    props.insert(key.to_string(), v.trim().to_string());
                }
            }
            return;
        }
        dir = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_t_split() {
        // makedev(188, 3) and makedev(259, 70000)
        assert_eq!((major(188 << 8 | 3), minor(188 << 8 | 3)), (188, 3));
        let big = (70000u64 & 0xff) | (259 << 8) | ((70000u64 & !0xff) << 12);
        assert_eq!((major(big), minor(big)), (259, 70000));
        assert_eq!(makedev(259, 70000), big);
        assert_eq!(makedev(188, 3), 188 << 8 | 3);
    }

    #[test]
    fn properties_from_fake_sysfs() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let sys = t.path().join("sys");
        let usb = sys.join("devices/platform/usb1/1-1");
        let tty = usb.join("1-1:1.0/ttyUSB0/tty/ttyUSB0");
        fs::create_dir_all(&tty)?;
        fs::create_dir_all(sys.join("class/tty"))?;
        fs::create_dir_all(sys.join("dev/char"))?;
        fs::write(usb.join("idVendor"), "0403\n")?;
        fs::write(usb.join("idProduct"), "6001\n")?;
        fs::write(usb.join("serial"), "A50285BI\n")?;
        fs::write(tty.join("uevent"), "MAJOR=188\nMINOR=0\nDEVNAME=ttyUSB0\n")?;
        std::os::unix::fs::symlink(sys.join("class/tty"), tty.join("subsystem"))?;
        std::os::unix::fs::symlink(&tty, sys.join("dev/char/188:0"))?;
        let udev = t.path().join("udev");
        fs::create_dir_all(&udev)?;
        fs::write(
            udev.join("c188:0"),
            "S:serial/by-id/x\nE:ID_PATH=platform-usb-0:1:1.0\nE:ID_SERIAL=FTDI_A50285BI\n",
        )?;
        let info = SysfsInfo {
            sys_root: sys,
            udev_data_dir: udev,
        };
        let p = info.properties(Kind::Char, 188 << 8);
        assert_eq!(p["SUBSYSTEM"], "tty");
        assert_eq!(p["DEVNAME"], "ttyUSB0");
        assert_eq!(p["ID_VENDOR_ID"], "0403");
        assert_eq!(p["ID_MODEL_ID"], "6001");
        assert_eq!(p["ID_SERIAL_SHORT"], "A50285BI");
        assert_eq!(p["ID_PATH"], "platform-usb-0:1:1.0");
        assert_eq!(p["ID_SERIAL"], "FTDI_A50285BI");
        assert!(info.properties(Kind::Char, 1).is_empty());
        Ok(())
    }

    #[test]
    fn scan_dirs_links_and_gpus() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let dev = t.path().join("dev");
        fs::create_dir_all(dev.join("snd"))?;
        fs::create_dir_all(dev.join("serial/by-id"))?;
        fs::write(dev.join("regular"), "")?;
        std::os::unix::fs::symlink("../../snd", dev.join("serial/by-id/link"))?;
        std::os::unix::fs::symlink("/etc", dev.join("outside"))?;
        fs::create_dir_all(t.path().join("sys/devices/gpu.0"))?;
        fs::create_dir_all(t.path().join("sys/devices/gpu.x"))?;
        let (inv, dirs) = scan(&dev, &t.path().join("sys"));
        assert_eq!(inv.entries["snd"].kind, Kind::Dir);
        assert_eq!(
            inv.entries["serial/by-id/link"].target.as_deref(),
            Some("snd")
        );
        assert!(!inv.entries.contains_key("regular"));
        assert!(!inv.entries.contains_key("outside"));
        assert_eq!(inv.jetson_gpus, ["0"]);
        assert_eq!(dirs.len(), 4);
        Ok(())
    }
}
