//! Reading nftables state over netlink: `NETLINK_NETFILTER` sockets,
//! subsystem `NFNL_SUBSYS_NFTABLES`. Only the two questions smarter-cni
//! asks on every ADD: is a table there (and which incarnation of it: its
//! handle), and which rules does it hold (chain and handle of each).
//!
//! Writing rules stays with the `nft` binary (docs/decisions/0021): one
//! script, one kernel transaction. Reading is what must be cheap: one
//! request here costs tens of microseconds, starting `nft` milliseconds
//! (docs/decisions/0134-cni-nft-rules-check.md).
//!
//! Messages are built and parsed by hand: a netlink header, the 4-byte
//! `nfgenmsg` (address family, version 0, resource id 0) and attributes,
//! as `include/uapi/linux/netfilter/nf_tables.h` and `nfnetlink.h`
//! describe them. Numbers inside attributes are big-endian, strings are
//! NUL-terminated.

use std::path::Path;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use nix::sys::socket::SockProtocol;

use super::{HEADER_LEN, NetlinkError, Socket, in_netns};

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
const SUBSYS_NFTABLES: u16 = 10;
/// `NFNETLINK_V0`.
const NFNETLINK_V0: u8 = 0;
/// Size of `struct nfgenmsg`.
const NFGENMSG_LEN: usize = 4;

/// `enum nf_tables_msg_types` (the low byte of the message type).
const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_GETTABLE: u8 = 1;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_GETRULE: u8 = 7;

/// `enum nft_table_attributes`.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_USE: u16 = 3;
const NFTA_TABLE_HANDLE: u16 = 4;
/// `NFT_TABLE_F_DORMANT`: the table's chains are not hooked.
const NFT_TABLE_F_DORMANT: u32 = 1;

/// `enum nft_rule_attributes`.
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;

/// Netlink control message types.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`: flag bits of an attribute type.
const NLA_FLAGS: u16 = 0xc000;

/// An nftables address family (`NFPROTO_*`), named as `nft` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `inet` (IPv4 and IPv6).
    Inet,
    /// `ip` (IPv4).
    Ip,
    /// `ip6`.
    Ip6,
    /// `arp`.
    Arp,
    /// `bridge`.
    Bridge,
    /// `netdev`.
    Netdev,
}

impl Family {
    /// The `NFPROTO_*` number.
    pub fn code(self) -> u8 {
        match self {
            Self::Inet => 1,
            Self::Ip => 2,
            Self::Arp => 3,
            Self::Netdev => 5,
            Self::Bridge => 7,
            Self::Ip6 => 10,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Inet => "inet",
            Self::Ip => "ip",
            Self::Ip6 => "ip6",
            Self::Arp => "arp",
            Self::Bridge => "bridge",
            Self::Netdev => "netdev",
        })
    }
}

/// A table as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Its name.
    pub name: String,
    /// Its handle: numbered per network namespace and never reused there,
    /// so a table deleted and created again under the same name has a new
    /// one.
    pub handle: u64,
    /// `NFT_TABLE_F_*` flags.
    pub flags: u32,
    /// How many chains, sets and other objects it holds.
    pub use_count: u32,
}

impl Table {
    /// The table is dormant: its chains see no packets.
    pub fn dormant(&self) -> bool {
        self.flags & NFT_TABLE_F_DORMANT != 0
    }
}

/// A rule: where it is and its handle. A rule's handle is numbered per
/// table and never reused in it; changing a rule's expressions replaces
/// it with a rule of a new handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The table's name.
    pub table: String,
    /// The chain's name.
    pub chain: String,
    /// The rule's handle.
    pub handle: u64,
}

