//! `smarter-flash`: write a SMARTER gateway image to an SD card or any block
//! device, verify it, and put the provisioning file on its boot partition.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use smarter_provision::flash::{self, FlashError, Request};

const PROGRAM: &str = "smarter-flash";

/// Write a gateway image (with bmaptool) to a block device, verify it by
/// reading it back, and write the first-boot provisioning file to its boot
/// partition. Refuses, before writing anything, a mounted or in-use device,
/// the disk this computer runs from, a device smaller than the image and a
/// provisioning file that does not validate.
///
/// Exit status: 0 written and verified, 2 refused (nothing written),
/// 1 failed while writing or verifying.
#[derive(Debug, Parser)]
#[command(name = "smarter-flash", version, about, long_about)]
struct Cli {
    /// The image file (raw, or compressed with its bmap).
    #[arg(long, short = 'i', value_name = "IMAGE")]
    image: PathBuf,
    /// The image's block map (default: IMAGE.bmap next to the image).
    #[arg(long, value_name = "FILE", conflicts_with = "no_bmap")]
    bmap: Option<PathBuf>,
    /// Copy every byte of the image, without a block map (slower).
    #[arg(long)]
    no_bmap: bool,
    /// The whole target device, e.g. /dev/sdb or /dev/mmcblk0.
    #[arg(
        long,
        short = 'd',
        value_name = "DEVICE",
        required_unless_present = "image_only"
    )]
    device: Option<PathBuf>,
    /// Write no device: put the provisioning file into IMAGE's own boot
    /// partition, for images another tool writes to the board (uuu, tegraflash).
    #[arg(long, requires = "provision", conflicts_with_all = ["device", "bmap", "no_bmap"])]
    image_only: bool,
    /// Provisioning file (smarter-provision.toml) to write to the boot partition.
    #[arg(long, short = 'p', value_name = "FILE")]
    provision: Option<PathBuf>,
    /// Boot partition number (default: the partition named boot, else 1).
    #[arg(long, value_name = "N")]
    boot_partition: Option<u32>,
    /// Log filter, e.g. `info` or `debug`; RUST_LOG overrides it.
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = smarter_common::logging::init(&cli.log_level) {
        eprintln!("{PROGRAM}: error: {e}");
        return ExitCode::FAILURE;
    }
    // Capabilities are not dropped: bmaptool, mtools and sfdisk run as
    // children and need root's access to the device.
    if cli.image_only {
        let Some(provision) = cli.provision else {
            eprintln!("{PROGRAM}: error: --image-only needs --provision");
            return ExitCode::from(2);
        };
        return match flash::provision_image(&cli.image, &provision, cli.boot_partition) {
            Ok(spec) => {
                println!("{PROGRAM}: wrote and read back the provisioning file at {spec}");
                ExitCode::SUCCESS
            }
            Err(e) => report(&e),
        };
    }
    let Some(device) = cli.device else {
        eprintln!("{PROGRAM}: error: give --device (or --image-only)");
        return ExitCode::from(2);
    };
    let req = Request {
        image: cli.image,
        bmap: cli.bmap,
        no_bmap: cli.no_bmap,
        device,
        provision: cli.provision,
        boot_partition: cli.boot_partition,
    };
    let mut say = |line: &str| println!("{PROGRAM}: {line}");
    match flash::flash(&req, &flash::device::Roots::default(), &mut say) {
        Ok(done) => {
            println!(
                "{PROGRAM}: done: {} written and verified ({} bytes read back){}",
                req.device.display(),
                done.verified_bytes,
                if done.provisioned_at.is_some() {
                    ", provisioning file in place"
                } else {
                    ""
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => report(&e),
    }
}

fn report(e: &FlashError) -> ExitCode {
    match e {
        FlashError::Refused(_) => {
            eprintln!("{PROGRAM}: {e}");
            ExitCode::from(2)
        }
        FlashError::Failed(_) => {
            eprintln!("{PROGRAM}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
