//! A small synchronous rtnetlink client: the link, address and route
//! operations smarter-cni and smarter-dns need, one request and its
//! acknowledgement (or its dump) at a time. Feature `netlink`.
//!
//! Synchronous on purpose: the CNI plugin is a short-lived process doing a
//! dozen requests and smarter-dns makes three at start, so an async runtime
//! would only add start-up time and code (docs/decisions/0020).
//! A socket belongs to the network namespace it was created in;
//! [`Netlink::in_netns`] creates one inside a container's namespace on a
//! short-lived dedicated thread (namespaces are per thread), after which any
//! thread may use it.
//!
//! This module is the only place in the workspace that opens a netlink
//! socket (clippy's `disallowed-methods` keeps `socket(2)` out of the
//! services). The socket is an [`OwnedFd`], closed by its drop.
//!
//! Dumps (`links`, `addresses`, `routes`) are retried when the kernel marks
//! a reply `NLM_F_DUMP_INTR`: the table changed while the dump was being
//! read in several parts, so it may miss or repeat entries. The whole dump
//! is read again, at most [`DUMP_ATTEMPTS`] times, then
//! [`NetlinkError::DumpInterrupted`] names the request
//! (docs/decisions/0110-one-netlink-client.md).
//!
//! [`nftables`] reads nf_tables state (a table, the rules of a table) over
//! `NETLINK_NETFILTER` sockets opened the same way, for smarter-cni's
//! check that its rules are still in place
//! (docs/decisions/0134-cni-nft-rules-check.md).
//!
//! Limitations: IPv4 routes and IPv4 address dumps only (what the CNI
//! plugin needs); host addresses may be IPv4 or IPv6.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub mod nftables;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::sys::socket::{
    AddressFamily as SocketFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// How many times a dump is read in full before giving up when the kernel
/// keeps marking it interrupted (containernetworking's `netlinksafe` uses
/// the same bound).
pub const DUMP_ATTEMPTS: u32 = 5;

/// Size of a netlink message header.
const HEADER_LEN: usize = 16;

/// Netlink failures.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused a request, or the socket failed.
    #[error("netlink {op}: {source}")]
    Io {
        /// What we asked for, e.g. `add veth veth1234 peer eth0`.
        op: String,
        /// The errno.
        source: std::io::Error,
    },
    /// The kernel's answer did not decode.
    #[error("netlink {op}: cannot decode reply: {detail}")]
    Decode {
        /// What we asked for.
        op: String,
        /// The decoder's message.
        detail: String,
    },
    /// Opening or entering a network namespace failed.
    #[error("network namespace {path}: cannot {op}: {source}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// `open` or `setns`.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Every attempt at a dump was interrupted by a concurrent change
    /// (`NLM_F_DUMP_INTR`), so no consistent answer was read.
    #[error("netlink {op}: interrupted by concurrent changes {attempts} times in a row")]
    DumpInterrupted {
        /// The dump, e.g. `dump addresses`.
        op: String,
        /// How many times it was read.
        attempts: u32,
    },
}

impl NetlinkError {
    /// The errno the kernel returned, if this is a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } | Self::Netns { source, .. } => source.raw_os_error(),
            Self::Decode { .. } | Self::DumpInterrupted { .. } => None,
        }
    }

    /// The object already exists.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH)
        )
    }

    /// The kernel does not support what was asked (e.g. a link type it
    /// has no driver for).
    pub fn is_not_supported(&self) -> bool {
        self.errno() == Some(libc::EOPNOTSUPP)
    }
}

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Bridge (controller) index.
    pub controller: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// `bridge`, `veth`... when the kernel says.
    pub kind: Option<String>,
}

impl Link {
    /// `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> Option<String> {
        self.mac.map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        })
    }

    fn from_message(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            controller: None,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name.clone_from(n),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(a);
                    l.mac = Some(mac);
                }
                LinkAttribute::Mtu(m) => l.mtu = Some(*m),
                LinkAttribute::Controller(c) => l.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// An IPv4 address with its prefix length, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Prefix {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub len: u8,
}

impl Ipv4Prefix {
    /// The broadcast address of the prefix; `None` for /31 and /32, which
    /// have none.
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        (self.len < 31).then(|| {
            let host = u32::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
            Ipv4Addr::from(u32::from(self.addr) | host)
        })
    }
}

/// A route in the main table (IPv4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    /// Destination (`0.0.0.0/0` for the default route).
    pub dst: Ipv4Prefix,
    /// Gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface.
    pub oif: Option<u32>,
}

