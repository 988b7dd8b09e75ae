//! The host flasher behind `smarter-flash`: image (with its `.bmap`) to a
//! block device with `bmaptool`, read back and verified, then the
//! provisioning file onto the boot partition with mtools.
//!
//! Everything that can refuse runs before the first byte is written: the
//! provisioning file validates, the image and its bmap are readable, the
//! image has a FAT boot partition to receive the file, the peers are
//! installed, and the target is a whole block device that is not mounted, not
//! swap, not held or looped by anything, not the host's own disk, and not
//! smaller than the image ([`device`]).

pub mod bmap;
pub mod device;
pub mod table;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::file;

/// What to flash.
#[derive(Debug, Clone)]
pub struct Request {
    /// The image (raw; bmaptool also reads .gz/.xz/.zst/.bz2 with a bmap).
    pub image: PathBuf,
    /// Its bmap; `None` = look next to the image.
    pub bmap: Option<PathBuf>,
    /// Copy the whole image without a bmap.
    pub no_bmap: bool,
    /// The target block device.
    pub device: PathBuf,
    /// The provisioning file to put on the boot partition.
    pub provision: Option<PathBuf>,
    /// Boot partition number; `None` = the partition named `boot`, else 1.
    pub boot_partition: Option<u32>,
}

/// Why flashing stopped.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// Refused before writing anything.
    #[error("refusing to flash, nothing was written:\n{}", .0.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<String>),
    /// Failed while writing or verifying.
    #[error("{0}")]
    Failed(String),
}

/// What was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flashed {
    /// Bytes of image data verified by reading them back.
    pub verified_bytes: u64,
    /// Where the provisioning file went (`/dev/sdb@@1048576`).
    pub provisioned_at: Option<String>,
}

/// The peers the flasher runs.
pub const PEERS: &[&str] = &["bmaptool", "mcopy", "mtype", "mdir", "sfdisk"];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            let p = d.join(program);
            p.is_file()
        })
    })
}

