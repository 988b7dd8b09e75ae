//! Where the boot partition is, from `sfdisk --json` (GPT or MBR, image
//! file or device; no kernel partition scan needed).

use std::path::Path;
use std::process::Command;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Dump {
    partitiontable: Table,
}

#[derive(Debug, Deserialize)]
struct Table {
    #[serde(default)]
    sectorsize: Option<u64>,
    #[serde(default)]
    partitions: Vec<Part>,
}

#[derive(Debug, Deserialize)]
struct Part {
    node: String,
    start: u64,
    size: u64,
    #[serde(default)]
    name: Option<String>,
}

/// A partition found in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based number.
    pub number: u32,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Partition {
    /// `DISK@@OFFSET`, how mtools addresses a filesystem inside a disk.
    pub fn mtools_spec(&self, disk: &Path) -> String {
        format!("{}@@{}", disk.display(), self.offset)
    }
}

/// Parse `sfdisk --json` output and pick the boot partition: number `want`
/// if given, else the one named `boot` (GPT), else partition 1.
pub fn pick(json: &str, want: Option<u32>) -> Result<Partition, String> {
    let dump: Dump =
        serde_json::from_str(json).map_err(|e| format!("cannot parse sfdisk --json: {e}"))?;
    let sector = dump.partitiontable.sectorsize.unwrap_or(512);
    let numbered: Vec<(u32, &Part)> = dump
        .partitiontable
        .partitions
        .iter()
        .filter_map(|p| {
            // The number is the node's trailing digits (x.img3, /dev/sdb3, mmcblk0p3).
            let digits: String = p
                .node
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect();
            let n: u32 = digits.chars().rev().collect::<String>().parse().ok()?;
            Some((n, p))
        })
        .collect();
    let chosen = match want {
        Some(n) => numbered.iter().find(|(k, _)| *k == n),
        None => numbered
            .iter()
            .find(|(_, p)| p.name.as_deref() == Some("boot"))
            .or_else(|| numbered.iter().find(|(k, _)| *k == 1)),
    };
    let (number, p) = chosen.ok_or_else(|| match want {
        Some(n) => format!("has no partition {n}"),
        None => "has no partition named boot and no partition 1".to_string(),
    })?;
    Ok(Partition {
        number: *number,
        offset: p.start.saturating_mul(sector),
        size: p.size.saturating_mul(sector),
    })
}

/// The boot partition of a disk or image file.
pub fn boot_partition(disk: &Path, want: Option<u32>) -> Result<Partition, String> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .map_err(|e| format!("cannot run sfdisk: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no partition table ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    pick(&String::from_utf8_lossy(&out.stdout), want)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPT: &str = r#"{"partitiontable": {"label": "gpt", "id": "X", "device": "x.img", "unit": "sectors",
      "firstlba": 34, "lastlba": 204766, "sectorsize": 512, "partitions": [
        {"node": "x.img1", "start": 2048, "size": 32768, "type": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "uuid": "A", "name": "boot"},
        {"node": "x.img2", "start": 34816, "size": 49152, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "uuid": "B", "name": "rootfs-a"}]}}"#;
    const MBR: &str = r#"{"partitiontable": {"label": "dos", "id": "0x1", "device": "/dev/mmcblk0", "unit": "sectors",
      "partitions": [{"node": "/dev/mmcblk0p1", "start": 8192, "size": 131072, "type": "c", "bootable": true},
                     {"node": "/dev/mmcblk0p2", "start": 139264, "size": 100000, "type": "83"}]}}"#;

    #[test]
    fn gpt_by_name_and_number() {
        assert_eq!(
            pick(GPT, None),
            Ok(Partition {
                number: 1,
                offset: 2048 * 512,
                size: 32768 * 512
            })
        );
        assert_eq!(pick(GPT, Some(2)).map(|p| p.offset), Ok(34816 * 512));
        assert!(pick(GPT, Some(5)).is_err());
    }

    #[test]
    fn mbr_first_partition() {
        assert_eq!(
            pick(MBR, None).map(|p| (p.number, p.offset)),
            Ok((1, 8192 * 512))
        );
        assert_eq!(
            Partition {
                number: 1,
                offset: 4096,
                size: 0
            }
            .mtools_spec(Path::new("/dev/sdb")),
            "/dev/sdb@@4096"
        );
    }
}