/// An nf_tables message of a reply: its type (`NFT_MSG_*`), the family of
/// its `nfgenmsg` and its attributes (type without flag bits, payload).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    kind: u8,
    family: u8,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Message {
    fn attr(&self, kind: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    fn string(&self, kind: u16) -> Option<String> {
        self.attr(kind).map(|v| {
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).into_owned()
        })
    }

    fn be32(&self, kind: u16) -> Option<u32> {
        self.attr(kind)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes)
    }

    fn be64(&self, kind: u16) -> Option<u64> {
        self.attr(kind)
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map(u64::from_be_bytes)
    }
}

/// What the reply datagrams to one request said so far.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reply {
    messages: Vec<Message>,
    interrupted: bool,
    complete: bool,
}

fn decode_err(op: &str, detail: impl Into<String>) -> NetlinkError {
    NetlinkError::Decode {
        op: op.to_string(),
        detail: detail.into(),
    }
}

/// Append one attribute (header, payload, padding to 4 bytes).
fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A string attribute's payload: the bytes and a terminating NUL.
fn strz(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One request: netlink header (type `SUBSYS_NFTABLES << 8 | msg`),
/// `nfgenmsg` for `family`, then `attrs`.
fn build_request(seq: u32, msg: u8, flags: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
    for (kind, payload) in attrs {
        put_attr(&mut out, *kind, payload);
    }
    let len = u32::try_from(out.len()).unwrap_or(u32::MAX);
    out[0..4].copy_from_slice(&len.to_ne_bytes());
    out[4..6].copy_from_slice(&((SUBSYS_NFTABLES << 8) | u16::from(msg)).to_ne_bytes());
    out[6..8].copy_from_slice(&flags.to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    // Port id 0: the kernel fills in the socket's.
    out
}

/// The attributes in `data` (a message's payload after `nfgenmsg`).
fn parse_attrs(op: &str, mut data: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
    let mut attrs = Vec::new();
    while data.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & !NLA_FLAGS;
        if len < 4 || len > data.len() {
            return Err(decode_err(op, format!("bad attribute length {len}")));
        }
        attrs.push((kind, data[4..len].to_vec()));
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(attrs)
}

fn ne_u16(d: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([d[at], d[at + 1]])
}

fn ne_u32(d: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// Decode one datagram into `reply`: the nf_tables messages whose sequence
/// number is `seq` (others answer an earlier request and are skipped), the
/// dump-interrupted flag, an error, and whether the answer is complete
/// (the acknowledgement or `NLMSG_DONE`).
fn parse_datagram(op: &str, seq: u32, data: &[u8], reply: &mut Reply) -> Result<(), NetlinkError> {
    let mut off = 0usize;
    while off + HEADER_LEN <= data.len() {
        let len = ne_u32(data, off) as usize;
        if len < HEADER_LEN || off + len > data.len() {
            return Err(decode_err(op, format!("bad message length {len}")));
        }
        let msg = &data[off..off + len];
        off += len.next_multiple_of(4);
        let (kind, flags) = (ne_u16(msg, 4), ne_u16(msg, 6));
        if ne_u32(msg, 8) != seq {
            continue;
        }
        // Set on every message of a dump part read after the rule set
        // changed, NLMSG_DONE included.
        if flags & NLM_F_DUMP_INTR != 0 {
            reply.interrupted = true;
        }
        let payload = &msg[HEADER_LEN..];
        match kind {
            NLMSG_ERROR | NLMSG_DONE => {
                // NLMSG_ERROR: errno (0 = acknowledgement) and the request's
                // header; NLMSG_DONE: the dump's status, maybe absent.
                let code = match payload.len() {
                    0 if kind == NLMSG_DONE => 0,
                    n if n >= 4 => {
                        i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]])
                    }
                    _ => return Err(decode_err(op, "short error message")),
                };
                if code != 0 {
                    return Err(NetlinkError::Io {
                        op: op.to_string(),
                        source: std::io::Error::from_raw_os_error(code.saturating_neg()),
                    });
                }
                reply.complete = true;
                return Ok(());
            }
            k if k >> 8 == SUBSYS_NFTABLES => {
                if payload.len() < NFGENMSG_LEN {
                    return Err(decode_err(op, "message without nfgenmsg"));
                }
                reply.messages.push(Message {
                    kind: (k & 0xff) as u8,
                    family: payload[0],
                    attrs: parse_attrs(op, &payload[NFGENMSG_LEN..])?,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn table_from(op: &str, m: &Message) -> Result<Table, NetlinkError> {
    Ok(Table {
        name: m
            .string(NFTA_TABLE_NAME)
            .ok_or_else(|| decode_err(op, "table without a name"))?,
        handle: m
            .be64(NFTA_TABLE_HANDLE)
            .ok_or_else(|| decode_err(op, "table without a handle"))?,
        flags: m.be32(NFTA_TABLE_FLAGS).unwrap_or(0),
        use_count: m.be32(NFTA_TABLE_USE).unwrap_or(0),
    })
}

fn rule_from(op: &str, m: &Message) -> Result<Rule, NetlinkError> {
    Ok(Rule {
        table: m
            .string(NFTA_RULE_TABLE)
            .ok_or_else(|| decode_err(op, "rule without a table"))?,
        chain: m
            .string(NFTA_RULE_CHAIN)
            .ok_or_else(|| decode_err(op, "rule without a chain"))?,
        handle: m
            .be64(NFTA_RULE_HANDLE)
            .ok_or_else(|| decode_err(op, "rule without a handle"))?,
    })
}

/// A `NETLINK_NETFILTER` socket bound to one network namespace, for
/// nf_tables requests.
#[derive(Debug)]
pub struct Nftables {
    sock: Socket,
}

impl Nftables {
    /// A socket in the calling thread's network namespace. Needs
    /// `CAP_NET_ADMIN` for every request, reads included.
    pub fn new() -> Result<Self, NetlinkError> {
        Ok(Self {
            sock: Socket::open(SockProtocol::NetlinkNetFilter, 16 * 1024)?,
        })
    }

    /// A socket inside the network namespace at `path`, created on a
    /// dedicated thread so no other thread's namespace changes.
    pub fn in_netns(path: &Path) -> Result<Self, NetlinkError> {
        in_netns(path, Self::new)
    }

    /// How many times a dump is read before [`NetlinkError::DumpInterrupted`]
    /// (at least once; default [`super::DUMP_ATTEMPTS`]).
    pub fn set_dump_attempts(&mut self, attempts: u32) {
        self.sock.dump_attempts = attempts.max(1);
    }

    /// How many dumps on this socket the kernel interrupted.
    pub fn interrupted_dumps(&self) -> u64 {
        self.sock.interrupted_dumps
    }

    fn exchange(
        &mut self,
        op: &str,
        msg: u8,
        flags: u16,
        family: Family,
        attrs: &[(u16, &[u8])],
    ) -> Result<Reply, NetlinkError> {
        let out = build_request(
            self.sock.next_seq(),
            msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            family.code(),
            attrs,
        );
        let mut reply = Reply::default();
        self.sock.round_trip(op, &out, |seq, data| {
            parse_datagram(op, seq, data, &mut reply)?;
            Ok(reply.complete)
        })?;
        Ok(reply)
    }

    /// The table `name` of `family`; `None` when there is none.
    pub fn table(&mut self, family: Family, name: &str) -> Result<Option<Table>, NetlinkError> {
        let op = format!("get table {family} {name}");
        let name_attr = strz(name);
        match self.exchange(
            &op,
            NFT_MSG_GETTABLE,
            0,
            family,
            &[(NFTA_TABLE_NAME, &name_attr)],
        ) {
            Ok(reply) => reply
                .messages
                .iter()
                .find(|m| m.kind == NFT_MSG_NEWTABLE && m.family == family.code())
                .map(|m| table_from(&op, m))
                .transpose(),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every rule of table `table` of `family`, chain by chain in the
    /// kernel's order, rules in their order in the chain. A missing table
    /// has no rules. Read again when the kernel marks the dump interrupted
    /// (the rule set changed meanwhile), at most [`super::DUMP_ATTEMPTS`] times.
    pub fn rules(&mut self, family: Family, table: &str) -> Result<Vec<Rule>, NetlinkError> {
        let op = format!("dump rules of table {family} {table}");
        let table_attr = strz(table);
        for attempt in 1..=self.sock.dump_attempts {
            let reply = self.exchange(
                &op,
                NFT_MSG_GETRULE,
                NLM_F_DUMP,
                family,
                &[(NFTA_RULE_TABLE, &table_attr)],
            )?;
            if reply.interrupted {
                self.sock.dump_interrupted(&op, attempt);
                continue;
            }
            let mut rules = Vec::new();
            for m in &reply.messages {
                if m.kind != NFT_MSG_NEWRULE || m.family != family.code() {
                    continue;
                }
                let r = rule_from(&op, m)?;
                // The kernel filters by table since Linux 4.x; older ones
                // send every rule of the family.
                if r.table == table {
                    rules.push(r);
                }
            }
            return Ok(rules);
        }
        Err(self.sock.dump_gave_up(&op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLM_F_MULTIPART;

    /// A reply message as the kernel builds it.
    fn message(seq: u32, kind: u16, flags: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = build_request(seq, 0, flags, family, attrs);
        m[4..6].copy_from_slice(&kind.to_ne_bytes());
        m
    }

    fn nft(msg: u8) -> u16 {
        (SUBSYS_NFTABLES << 8) | u16::from(msg)
    }

    fn error(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m.extend_from_slice(&(-errno).to_ne_bytes());
        m.extend_from_slice(&[0u8; HEADER_LEN]); // the request's header
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m
    }

    fn done(seq: u32, flags: u16) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN + 4];
        m[0..4].copy_from_slice(&(HEADER_LEN as u32 + 4).to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        m[6..8].copy_from_slice(&flags.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m
    }

    #[test]
    fn a_get_table_request_is_laid_out_as_the_kernel_expects() {
        let name = strz("smarter-cni-x");
        let r = build_request(
            7,
            NFT_MSG_GETTABLE,
            NLM_F_REQUEST | NLM_F_ACK,
            Family::Ip.code(),
            &[(NFTA_TABLE_NAME, &name)],
        );
        // 16 header + 4 nfgenmsg + 4 attribute header + 14 name (with NUL)
        // padded to 16.
        assert_eq!(r.len(), 40);
        assert_eq!(ne_u32(&r, 0), 40);
        assert_eq!(
            ne_u16(&r, 4),
            0x0a01,
            "NFNL_SUBSYS_NFTABLES << 8 | GETTABLE"
        );
        assert_eq!(ne_u16(&r, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(ne_u32(&r, 8), 7);
        assert_eq!(ne_u32(&r, 12), 0, "port id");
        assert_eq!(
            &r[16..20],
            &[2, 0, 0, 0],
            "NFPROTO_IPV4, version 0, res_id 0"
        );
        assert_eq!(ne_u16(&r, 20), 18, "attribute length excludes padding");
        assert_eq!(ne_u16(&r, 22), NFTA_TABLE_NAME);
        assert_eq!(&r[24..38], b"smarter-cni-x\0");
        assert_eq!(&r[38..40], &[0, 0]);
    }

    #[test]
    fn a_table_reply_and_its_ack_decode() {
        let name = strz("t");
        let flags = NFT_TABLE_F_DORMANT.to_be_bytes();
        let use_count = 2u32.to_be_bytes();
        let handle = 0x0102_0304_0506_0708u64.to_be_bytes();
        let mut data = message(
            5,
            nft(NFT_MSG_NEWTABLE),
            0,
            2,
            &[
                (NFTA_TABLE_NAME, &name),
                (NFTA_TABLE_FLAGS, &flags),
                (NFTA_TABLE_USE, &use_count),
                // The kernel pads 64-bit attributes with an empty PAD one.
                (5, &[]),
                // With the byte-order flag set, as some kernels send it.
                (NFTA_TABLE_HANDLE | 0x4000, &handle),
            ],
        );
        data.extend(error(5, 0));
        let mut reply = Reply::default();
        parse_datagram("get table", 5, &data, &mut reply).unwrap();
        assert!(reply.complete && !reply.interrupted);
        assert_eq!(reply.messages.len(), 1);
        let t = table_from("get table", &reply.messages[0]).unwrap();
        assert_eq!(
            t,
            Table {
                name: "t".into(),
                handle: 0x0102_0304_0506_0708,
                flags: 1,
                use_count: 2,
            }
        );
        assert!(t.dormant());
    }

    #[test]
    fn a_missing_table_is_enoent() {
        let mut reply = Reply::default();
        let err =
            parse_datagram("get table ip t", 3, &error(3, libc::ENOENT), &mut reply).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(
            err.to_string().starts_with("netlink get table ip t: "),
            "{err}"
        );
    }

    #[test]
    fn rules_of_a_dump_decode_and_interruptions_and_old_replies_count() {
        let rule = |seq, flags, chain: &str, handle: u64| {
            let (t, c, h) = (strz("t"), strz(chain), handle.to_be_bytes());
            message(
                seq,
                nft(NFT_MSG_NEWRULE),
                flags,
                2,
                &[
                    (NFTA_RULE_TABLE, &t),
                    (NFTA_RULE_CHAIN, &c),
                    (NFTA_RULE_HANDLE, &h),
                    // NFTA_RULE_EXPRESSIONS, nested: skipped whole.
                    (4 | 0x8000, &[8, 0, 1, 0, 0, 0, 0, 0]),
                ],
            )
        };
        let mut data = rule(8, NLM_F_MULTIPART, "old", 1); // an earlier request
        data.extend(rule(9, NLM_F_MULTIPART, "postrouting", 2));
        data.extend(rule(9, NLM_F_MULTIPART, "forward", 4));
        let mut reply = Reply::default();
        parse_datagram("dump rules", 9, &data, &mut reply).unwrap();
        assert!(!reply.complete && !reply.interrupted);
        let rules: Vec<Rule> = reply
            .messages
            .iter()
            .map(|m| rule_from("dump rules", m).unwrap())
            .collect();
        assert_eq!(
            rules,
            vec![
                Rule {
                    table: "t".into(),
                    chain: "postrouting".into(),
                    handle: 2
                },
                Rule {
                    table: "t".into(),
                    chain: "forward".into(),
                    handle: 4
                },
            ]
        );
        parse_datagram(
            "dump rules",
            9,
            &done(9, NLM_F_MULTIPART | NLM_F_DUMP_INTR),
            &mut reply,
        )
        .unwrap();
        assert!(reply.complete && reply.interrupted);
    }

    #[test]
    fn malformed_replies_are_decode_errors() {
        let mut data = message(2, nft(NFT_MSG_NEWTABLE), 0, 2, &[(NFTA_TABLE_NAME, b"t\0")]);
        data[20] = 200; // attribute longer than the message
        let err = parse_datagram("get table", 2, &data, &mut Reply::default()).unwrap_err();
        assert!(matches!(err, NetlinkError::Decode { .. }), "{err}");
        let mut data = done(2, 0);
        data[0] = 64; // message longer than the datagram
        let err = parse_datagram("get table", 2, &data, &mut Reply::default()).unwrap_err();
        assert!(matches!(err, NetlinkError::Decode { .. }), "{err}");
        // A table without a handle.
        let data = message(2, nft(NFT_MSG_NEWTABLE), 0, 2, &[(NFTA_TABLE_NAME, b"t\0")]);
        let mut reply = Reply::default();
        parse_datagram("get table", 2, &data, &mut reply).unwrap();
        let err = table_from("get table", &reply.messages[0]).unwrap_err();
        assert!(err.to_string().contains("without a handle"), "{err}");
    }
}