/// Compressed image suffixes bmaptool understands.
fn is_compressed(image: &Path) -> bool {
    let name = image.to_string_lossy();
    [".gz", ".xz", ".bz2", ".zst", ".lz4", ".tgz", ".txz"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The bmap bmaptool would use: `IMAGE.bmap`, or with the compression suffix
/// replaced (`x.img.xz` -> `x.img.bmap`).
pub fn find_bmap(image: &Path) -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from(format!("{}.bmap", image.display()))];
    if let Some(stem) = image.file_stem() {
        candidates.push(image.with_file_name(format!("{}.bmap", stem.to_string_lossy())));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Flash as requested; `say` gets progress lines for the user.
pub fn flash(
    req: &Request,
    roots: &device::Roots,
    say: &mut dyn FnMut(&str),
) -> Result<Flashed, FlashError> {
    let mut refused: Vec<String> = Vec::new();

    for p in PEERS {
        if !on_path(p) {
            refused.push(format!(
                "{p} is not installed (Debian: apt-get install bmap-tools mtools fdisk)"
            ));
        }
    }

    // The provisioning file validates with the same code the gateway uses.
    let provision_bytes = match &req.provision {
        None => None,
        Some(p) => match std::fs::read(p) {
            Err(e) => {
                refused.push(format!(
                    "cannot read provisioning file {}: {e}",
                    p.display()
                ));
                None
            }
            Ok(bytes) => match file::parse(p, &String::from_utf8_lossy(&bytes)) {
                Err(e) => {
                    refused.push(format!("provisioning file is not valid: {e}"));
                    None
                }
                Ok(_) => Some(bytes),
            },
        },
    };

    // The image, its bmap and its size.
    let image_meta = std::fs::metadata(&req.image);
    let bmap_path = if req.no_bmap {
        None
    } else {
        req.bmap.clone().or_else(|| find_bmap(&req.image))
    };
    let mut bmap = None;
    if let Err(e) = &image_meta {
        refused.push(format!("cannot read image {}: {e}", req.image.display()));
    }
    match (&bmap_path, req.no_bmap) {
        (Some(b), _) => match std::fs::read_to_string(b) {
            Ok(text) => match bmap::Bmap::parse(&text) {
                Ok(m) => bmap = Some(m),
                Err(e) => refused.push(format!("bmap {} is not usable: {e}", b.display())),
            },
            Err(e) => refused.push(format!("cannot read bmap {}: {e}", b.display())),
        },
        (None, false) => refused.push(format!(
            "no bmap for {} (looked for {}.bmap); give --bmap FILE, or --no-bmap to copy every byte",
            req.image.display(),
            req.image.display()
        )),
        (None, true) => {}
    }
    if req.no_bmap && is_compressed(&req.image) {
        refused.push("a compressed image needs its bmap (its size is unknown without it)".into());
    }
    let image_size = match (&bmap, &image_meta) {
        (Some(b), _) => b.image_size,
        (None, Ok(m)) => m.len(),
        (None, Err(_)) => 0,
    };
    if let (Some(b), Ok(m)) = (&bmap, &image_meta)
        && !is_compressed(&req.image)
        && m.len() != b.image_size
    {
        refused.push(format!(
            "bmap says the image is {} bytes but {} is {} bytes: wrong bmap?",
            b.image_size,
            req.image.display(),
            m.len()
        ));
    }

    // The image must have a FAT boot partition for the provisioning file.
    if provision_bytes.is_some()
        && image_meta.is_ok()
        && !is_compressed(&req.image)
        && let Err(e) = whole_file_fat(&req.image, req.boot_partition)
    {
        refused.push(e);
    }

    // The target.
    let facts = device::inspect(roots, &req.device);
    refused.extend(
        device::refusals(&facts, image_size)
            .iter()
            .map(|r| r.to_string()),
    );

    if !refused.is_empty() {
        return Err(FlashError::Refused(refused));
    }

    // Write.
    say(&format!(
        "writing {} ({} bytes) to {} with bmaptool",
        req.image.display(),
        image_size,
        req.device.display()
    ));
    let mut cmd = Command::new("bmaptool");
    cmd.arg("copy");
    match &bmap_path {
        Some(b) => {
            cmd.arg("--bmap").arg(b);
        }
        None => {
            cmd.arg("--nobmap");
        }
    }
    cmd.arg(&req.image).arg(&req.device);
    run(&mut cmd)?;

    // Verify by reading back from the device, not from the page cache.
    say("verifying what was written");
    let verified = verify(req, bmap.as_ref(), image_size)?;
    say(&format!("verified {verified} bytes"));

    // Provision.
    let mut provisioned_at = None;
    if let (Some(bytes), Some(src)) = (&provision_bytes, &req.provision) {
        let (number, spec) = put_provision(&req.device, req.boot_partition, src, bytes)?;
        sync_device(&req.device)?;
        say(&format!(
            "wrote {} to boot partition {number} ({spec}) and read it back",
            file::FILE_NAME
        ));
        provisioned_at = Some(spec);
    }
    sync_device(&req.device)?;
    Ok(Flashed {
        verified_bytes: verified,
        provisioned_at,
    })
}

/// Copy the provisioning file onto the FAT boot partition of `disk` (a
/// device or an image file) and read it back; returns the partition number
/// and the mtools address used.
fn put_provision(
    disk: &Path,
    boot_partition: Option<u32>,
    src: &Path,
    bytes: &[u8],
) -> Result<(u32, String), FlashError> {
    let part = locate(disk, boot_partition).map_err(FlashError::Failed)?;
    let spec = part.mtools_spec(disk);
    let target = format!("::{}", file::FILE_NAME);
    mtools(&[
        "mcopy",
        "-o",
        "-i",
        &spec,
        &src.display().to_string(),
        &target,
    ])
    .map_err(|e| FlashError::Failed(format!("writing the provisioning file to {spec}: {e}")))?;
    let back = mtools_output(&["mtype", "-i", &spec, &target]).map_err(|e| {
        FlashError::Failed(format!(
            "reading the provisioning file back from {spec}: {e}"
        ))
    })?;
    if back != bytes {
        return Err(FlashError::Failed(format!(
            "the provisioning file read back from {spec} differs from {}",
            src.display()
        )));
    }
    Ok((part.number, spec))
}

/// Put a validated provisioning file into an (uncompressed) image file's
/// FAT boot partition, for images that another tool writes to the board
/// (uuu for Coral's eMMC, tegraflash for Jetson). Refuses before changing
/// the image when the file does not validate or the partition is not FAT.
pub fn provision_image(
    image: &Path,
    provision: &Path,
    boot_partition: Option<u32>,
) -> Result<String, FlashError> {
    let mut refused = Vec::new();
    for p in ["mcopy", "mtype", "mdir", "sfdisk"] {
        if !on_path(p) {
            refused.push(format!(
                "{p} is not installed (Debian: apt-get install mtools fdisk)"
            ));
        }
    }
    let bytes = match std::fs::read(provision) {
        Err(e) => {
            refused.push(format!(
                "cannot read provisioning file {}: {e}",
                provision.display()
            ));
            Vec::new()
        }
        Ok(b) => {
            if let Err(e) = file::parse(provision, &String::from_utf8_lossy(&b)) {
                refused.push(format!("provisioning file is not valid: {e}"));
            }
            b
        }
    };
    if is_compressed(image) {
        refused.push(format!(
            "{} is compressed: decompress it first",
            image.display()
        ));
    } else if refused.is_empty() {
        match whole_file_fat(image, boot_partition) {
            Ok(()) => {}
            Err(e) => refused.push(e),
        }
    }
    if !refused.is_empty() {
        return Err(FlashError::Refused(refused));
    }
    put_provision(image, boot_partition, provision, &bytes).map(|(_, spec)| spec)
}

/// The boot partition of a disk or image; an image file without a partition
/// table that is itself a FAT filesystem (Jetson's `esp.img`) is its own
/// boot partition, number 0 at offset 0.
fn locate(disk: &Path, boot_partition: Option<u32>) -> Result<table::Partition, String> {
    match table::boot_partition(disk, boot_partition) {
        Ok(p) => Ok(p),
        Err(e) => {
            let whole = format!("{}@@0", disk.display());
            let is_file = std::fs::metadata(disk).is_ok_and(|m| m.is_file());
            if boot_partition.is_none()
                && is_file
                && mtools(&["mdir", "-b", "-i", &whole, "::"]).is_ok()
            {
                let size = std::fs::metadata(disk).map_or(0, |m| m.len());
                Ok(table::Partition {
                    number: 0,
                    offset: 0,
                    size,
                })
            } else {
                Err(format!("{}: {e}", disk.display()))
            }
        }
    }
}

/// The image's boot partition exists and holds a FAT filesystem.
fn whole_file_fat(image: &Path, boot_partition: Option<u32>) -> Result<(), String> {
    let part = locate(image, boot_partition)?;
    mtools(&["mdir", "-b", "-i", &part.mtools_spec(image), "::"]).map_err(|e| {
        format!(
            "image partition {} is not a FAT filesystem, so the provisioning file cannot go there: {e}",
            part.number
        )
    })
}

fn run(cmd: &mut Command) -> Result<(), FlashError> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| FlashError::Failed(format!("cannot run {shown}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FlashError::Failed(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Run an mtools command with a config that skips its drive-geometry check
/// (partition offsets need not align to a floppy geometry).
fn mtools_output(args: &[&str]) -> Result<Vec<u8>, String> {
    let (program, rest) = args.split_first().ok_or("empty command")?;
    let out = Command::new(program)
        .args(rest)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn mtools(args: &[&str]) -> Result<(), String> {
    mtools_output(args).map(drop)
}

/// fsync the device and drop its cached pages so the next read hits the
/// medium.
fn sync_device(device: &Path) -> Result<(), FlashError> {
    let f = File::open(device)
        .map_err(|e| FlashError::Failed(format!("cannot open {}: {e}", device.display())))?;
    f.sync_all()
        .map_err(|e| FlashError::Failed(format!("cannot sync {}: {e}", device.display())))?;
    drop_cache(&f);
    Ok(())
}

fn drop_cache(f: &File) {
    // BLKFLSBUF: flush and invalidate the device's buffer cache.
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    // SAFETY: the fd is open for the duration of the call; BLKFLSBUF takes no
    // argument pointer.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _, 0) };
    if rc != 0 {
        // SAFETY: as above; fadvise only takes integers.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_exact_at(f: &mut File, offset: u64, buf: &mut [u8], what: &str) -> Result<(), FlashError> {
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(buf))
        .map_err(|e| FlashError::Failed(format!("cannot read {what} at byte {offset}: {e}")))
}

/// Compare the device with the bmap's checksums (sha256 bmaps) or, when
/// there are none, with the image's own bytes over the mapped ranges (or all
/// of it without a bmap).
fn verify(req: &Request, bmap: Option<&bmap::Bmap>, image_size: u64) -> Result<u64, FlashError> {
    sync_device(&req.device)?;
    let mut dev = File::open(&req.device)
        .map_err(|e| FlashError::Failed(format!("cannot open {}: {e}", req.device.display())))?;
    let dev_name = req.device.display().to_string();
    let ranges: Vec<(u64, u64, Option<String>)> = match bmap {
        Some(b) => b
            .ranges
            .iter()
            .map(|r| {
                let (off, len) = b.span(r);
                let sum = (b.checksum_type == "sha256")
                    .then(|| r.checksum.clone())
                    .flatten();
                (off, len, sum)
            })
            .collect(),
        None => vec![(0, image_size, None)],
    };
    let need_image = ranges.iter().any(|(_, _, s)| s.is_none());
    if need_image && is_compressed(&req.image) {
        return Err(FlashError::Failed(
            "cannot verify: the bmap has no sha256 checksums and the image is compressed".into(),
        ));
    }
    let mut image =
        if need_image {
            Some(File::open(&req.image).map_err(|e| {
                FlashError::Failed(format!("cannot open {}: {e}", req.image.display()))
            })?)
        } else {
            None
        };
    let mut total = 0u64;
    let chunk = 4 << 20;
    let mut dbuf = vec![0u8; chunk];
    let mut ibuf = vec![0u8; chunk];
    for (off, len, sum) in ranges {
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from((len - done).min(chunk as u64)).unwrap_or(chunk);
            let d = dbuf.get_mut(..n).unwrap_or_default();
            read_exact_at(&mut dev, off + done, d, &dev_name)?;
            match (&sum, image.as_mut()) {
                (Some(_), _) => hasher.update(&*d),
                (None, Some(img)) => {
                    let i = ibuf.get_mut(..n).unwrap_or_default();
                    read_exact_at(img, off + done, i, "the image")?;
                    if i != d {
                        return Err(FlashError::Failed(format!(
                            "verification failed: {dev_name} differs from the image in bytes {}..{}",
                            off + done,
                            off + done + n as u64
                        )));
                    }
                }
                (None, None) => {}
            }
            done += n as u64;
        }
        if let Some(expected) = sum {
            let got = hex(&hasher.finalize());
            if got != expected {
                return Err(FlashError::Failed(format!(
                    "verification failed: bytes {off}..{} of {dev_name} have sha256 {got}, the bmap says {expected}",
                    off + len
                )));
            }
        }
        total += len;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// A 3-block image with blocks 0 and 2 mapped, its bmap, and a "device"
    /// (a regular file works for reading back) holding `device_bytes`.
    fn setup(dir: &Path, device_bytes: &[u8]) -> (Request, bmap::Bmap) {
        let mut image = vec![0u8; 3 * 4096];
        image[..4096].fill(0xaa);
        image[8192..].fill(0xbb);
        std::fs::write(dir.join("x.img"), &image).ok();
        std::fs::write(dir.join("dev"), device_bytes).ok();
        let b = bmap::Bmap {
            image_size: image.len() as u64,
            block_size: 4096,
            checksum_type: "sha256".into(),
            ranges: vec![
                bmap::Range {
                    first: 0,
                    last: 0,
                    checksum: Some(sha(&image[..4096])),
                },
                bmap::Range {
                    first: 2,
                    last: 2,
                    checksum: Some(sha(&image[8192..])),
                },
            ],
        };
        let req = Request {
            image: dir.join("x.img"),
            bmap: None,
            no_bmap: false,
            device: dir.join("dev"),
            provision: None,
            boot_partition: None,
        };
        (req, b)
    }

    #[test]
    fn verify_reads_back_and_names_the_bad_range() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let mut good = vec![0u8; 3 * 4096];
        good[..4096].fill(0xaa);
        good[4096..8192].fill(0x11); // unmapped: anything goes
        good[8192..].fill(0xbb);
        let (req, b) = setup(dir.path(), &good);
        assert_eq!(
            verify(&req, Some(&b), b.image_size).map_err(|e| e.to_string()),
            Ok(8192)
        );

        let mut bad = good.clone();
        bad[9000] = 0;
        let (req, b) = setup(dir.path(), &bad);
        let e = verify(&req, Some(&b), b.image_size).map_err(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_err_and(|e| e.starts_with("verification failed: bytes 8192..12288 of ")),
            "{e:?}"
        );

        // Without checksums the image's own bytes are the reference.
        let mut plain = b.clone();
        for r in &mut plain.ranges {
            r.checksum = None;
        }
        let e = verify(&req, Some(&plain), b.image_size).map_err(|e| e.to_string());
        assert!(e.is_err_and(|e| e.contains("differs from the image in bytes 8192..")));
        let e = verify(&req, None, b.image_size).map_err(|e| e.to_string());
        assert!(e.is_err_and(|e| e.contains("differs from the image in bytes 0..")));
    }

    #[test]
    fn bmap_next_to_the_image() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let d = dir.path();
        std::fs::write(d.join("g.img.bmap"), "").ok();
        assert_eq!(find_bmap(&d.join("g.img")), Some(d.join("g.img.bmap")));
        assert_eq!(find_bmap(&d.join("g.img.zst")), Some(d.join("g.img.bmap")));
        assert_eq!(find_bmap(&d.join("other.img")), None);
        assert!(is_compressed(Path::new("a.wic.zst")));
        assert!(!is_compressed(Path::new("a.wic")));
    }
}