/// An rtnetlink socket bound to one network namespace.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
}

/// What every netlink client here keeps per socket (rtnetlink, and
/// netfilter for [`nftables`]): the descriptor, the last request's
/// sequence number, the receive buffer and the dump retry policy.
#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
    seq: u32,
    /// Receive buffer, grown to the largest datagram seen.
    buf: Vec<u8>,
    dump_attempts: u32,
    interrupted_dumps: u64,
}

impl Socket {
    /// A socket of `protocol` with a receive buffer of `buf_len` bytes to
    /// start with.
    fn open(protocol: SockProtocol, buf_len: usize) -> Result<Self, NetlinkError> {
        Ok(Self {
            fd: open_socket(protocol)?,
            seq: 1,
            buf: vec![0; buf_len],
            dump_attempts: DUMP_ATTEMPTS,
            interrupted_dumps: 0,
        })
    }

    /// The sequence number of the next request.
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send request `out`, numbered by the last [`Socket::next_seq`], and
    /// hand each reply datagram and that number to `parse` until it says
    /// the reply is complete.
    fn round_trip(
        &mut self,
        op: &str,
        out: &[u8],
        mut parse: impl FnMut(u32, &[u8]) -> Result<bool, NetlinkError>,
    ) -> Result<(), NetlinkError> {
        send_request(&self.fd, op, out)?;
        loop {
            let n = recv_datagram(&self.fd, &mut self.buf, op)?;
            if parse(self.seq, &self.buf[..n])? {
                return Ok(());
            }
        }
    }

    /// Count a dump the kernel interrupted (`attempt` of them so far).
    fn dump_interrupted(&mut self, op: &str, attempt: u32) {
        self.interrupted_dumps += 1;
        tracing::debug!(
            op,
            attempt,
            "netlink dump interrupted by a concurrent change"
        );
    }

    /// The error once every attempt at a dump was interrupted.
    fn dump_gave_up(&self, op: &str) -> NetlinkError {
        NetlinkError::DumpInterrupted {
            op: op.to_string(),
            attempts: self.dump_attempts,
        }
    }
}

fn io_err(op: &str) -> impl FnOnce(nix::Error) -> NetlinkError + '_ {
    move |e| NetlinkError::Io {
        op: op.to_string(),
        source: std::io::Error::from(e),
    }
}

/// A netlink socket of `protocol` (rtnetlink, or netfilter for
/// [`nftables`]), bound and connected to the kernel, in the calling
/// thread's network namespace.
fn open_socket(protocol: SockProtocol) -> Result<OwnedFd, NetlinkError> {
    // `expect`, not `allow`: clippy fails here if clippy.toml's rule
    // stops covering this call, i.e. stops keeping it out of the rest.
    #[expect(
        clippy::disallowed_methods,
        reason = "this module is the one place that opens netlink sockets"
    )]
    let fd = nix::sys::socket::socket(
        SocketFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        protocol,
    )
    .map_err(io_err("open socket"))?;
    let kernel = NetlinkAddr::new(0, 0);
    nix::sys::socket::bind(fd.as_raw_fd(), &kernel).map_err(io_err("bind socket"))?;
    nix::sys::socket::connect(fd.as_raw_fd(), &kernel).map_err(io_err("connect socket"))?;
    Ok(fd)
}

/// Run `open` on a short-lived thread that has entered the network
/// namespace at `path` (namespaces are per thread, so no other thread's
/// changes); a socket it opens stays in that namespace.
fn in_netns<T>(
    path: &Path,
    open: impl FnOnce() -> Result<T, NetlinkError> + Send,
) -> Result<T, NetlinkError>
where
    T: Send,
{
    let ns = std::fs::File::open(path).map_err(|source| NetlinkError::Netns {
        path: path.to_path_buf(),
        op: "open",
        source,
    })?;
    let path = path.to_path_buf();
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetlinkError::Netns {
                    path: path.clone(),
                    op: "setns",
                    source: std::io::Error::from(e),
                }
            })?;
            open()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetlinkError::Netns {
                path: path.clone(),
                op: "run namespace thread",
                source: std::io::Error::other("thread panicked"),
            })
        })
    })
}

/// Send one request datagram, retrying on EINTR.
fn send_request(fd: &OwnedFd, op: &str, data: &[u8]) -> Result<(), NetlinkError> {
    loop {
        match nix::sys::socket::send(fd.as_raw_fd(), data, MsgFlags::empty()) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(io_err(op)(e)),
        }
    }
}

