//! Built-in IPAM: IPv4 addresses allocated from a subnet, persisted as one
//! file per address under `<dataDir>/<network>/`, guarded by an exclusive
//! `flock` on `<dataDir>/<network>/lock`.
//!
//! - Concurrent ADDs (the kubelet starts pods in parallel) serialise on the
//!   lock; the kernel drops the lock when a process dies, even by SIGKILL.
//! - Each allocation file is written to a hidden temporary name and renamed
//!   into place, so a killed ADD leaves either no allocation or a complete
//!   one. A complete allocation whose container never came up is released by
//!   GC (the runtime does not list it) or by the next DEL for that id.
//! - ADD for an id+ifname that already holds an address returns the same
//!   address (retries are idempotent); DEL of an unknown id succeeds.
//! - Addresses are handed out round-robin after the last one reserved, so a
//!   freed address is not reused at once (stale DNS answers and ARP caches
//!   have time to age out).
//! - Files are not fsynced: the state survives process crashes, not power
//!   loss; after a reboot every container is re-added anyway.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// An IPv4 address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// A new net; `prefix` must be at most 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then_some(Self { addr, prefix })
    }

    /// The address part.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The network address with the same prefix.
    pub fn network(&self) -> Self {
        Self {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// The `n`th address of the network (saturating at broadcast).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        let base = u32::from(self.network().addr);
        let last = u32::from(self.broadcast());
        Ipv4Addr::from(base.saturating_add(n).min(last))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or("expected ADDRESS/PREFIX")?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address (IPv6 is not supported)"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a prefix length"))?;
        Self::new(addr, prefix).ok_or_else(|| format!("prefix /{prefix} is larger than 32"))
    }
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Kubernetes namespace, used by tenant isolation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name, for humans reading the state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// IPAM failures.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every address of the range is taken.
    #[error("no free address in {start}..={end}")]
    Exhausted {
        /// First address of the range.
        start: Ipv4Addr,
        /// Last address of the range.
        end: Ipv4Addr,
    },
    /// A file system operation failed.
    #[error("IPAM state {path}: cannot {op}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> IpamError {
    let path = path.to_path_buf();
    move |source| IpamError::Io { path, op, source }
}

/// The allocation state of one network, locked for the lifetime of the value.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

const LAST_RESERVED: &str = "last_reserved_ip";
const LOCK: &str = "lock";

