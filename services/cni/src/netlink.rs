//! A small synchronous rtnetlink client: the link, address and route
//! operations the plugin needs, one request and its acknowledgement at a
//! time.
//!
//! Synchronous on purpose: the plugin is a short-lived process doing a dozen
//! requests, so an async runtime would only add start-up time and code.
//! A socket belongs to the network namespace it was created in; [`Netlink::in_netns`]
//! creates one inside a container's namespace on a short-lived dedicated
//! thread (namespaces are per thread), after which any thread may use it.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::ipam::Ipv4Net;

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
}

impl NetlinkError {
    /// The errno the kernel returned, if this is a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } | Self::Netns { source, .. } => source.raw_os_error(),
            Self::Decode { .. } => None,
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

/// A route in the main table (IPv4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    /// Destination.
    pub dst: Ipv4Net,
    /// Gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface.
    pub oif: Option<u32>,
}

/// An rtnetlink socket bound to one network namespace.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn io_err(op: &str) -> impl FnOnce(std::io::Error) -> NetlinkError + '_ {
    move |source| NetlinkError::Io {
        op: op.to_string(),
        source,
    }
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err("open socket"))?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(io_err("bind socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io_err("connect socket"))?;
        Ok(Self { socket, seq: 1 })
    }

    /// A socket inside the network namespace at `path` (e.g.
    /// `/var/run/netns/x` or `/proc/123/ns/net`), created on a dedicated
    /// thread so no other thread's namespace changes.
    pub fn in_netns(path: &Path) -> Result<Self, NetlinkError> {
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
                Self::new()
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

    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(io_err(op))?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(io_err(op))?;
            let mut off = 0usize;
            while off + 16 <= data.len() {
                let len =
                    u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                        as usize;
                if len < 16 || off + len > data.len() {
                    return Err(NetlinkError::Decode {
                        op: op.to_string(),
                        detail: format!("bad message length {len}"),
                    });
                }
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..off + len])
                    .map_err(|e| NetlinkError::Decode {
                    op: op.to_string(),
                    detail: e.to_string(),
                })?;
                off += (len + 3) & !3;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(NetlinkError::Io {
                                op: op.to_string(),
                                source: std::io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
            }
        }
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
        let msgs = self.request(
            "dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
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

    /// Create a veth pair: `host` here, up and already a port of
    /// `controller` (one kernel operation, so a killed caller never leaves an
    /// unattached host end), and `peer` directly inside the namespace open as
    /// `peer_netns`.
    pub fn add_veth(
        &mut self,
        host: &str,
        controller: u32,
        peer: &str,
        peer_netns: &impl AsRawFd,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
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

    /// Add an IPv4 address; an existing identical address is fine.
    pub fn add_address(&mut self, index: u32, net: Ipv4Net) -> Result<(), NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = net.prefix();
        m.header.index = index;
        m.attributes
            .push(AddressAttribute::Local(IpAddr::V4(net.addr())));
        m.attributes
            .push(AddressAttribute::Address(IpAddr::V4(net.addr())));
        if net.prefix() < 31 {
            m.attributes
                .push(AddressAttribute::Broadcast(net.broadcast()));
        }
        match self.request(
            &format!("add address {net} to link {index}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.is_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// IPv4 addresses of a link.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Ipv4Net>, NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let msgs = self.request(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in msgs {
            if let RouteNetlinkMessage::NewAddress(a) = r
                && a.header.index == index
            {
                for attr in &a.attributes {
                    if let AddressAttribute::Local(IpAddr::V4(ip)) = attr
                        && let Some(n) = Ipv4Net::new(*ip, a.header.prefix_len)
                    {
                        out.push(n);
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
        m.header.destination_prefix_length = route.dst.prefix();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if route.dst.prefix() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    route.dst.addr(),
                )));
        }
        if let Some(gw) = route.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = route.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        match self.request(
            &format!("add route {} via {:?}", route.dst, route.gateway),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.is_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route4>, NetlinkError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        let msgs = self.request("dump routes", RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for r in msgs {
            let RouteNetlinkMessage::NewRoute(r) = r else {
                continue;
            };
            if r.header.table != RouteHeader::RT_TABLE_MAIN {
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
            if let Some(dst) = Ipv4Net::new(dst, r.header.destination_prefix_length) {
                out.push(Route4 { dst, gateway, oif });
            }
        }
        Ok(out)
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