/// Receive one datagram into `buf`, growing it first when the next
/// datagram is larger; returns its length.
fn recv_datagram(fd: &OwnedFd, buf: &mut Vec<u8>, op: &str) -> Result<usize, NetlinkError> {
    let fd = fd.as_raw_fd();
    loop {
        // MSG_TRUNC makes the kernel report the datagram's full size.
        match nix::sys::socket::recv(fd, buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
            Ok(n) if n > buf.len() => buf.resize(n, 0),
            Ok(_) => break,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(io_err(op)(e)),
        }
    }
    loop {
        match nix::sys::socket::recv(fd, buf, MsgFlags::empty()) {
            Ok(n) => return Ok(n.min(buf.len())),
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(io_err(op)(e)),
        }
    }
}

/// What one reply datagram said about the request.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reply {
    /// The messages that answer the request, in order.
    messages: Vec<RouteNetlinkMessage>,
    /// A message of the dump carried `NLM_F_DUMP_INTR`.
    interrupted: bool,
    /// The acknowledgement or `NLMSG_DONE` arrived: nothing more follows.
    complete: bool,
}

/// Decode one datagram from the kernel into `reply`: the messages whose
/// sequence number is `seq` (others belong to an earlier request and are
/// skipped), the dump-interrupted flag, and whether the answer is complete.
fn parse_datagram(op: &str, seq: u32, data: &[u8], reply: &mut Reply) -> Result<(), NetlinkError> {
    let mut off = 0usize;
    while off + HEADER_LEN <= data.len() {
        let len =
            u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]) as usize;
        if len < HEADER_LEN || off + len > data.len() {
            return Err(NetlinkError::Decode {
                op: op.to_string(),
                detail: format!("bad message length {len}"),
            });
        }
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..off + len]).map_err(
            |e| NetlinkError::Decode {
                op: op.to_string(),
                detail: e.to_string(),
            },
        )?;
        off += (len + 3) & !3;
        if m.header.sequence_number != seq {
            continue;
        }
        // The kernel sets the flag on every message of a dump part read
        // after the table changed, including NLMSG_DONE.
        if m.header.flags & NLM_F_DUMP_INTR != 0 {
            reply.interrupted = true;
        }
        match m.payload {
            NetlinkPayload::Error(e) => {
                return match e.code {
                    None => {
                        reply.complete = true;
                        Ok(())
                    }
                    Some(code) => Err(NetlinkError::Io {
                        op: op.to_string(),
                        source: std::io::Error::from_raw_os_error(-code.get()),
                    }),
                };
            }
            NetlinkPayload::Done(_) => {
                reply.complete = true;
                return Ok(());
            }
            NetlinkPayload::InnerMessage(inner) => reply.messages.push(inner),
            _ => {}
        }
    }
    Ok(())
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        Ok(Self {
            sock: Socket::open(SockProtocol::NetlinkRoute, 32 * 1024)?,
        })
    }

    /// A socket inside the network namespace at `path` (e.g.
    /// `/var/run/netns/x` or `/proc/123/ns/net`), created on a dedicated
    /// thread so no other thread's namespace changes.
    pub fn in_netns(path: &Path) -> Result<Self, NetlinkError> {
        in_netns(path, Self::new)
    }

    /// How many times a dump is read before [`NetlinkError::DumpInterrupted`]
    /// (at least once; default [`DUMP_ATTEMPTS`]).
    pub fn set_dump_attempts(&mut self, attempts: u32) {
        self.sock.dump_attempts = attempts.max(1);
    }

    /// How many dumps on this socket the kernel interrupted (each was read
    /// again or ended in [`NetlinkError::DumpInterrupted`]).
    pub fn interrupted_dumps(&self) -> u64 {
        self.sock.interrupted_dumps
    }

    /// Send `msg` with `flags` (plus REQUEST and ACK) and read the answer
    /// to the end: the acknowledgement, an error, or NLMSG_DONE.
    fn exchange(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Reply, NetlinkError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sock.next_seq();
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        let mut reply = Reply::default();
        self.sock.round_trip(op, &out, |seq, data| {
            parse_datagram(op, seq, data, &mut reply)?;
            Ok(reply.complete)
        })?;
        Ok(reply)
    }

    /// A request answered by an acknowledgement (and, for a get, the
    /// object).
    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.exchange(op, msg, flags).map(|r| r.messages)
    }

    /// A dump, read again while the kernel marks it interrupted.
    fn dump(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        for attempt in 1..=self.sock.dump_attempts {
            let reply = self.exchange(op, msg.clone(), NLM_F_DUMP)?;
            if !reply.interrupted {
                return Ok(reply.messages);
            }
            self.sock.dump_interrupted(op, attempt);
        }
        Err(self.sock.dump_gave_up(op))
    }

    /// Look a link up by name; `None` when absent.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("get link {name}"),
            RouteNetlinkMessage::GetLink(m),
            0,
        ) {
            Ok(msgs) => Ok(msgs.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let msgs = self.dump(
            "dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Create a bridge with a fixed MAC address ([`random_mac`]): a bridge
    /// whose MAC the kernel chose takes the lowest MAC of its ports, so it
    /// changes when that pod leaves, and every other pod's ARP entry for the
    /// gateway goes stale (no DNS, no default route) until it expires.
    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::Address(random_mac().to_vec()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("add bridge {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
    }

    /// Create a `dummy` link. Fails with EEXIST when `name` exists and with
    /// EOPNOTSUPP ([`NetlinkError::is_not_supported`]) when the kernel has
    /// no dummy driver.
    pub fn add_dummy(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        self.request(
            &format!("create dummy interface {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
    }

    /// Create a veth pair: `host` here, up and already a port of
    /// `controller` (one kernel operation, so a killed caller never leaves an
    /// unattached host end), and `peer` directly inside the namespace open as
    /// `peer_netns`.
    pub fn add_veth(
        &mut self,
        host: &str,
        controller: u32,
        peer: &str,
        peer_netns: &impl AsFd,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_fd().as_raw_fd()));
        if let Some(mtu) = mtu {
            p.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::Controller(controller));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(
            &format!("add veth {host} peer {peer}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
    }

    /// Set a link up, optionally enslaving it to `controller` and setting
    /// its MTU, in one request.
    pub fn set_up(
        &mut self,
        index: u32,
        controller: Option<u32>,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(c) = controller {
            m.attributes.push(LinkAttribute::Controller(c));
        }
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(
            &format!("set link {index} up"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
        .map(|_| ())
    }

    /// Turn hairpin mode of a bridge port on or off.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.request(
            &format!("set hairpin on link {index}"),
            RouteNetlinkMessage::NewLink(m),
            0,
        )
        .map(|_| ())
    }

    /// Delete a link.
    pub fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(
            &format!("delete link {index}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )
        .map(|_| ())
    }

    /// Add an IPv4 address with its prefix (and the prefix's broadcast
    /// address); an existing identical address is fine.
    pub fn add_address(&mut self, index: u32, net: Ipv4Prefix) -> Result<(), NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = net.len;
        m.header.index = index;
        m.attributes
            .push(AddressAttribute::Local(IpAddr::V4(net.addr)));
        m.attributes
            .push(AddressAttribute::Address(IpAddr::V4(net.addr)));
        if let Some(b) = net.broadcast() {
            m.attributes.push(AddressAttribute::Broadcast(b));
        }
        exists_is_fine(self.request(
            &format!("add address {}/{} to link {index}", net.addr, net.len),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ))
    }

    /// Put `ip` on a link as a host address (/32 or /128), without
    /// duplicate address detection, replacing an existing one.
    pub fn add_host_address(&mut self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.flags = AddressHeaderFlags::Nodad;
        (m.header.family, m.header.prefix_len) = match ip {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        exists_is_fine(self.request(
            &format!("add address {ip} to link {index}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        ))
    }

    /// IPv4 addresses of a link.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Ipv4Prefix>, NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let msgs = self.dump("dump addresses", RouteNetlinkMessage::GetAddress(m))?;
        let mut out = Vec::new();
        for r in msgs {
            if let RouteNetlinkMessage::NewAddress(a) = r
                && a.header.index == index
                && a.header.prefix_len <= 32
            {
                for attr in &a.attributes {
                    if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                        out.push(Ipv4Prefix {
                            addr: *ip,
                            len: a.header.prefix_len,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Add an IPv4 route in the main table; an existing one is fine.
    pub fn add_route(&mut self, route: &Route4) -> Result<(), NetlinkError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = route.dst.len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if route.dst.len > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    route.dst.addr,
                )));
        }
        if let Some(gw) = route.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = route.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        exists_is_fine(self.request(
            &format!(
                "add route {}/{} via {:?}",
                route.dst.addr, route.dst.len, route.gateway
            ),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ))
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route4>, NetlinkError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        let msgs = self.dump("dump routes", RouteNetlinkMessage::GetRoute(m))?;
        let mut out = Vec::new();
        for r in msgs {
            let RouteNetlinkMessage::NewRoute(r) = r else {
                continue;
            };
            if r.header.table != RouteHeader::RT_TABLE_MAIN
                || r.header.destination_prefix_length > 32
            {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    _ => {}
                }
            }
            out.push(Route4 {
                dst: Ipv4Prefix {
                    addr: dst,
                    len: r.header.destination_prefix_length,
                },
                gateway,
                oif,
            });
        }
        Ok(out)
    }
}

/// A creation that found the object already there succeeded (requests
/// are idempotent for their callers).
fn exists_is_fine<T>(r: Result<T, NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A random locally administered unicast MAC address (what the kernel picks
/// for a new bridge, but given explicitly, so the kernel keeps it).
pub fn random_mac() -> [u8; 6] {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's random source.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    let b = h.finish().to_le_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DoneMessage, ErrorMessage, NLM_F_MULTIPART};

    fn bytes(seq: u32, flags: u16, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = flags;
        let mut m = NetlinkMessage::new(header, payload);
        m.finalize();
        let mut b = vec![0u8; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    fn link(index: u32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut l = LinkMessage::default();
        l.header.index = index;
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
    }

    #[test]
    fn a_dump_part_marked_interrupted_marks_the_reply() {
        let mut part = bytes(7, NLM_F_MULTIPART, link(1));
        part.extend(bytes(7, NLM_F_MULTIPART | NLM_F_DUMP_INTR, link(2)));
        let mut r = Reply::default();
        parse_datagram("dump links", 7, &part, &mut r).unwrap();
        assert!(r.interrupted);
        assert!(!r.complete);
        assert_eq!(r.messages.len(), 2);
        let done = bytes(
            7,
            NLM_F_MULTIPART,
            NetlinkPayload::Done(DoneMessage::default()),
        );
        parse_datagram("dump links", 7, &done, &mut r).unwrap();
        assert!(r.complete);
    }

    #[test]
    fn the_flag_on_done_alone_counts_too() {
        let mut r = Reply::default();
        let part = bytes(3, NLM_F_MULTIPART, link(1));
        parse_datagram("dump links", 3, &part, &mut r).unwrap();
        assert!(!r.interrupted);
        let done = bytes(
            3,
            NLM_F_MULTIPART | NLM_F_DUMP_INTR,
            NetlinkPayload::Done(DoneMessage::default()),
        );
        parse_datagram("dump links", 3, &done, &mut r).unwrap();
        assert!(r.interrupted && r.complete);
    }

    #[test]
    fn replies_to_an_earlier_request_are_skipped() {
        let mut data = bytes(4, NLM_F_DUMP_INTR, link(9));
        data.extend(bytes(5, 0, link(1)));
        let mut r = Reply::default();
        parse_datagram("get link", 5, &data, &mut r).unwrap();
        assert!(!r.interrupted);
        assert_eq!(r.messages.len(), 1);
    }

    #[test]
    fn a_negative_ack_is_the_errno() {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-libc::EEXIST);
        let data = bytes(2, 0, NetlinkPayload::Error(e));
        let err = parse_datagram("add bridge br0", 2, &data, &mut Reply::default()).unwrap_err();
        assert!(err.is_exists());
        assert_eq!(
            err.to_string(),
            format!(
                "netlink add bridge br0: {}",
                std::io::Error::from_raw_os_error(libc::EEXIST)
            )
        );
        let ack = bytes(2, 0, NetlinkPayload::Error(ErrorMessage::default()));
        let mut r = Reply::default();
        parse_datagram("add bridge br0", 2, &ack, &mut r).unwrap();
        assert!(r.complete);
    }

    #[test]
    fn a_truncated_message_is_a_decode_error() {
        let mut data = bytes(2, 0, link(1));
        data[0] = 200; // longer than the datagram
        let err = parse_datagram("get link", 2, &data, &mut Reply::default()).unwrap_err();
        assert!(matches!(err, NetlinkError::Decode { .. }), "{err}");
    }

    #[test]
    fn broadcast_of_a_prefix() {
        let p = |a: [u8; 4], len| Ipv4Prefix {
            addr: Ipv4Addr::from(a),
            len,
        };
        assert_eq!(
            p([10, 9, 0, 1], 24).broadcast(),
            Some(Ipv4Addr::new(10, 9, 0, 255))
        );
        assert_eq!(p([10, 9, 0, 1], 0).broadcast(), Some(Ipv4Addr::BROADCAST));
        assert_eq!(p([10, 9, 0, 1], 31).broadcast(), None);
        assert_eq!(p([10, 9, 0, 1], 32).broadcast(), None);
    }
}
