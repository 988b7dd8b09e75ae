//! The dummy interface that carries the cluster DNS address.
//!
//! The kubelet gives pods a link-local DNS address (default 169.254.0.2).
//! Instead of the original's iptables DNAT, smarter-dns owns that address:
//! it creates a `dummy` interface, puts the link-local listen addresses on
//! it (/32 or /128) and brings it up, over rtnetlink. All of this is
//! idempotent (an existing interface or address is fine), needs
//! CAP_NET_ADMIN and is done once at start, blocking, before the async
//! runtime starts. The messages are built by hand: three request kinds do
//! not justify a netlink crate.

use std::ffi::CString;
use std::net::IpAddr;

/// A netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A socket call or a kernel reply failed.
    #[error("netlink: cannot {op} {what}: {source}")]
    Netlink {
        /// What we were doing.
        op: &'static str,
        /// Interface or address concerned.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The interface name is not usable.
    #[error("bad interface name {0:?}")]
    BadName(String),
    /// The kernel has no `dummy` link type (CONFIG_DUMMY off, module not
    /// loadable, as in some containers).
    #[error("the kernel does not support dummy interfaces")]
    NoDummySupport,
}

/// The loopback interface, used when the kernel has no dummy support.
pub const LOOPBACK: &str = "lo";

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const NLA_F_NESTED: u16 = 1 << 15;

/// Whether an address belongs on the dummy interface (link-local), as
/// opposed to an address some other interface (the bridge) already owns.
pub fn belongs_on_dummy(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16) -> Self {
        let mut b = vec![0u8; NLMSG_HDRLEN];
        b[4..6].copy_from_slice(&kind.to_ne_bytes());
        b[6..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..12].copy_from_slice(&1u32.to_ne_bytes());
        Self(b)
    }

    fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.bytes(data)
    }

    fn nested(&mut self, kind: u16, inner: &[(u16, &[u8])]) -> &mut Self {
        let mut body = Msg(Vec::new());
        for (k, d) in inner {
            body.attr(*k, d);
        }
        self.attr(kind | NLA_F_NESTED, &body.0)
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// A NETLINK_ROUTE socket.
struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn open() -> std::io::Result<Self> {
        // SAFETY: plain socket(2) call with constant arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    /// Send one request and wait for its ACK; `Ok(Some(errno))` for a
    /// negative ACK so callers can accept EEXIST.
    fn request(&self, msg: &[u8]) -> std::io::Result<Option<i32>> {
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value
        // (pid 0 = the kernel) once the family is set.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: msg and sa are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.0,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = usize::try_from(n).unwrap_or(0);
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]);
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let len = usize::try_from(len).unwrap_or(0);
                if len < NLMSG_HDRLEN || off + len > n {
                    break;
                }
                if kind == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
                    let p = off + NLMSG_HDRLEN;
                    let err = i32::from_ne_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
                    return Ok((err != 0).then_some(-err));
                }
                off += (len + 3) & !3;
            }
        }
    }
}

fn nl_err(op: &'static str, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Netlink { op, what, source }
}

fn check(res: Option<i32>, ok: &[i32]) -> std::io::Result<()> {
    match res {
        None => Ok(()),
        Some(e) if ok.contains(&e) => Ok(()),
        Some(e) => Err(std::io::Error::from_raw_os_error(e)),
    }
}

fn if_index(name: &str) -> Result<i32, LinkError> {
    let c = CString::new(name).map_err(|_| LinkError::BadName(name.to_string()))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(LinkError::Netlink {
            op: "find",
            what: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    i32::try_from(idx).map_err(|_| LinkError::BadName(name.to_string()))
}

/// Create the dummy interface `name` (if missing; `lo` is used as it is),
/// put `addrs` on it and bring it up. Returns the interface index.
/// [`LinkError::NoDummySupport`] tells the caller to fall back to `lo`.
pub fn ensure_dummy(name: &str, addrs: &[IpAddr]) -> Result<i32, LinkError> {
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(LinkError::BadName(name.to_string()));
    }
    let sock = Socket::open().map_err(nl_err("open socket for", name))?;
    if name != LOOPBACK {
        let flags =
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        let mut m = Msg::new(RTM_NEWLINK, flags);
        let mut ifname = name.as_bytes().to_vec();
        ifname.push(0);
        m.bytes(&ifinfomsg(0, 0, 0))
            .attr(IFLA_IFNAME, &ifname)
            .nested(IFLA_LINKINFO, &[(IFLA_INFO_KIND, b"dummy")]);
        match sock.request(&m.finish()) {
            Ok(Some(e)) if e == libc::EOPNOTSUPP => return Err(LinkError::NoDummySupport),
            r => r
                .and_then(|r| check(r, &[libc::EEXIST]))
                .map_err(nl_err("create dummy interface", name))?,
        }
    }
    let index = if_index(name)?;
    for ip in addrs {
        let flags =
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE)
                as u16;
        let mut m = Msg::new(RTM_NEWADDR, flags);
        let (family, prefix, bytes) = match ip {
            IpAddr::V4(v4) => (libc::AF_INET as u8, 32u8, v4.octets().to_vec()),
            IpAddr::V6(v6) => (libc::AF_INET6 as u8, 128u8, v6.octets().to_vec()),
        };
        let mut ifa = vec![family, prefix, IFA_F_NODAD, 0];
        ifa.extend_from_slice(&index.to_ne_bytes());
        m.bytes(&ifa)
            .attr(IFA_LOCAL, &bytes)
            .attr(IFA_ADDRESS, &bytes);
        sock.request(&m.finish())
            .and_then(|r| check(r, &[libc::EEXIST]))
            .map_err(nl_err("add address", format!("{ip} on {name}")))?;
    }
    let iff_up = libc::IFF_UP as u32;
    let mut m = Msg::new(RTM_NEWLINK, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16);
    m.bytes(&ifinfomsg(index, iff_up, iff_up));
    sock.request(&m.finish())
        .and_then(|r| check(r, &[]))
        .map_err(nl_err("bring up", name))?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_addresses_go_on_the_dummy() {
        let v = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert!(belongs_on_dummy(&v("169.254.0.2")));
        assert!(belongs_on_dummy(&v("fe80::53")));
        assert!(!belongs_on_dummy(&v("172.39.0.1")));
        assert!(!belongs_on_dummy(&v("fd00::1")));
    }

    #[test]
    fn messages_are_aligned_and_sized() {
        let mut m = Msg::new(RTM_NEWLINK, 5);
        m.bytes(&ifinfomsg(0, 0, 0))
            .attr(IFLA_IFNAME, b"abc\0")
            .nested(IFLA_LINKINFO, &[(IFLA_INFO_KIND, b"dummy")]);
        let b = m.finish();
        assert_eq!(b.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len()
        );
        // header 16 + ifinfomsg 16 + ifname 8 + linkinfo (4 + kind 4+5 pad 3 = 12) 16
        assert_eq!(b.len(), 56);
    }
}