impl Store {
    /// Open (creating) `<data_dir>/<network>/` and take its exclusive lock,
    /// waiting for other plugin processes.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, IpamError> {
        let dir = data_dir.join(network);
        std::fs::create_dir_all(&dir).map_err(io(&dir, "create directory"))?;
        let lock_path = dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path, "open lock file"))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io(&lock_path, "lock")(std::io::Error::from(errno)))?;
        Ok(Self { dir, _lock: lock })
    }

    /// The directory holding this network's state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every allocation. Unreadable or foreign files named like addresses
    /// count as taken with an unknown owner (`None`), so they are never
    /// handed out twice.
    pub fn list(&self) -> Result<BTreeMap<Ipv4Addr, Option<Owner>>, IpamError> {
        let mut out = BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir).map_err(io(&self.dir, "list"))?;
        for entry in entries {
            let entry = entry.map_err(io(&self.dir, "list"))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let owner = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Owner>(&b).ok());
            out.insert(ip, owner);
        }
        Ok(out)
    }

    /// Addresses held by `container_id`/`ifname`.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|(_, o)| {
                o.as_ref()
                    .is_some_and(|o| o.container_id == container_id && o.ifname == ifname)
            })
            .map(|(ip, _)| ip)
            .collect())
    }

    /// Allocate an address in `start..=end` except `reserved`, for `owner`;
    /// returns the existing one if the owner already holds one.
    pub fn allocate(
        &self,
        start: Ipv4Addr,
        end: Ipv4Addr,
        reserved: &[Ipv4Addr],
        owner: &Owner,
    ) -> Result<Ipv4Addr, IpamError> {
        let taken = self.list()?;
        if let Some((ip, _)) = taken.iter().find(|(_, o)| {
            o.as_ref()
                .is_some_and(|o| o.container_id == owner.container_id && o.ifname == owner.ifname)
        }) {
            return Ok(*ip);
        }
        let (s, e) = (u32::from(start), u32::from(end));
        let last = std::fs::read(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|t| String::from_utf8_lossy(&t).trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|l| (s..=e).contains(l));
        let first = match last {
            Some(l) if l < e => l + 1,
            _ => s,
        };
        let size = u64::from(e - s) + 1;
        for i in 0..size {
            // Walk first..=e then s..first without overflow.
            let off = (u64::from(first - s) + i) % size;
            let candidate = Ipv4Addr::from(s + off as u32);
            if taken.contains_key(&candidate) || reserved.contains(&candidate) {
                continue;
            }
            self.write_owner(candidate, owner)?;
            // Only an optimisation for round-robin order: failure is harmless.
            self.write_last_reserved(candidate);
            return Ok(candidate);
        }
        Err(IpamError::Exhausted { start, end })
    }

    /// Overwrite `last_reserved_ip` in place with a fixed-width line,
    /// never truncating: truncating frees the file's block, and on ext4
    /// mounted with `discard` (and no journal) freeing a block waits for
    /// the disk's discard, measured at 1-3 ms of every ADD. The padding
    /// covers any older, shorter content; readers trim it.
    fn write_last_reserved(&self, ip: Ipv4Addr) {
        let path = self.dir.join(LAST_RESERVED);
        let line = format!("{:<15}\n", ip.to_string());
        let written = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::debug!(path = %path.display(), error = %e, "cannot record the last reserved address");
        }
    }

    fn write_owner(&self, ip: Ipv4Addr, owner: &Owner) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        let tmp = self.dir.join(format!(".{ip}.{}.tmp", std::process::id()));
        let body = serde_json::to_vec(owner).unwrap_or_default();
        let mut f = File::create(&tmp).map_err(io(&tmp, "create"))?;
        if let Err(e) = f.write_all(&body) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp, "write")(e));
        }
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(&path, "rename into place")(e)
        })
    }

    /// Release whatever `container_id`/`ifname` holds; returns the addresses
    /// freed (empty when it held none: DEL is idempotent).
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let ips = self.find(container_id, ifname)?;
        for ip in &ips {
            self.remove(*ip)?;
        }
        Ok(ips)
    }

    fn remove(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, "remove")(e)),
        }
    }

    /// Release every allocation whose owner is not in `valid`
    /// (container id, ifname), plus leftovers of killed writers. Returns
    /// what was released.
    pub fn gc(
        &self,
        valid: &[(String, String)],
    ) -> Result<Vec<(Ipv4Addr, Option<Owner>)>, IpamError> {
        let mut freed = Vec::new();
        for (ip, owner) in self.list()? {
            let keep = owner.as_ref().is_some_and(|o| {
                valid
                    .iter()
                    .any(|(id, ifn)| *id == o.container_id && *ifn == o.ifname)
            });
            if !keep {
                self.remove(ip)?;
                freed.push((ip, owner));
            }
        }
        // Temp files of writers killed between create and rename.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Owner {
        Owner {
            container_id: id.into(),
            ifname: "eth0".into(),
            namespace: Some("default".into()),
            pod: None,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    #[test]
    fn net_math() -> Result<(), String> {
        let n: Ipv4Net = "172.39.7.9/16".parse()?;
        assert_eq!(n.network().to_string(), "172.39.0.0/16");
        assert_eq!(n.broadcast(), ip("172.39.255.255"));
        assert!(n.contains(ip("172.39.200.1")));
        assert!(!n.contains(ip("172.40.0.1")));
        assert_eq!(n.network().nth(1), ip("172.39.0.1"));
        assert!("fd00::/64".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        Ok(())
    }

    #[test]
    fn allocate_idempotent_round_robin_release() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let s = Store::open(tmp.path(), "net")?;
        let gw = ip("10.0.0.1");
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.3"));
        let x = s.allocate(a, b, &[gw], &owner("x"))?;
        assert_eq!(x, ip("10.0.0.2"));
        assert_eq!(
            s.allocate(a, b, &[gw], &owner("x"))?,
            x,
            "same owner, same address"
        );
        let y = s.allocate(a, b, &[gw], &owner("y"))?;
        assert_eq!(y, ip("10.0.0.3"));
        assert!(matches!(
            s.allocate(a, b, &[gw], &owner("z")),
            Err(IpamError::Exhausted { .. })
        ));
        assert_eq!(s.release("x", "eth0")?, vec![x]);
        assert!(
            s.release("x", "eth0")?.is_empty(),
            "second release is a no-op"
        );
        assert_eq!(s.allocate(a, b, &[gw], &owner("z"))?, x, "wraps around");
        Ok(())
    }

    #[test]
    fn last_reserved_is_overwritten_in_place() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir()?;
        let s = Store::open(tmp.path(), "net")?;
        let lr = s.dir().join(LAST_RESERVED);
        // Written by an older version: longer, no newline, no padding.
        std::fs::write(&lr, "10.0.0.200")?;
        let inode = std::fs::metadata(&lr)?.ino();
        let (a, b) = (ip("10.0.0.2"), ip("10.0.0.254"));
        assert_eq!(s.allocate(a, b, &[], &owner("x"))?, ip("10.0.0.201"));
        assert_eq!(std::fs::read_to_string(&lr)?, "10.0.0.201     \n");
        assert_eq!(s.allocate(a, b, &[], &owner("y"))?, ip("10.0.0.202"));
        assert_eq!(
            std::fs::metadata(&lr)?.ino(),
            inode,
            "same file, not replaced"
        );
        assert_eq!(std::fs::metadata(&lr)?.len(), 16);
        Ok(())
    }

    #[test]
    fn gc_keeps_valid_and_frees_rest() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let s = Store::open(tmp.path(), "net")?;
        let (a, b) = (ip("10.0.0.2"), ip("10.0.0.20"));
        let x = s.allocate(a, b, &[], &owner("x"))?;
        let _y = s.allocate(a, b, &[], &owner("y"))?;
        std::fs::write(s.dir().join("10.0.0.9"), b"garbage")?;
        std::fs::write(s.dir().join(".10.0.0.10.77.tmp"), b"{")?;
        let freed = s.gc(&[("x".into(), "eth0".into())])?;
        assert_eq!(freed.len(), 2);
        assert_eq!(s.list()?.keys().copied().collect::<Vec<_>>(), vec![x]);
        assert!(!s.dir().join(".10.0.0.10.77.tmp").exists());
        Ok(())
    }
}
