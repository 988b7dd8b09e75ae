//! A cache of encoded UDP answers in front of the [`Handler`](crate::server::Handler).
//!
//! Most questions on a gateway repeat: the same apps ask for the same few
//! names many times a second. Decoding each into hickory's types, looking it
//! up, and encoding the answer again costs far more than the answer itself,
//! so the UDP loop keeps the bytes of every answer the handler produced and
//! replays them when the same question comes again, patching in the
//! request's ID.
//!
//! Replaying is exact, not approximate: an entry is used only while the
//! handler would produce the same bytes. The key is the question as sent,
//! letter case included: the handler's answer depends on it (name
//! compression only points at an identically spelled name), so a
//! differently spelled question is a different entry.
//!
//! * A local answer stays valid while the zone is unchanged. Every zone
//!   update bumps a generation counter, which makes all local entries stale
//!   at once, so record-to-resolvable latency is unaffected.
//! * A forwarded answer is replayed until the forwarder's cache entry it
//!   came from expires, with its TTLs aged at each replay exactly as the
//!   forwarder ages them (whole seconds since the upstream answered). It is
//!   never replayed past the TTL the upstream gave; if the forwarder drops
//!   the entry early (its cache is full), the replay still ends at that
//!   TTL, as any cache's would.
//! * Only plain questions qualify: a standard query with one uncompressed
//!   question, no other records except an EDNS OPT without options, and
//!   nothing after it. Anything else, and every answer that was truncated
//!   or is larger than 512 bytes, always goes through the handler.
//!
//! The cache is per UDP socket loop (no locking) and bounded: when it is
//! full it is emptied and refills with what is asked next.

use std::collections::HashMap;
use std::time::Instant;

/// Header length of a DNS message.
const HEADER: usize = 12;
/// Longest key: flags (2), EDNS marker and OPT TTL (5), the longest
/// wire name (255) and type and class (4).
pub const KEY_MAX: usize = 2 + 5 + 255 + 4;
/// Entries per cache before it is emptied.
pub const MAX_ENTRIES: usize = 4096;
/// Largest answer kept: every client accepts 512 bytes, so a kept answer is
/// never one that a smaller EDNS size would have truncated.
const MAX_ANSWER: usize = 512;

/// How long an answer the handler produced may be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Never (errors, refusals, upstream answers not from the cache).
    Never,
    /// A local answer, while the zone generation is this one.
    Zone(u64),
    /// A forwarded answer from the forwarder's cache, which it entered at
    /// `stored`, encoded with its TTLs aged by `age` whole seconds, and
    /// which leaves the cache at `expires`.
    Aged {
        /// When the upstream's answer was cached.
        stored: Instant,
        /// Whole seconds of age already taken off the encoded TTLs.
        age: u32,
        /// When the cached answer expires.
        expires: Instant,
    },
}

/// Where an answer came from, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The local zone.
    Local,
    /// The forwarder's cache.
    Forwarded,
}

/// A question reduced to what decides its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// Length of the key written into the caller's buffer.
    key_len: usize,
    /// Length of the question section (name, type, class).
    qlen: usize,
}

/// Reduce `packet` to a cache key in `key` when it is a plain question
/// (see the module docs); `None` sends it through the handler.
pub fn parse(packet: &[u8], key: &mut [u8; KEY_MAX]) -> Option<Question> {
    let header = packet.get(..HEADER)?;
    let (flags0, flags1) = (header[2], header[3]);
    // QR = 0 (a query), opcode 0 (QUERY), TC = 0.
    if flags0 & 0x80 != 0 || (flags0 >> 3) & 0x0f != 0 || flags0 & 0x02 != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    key[0] = flags0;
    key[1] = flags1;
    let mut k = 7;
    let mut pos = HEADER;
    loop {
        let len = usize::from(*packet.get(pos)?);
        if len & 0xc0 != 0 {
            return None; // compression pointer or extended label type
        }
        let label = packet.get(pos..pos + 1 + len)?;
        if pos - HEADER + label.len() > 255 {
            return None;
        }
        key[k..k + label.len()].copy_from_slice(label);
        k += label.len();
        pos += label.len();
        if len == 0 {
            break;
        }
    }
    let type_class = packet.get(pos..pos + 4)?;
    key[k..k + 4].copy_from_slice(type_class);
    k += 4;
    pos += 4;
    let qlen = pos - HEADER;
    if ar == 1 {
        // Root name, type OPT, any UDP size, the TTL field (extended
        // rcode, version, flags) decides the answer, no options.
        let opt = packet.get(pos..)?;
        if opt.len() != 11 || opt[0] != 0 || opt[1..3] != [0, 41] || opt[9..11] != [0, 0] {
            return None;
        }
        key[2] = 1;
        key[3..7].copy_from_slice(&opt[5..9]);
    } else {
        if packet.len() != pos {
            return None;
        }
        key[2..7].fill(0);
    }
    Some(Question { key_len: k, qlen })
}

#[derive(Debug)]
struct Entry {
    /// Response header after the ID: flags and the four counts.
    header: [u8; HEADER - 2],
    /// Everything after the question section.
    tail: Box<[u8]>,
    /// Offsets in `tail` of the TTL fields of the answer and authority
    /// records (forwarded answers only; they are re-aged on replay).
    ttls: Box<[u16]>,
    valid: Validity,
    source: Source,
}

/// Offsets in `tail` (the sections after the question) of the TTLs of the
/// first `records` resource records; `None` when they do not parse.
fn ttl_offsets(tail: &[u8], records: usize) -> Option<Box<[u16]>> {
    let mut out = Vec::with_capacity(records);
    let mut p = 0usize;
    for _ in 0..records {
        loop {
            let len = *tail.get(p)?;
            match len & 0xc0 {
                0xc0 => {
                    p += 2;
                    break;
                }
                0 if len == 0 => {
                    p += 1;
                    break;
                }
                0 => p += 1 + usize::from(len),
                _ => return None,
            }
        }
        let fixed = tail.get(p..p + 10)?;
        out.push(u16::try_from(p + 4).ok()?);
        p += 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    }
    (p <= tail.len()).then(|| out.into())
}

/// Encoded answers by question.
#[derive(Debug, Default)]
pub struct AnswerCache {
    entries: HashMap<Box<[u8]>, Entry>,
}

impl AnswerCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Write the answer to `request` (whose question `q` was parsed into
    /// `key`) into `out` when a valid one is cached; returns its source.
    pub fn answer(
        &self,
        key: &[u8; KEY_MAX],
        q: Question,
        request: &[u8],
        generation: u64,
        out: &mut Vec<u8>,
    ) -> Option<Source> {
        let entry = self.entries.get(&key[..q.key_len])?;
        let reage = match entry.valid {
            Validity::Never => return None,
            Validity::Zone(g) if g == generation => None,
            Validity::Zone(_) => return None,
            Validity::Aged {
                stored,
                age,
                expires,
            } => {
                let now = Instant::now();
                if now >= expires {
                    return None;
                }
                let now_age = u32::try_from(now.saturating_duration_since(stored).as_secs())
                    .unwrap_or(u32::MAX);
                (now_age != age).then_some((age, now_age))
            }
        };
        out.clear();
        out.extend_from_slice(request.get(..2)?);
        out.extend_from_slice(&entry.header);
        out.extend_from_slice(request.get(HEADER..HEADER + q.qlen)?);
        let base = out.len();
        out.extend_from_slice(&entry.tail);
        if let Some((encoded_age, now_age)) = reage {
            for off in &entry.ttls {
                let at = base + usize::from(*off);
                let field = out.get_mut(at..at + 4)?;
                let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                // The TTL as the upstream gave it, less the age now.
                let fresh = u64::from(ttl) + u64::from(encoded_age);
                let ttl = u32::try_from(fresh.saturating_sub(u64::from(now_age))).unwrap_or(0);
                field.copy_from_slice(&ttl.to_be_bytes());
            }
        }
        Some(entry.source)
    }

    /// Keep `response`, the handler's answer to `request`, when it can be
    /// replayed (see the module docs).
    pub fn insert(
        &mut self,
        key: &[u8; KEY_MAX],
        q: Question,
        request: &[u8],
        response: &[u8],
        valid: Validity,
    ) {
        let source = match valid {
            Validity::Never => return,
            Validity::Zone(_) => Source::Local,
            Validity::Aged { .. } => Source::Forwarded,
        };
        let end = HEADER + q.qlen;
        let (Some(head), Some(question), Some(asked)) = (
            response.get(2..HEADER),
            response.get(HEADER..end),
            request.get(HEADER..end),
        ) else {
            return;
        };
        let truncated = head[0] & 0x02 != 0;
        let one_question = head[2..4] == [0, 1];
        if truncated || !one_question || response.len() > MAX_ANSWER || question != asked {
            return;
        }
        let mut header = [0u8; HEADER - 2];
        header.copy_from_slice(head);
        let tail = &response[end..];
        let ttls = match source {
            Source::Local => Box::default(),
            Source::Forwarded => {
                let count = |i: usize| usize::from(u16::from_be_bytes([head[i], head[i + 1]]));
                // Answer and authority records; the additional section
                // holds at most our OPT record, whose "TTL" is flags.
                match ttl_offsets(tail, count(4) + count(6)) {
                    Some(t) => t,
                    None => return,
                }
            }
        };
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert(
            key[..q.key_len].into(),
            Entry {
                header,
                tail: tail.into(),
                ttls,
                valid,
                source,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn query(id: u16, name: &[&str], qtype: u16, edns: Option<[u8; 4]>) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
        for l in name {
            p.push(l.len() as u8);
            p.extend(l.as_bytes());
        }
        p.push(0);
        p.extend(qtype.to_be_bytes());
        p.extend([0, 1]);
        if let Some(ttl) = edns {
            p.extend([0, 0, 41, 4, 0xd0]);
            p.extend(ttl);
            p.extend([0, 0]);
        }
        p
    }

    /// A response to `q`: header with counts 1/1/0/0, the question, one
    /// A record pointing at the question name.
    fn response(q: &[u8]) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] = 0x85; // QR AA RD
        r[3] = 0x80; // RA
        r[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
        r.truncate(HEADER + qlen(q));
        r.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 172, 39, 0, 5]);
        r
    }

    fn qlen(q: &[u8]) -> usize {
        let mut key = [0u8; KEY_MAX];
        parse(q, &mut key).map(|p| p.qlen).unwrap()
    }

    #[test]
    fn replays_with_new_id() {
        let mut key = [0u8; KEY_MAX];
        let mut cache = AnswerCache::new();
        let q1 = query(7, &["camera", "iot"], 1, None);
        let p1 = parse(&q1, &mut key).unwrap();
        let r1 = response(&q1);
        cache.insert(&key, p1, &q1, &r1, Validity::Zone(3));
        assert_eq!(cache.len(), 1);

        let q2 = query(9, &["camera", "iot"], 1, None);
        let p2 = parse(&q2, &mut key).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            cache.answer(&key, p2, &q2, 3, &mut out),
            Some(Source::Local)
        );
        let mut want = response(&q2);
        want[..2].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(out, want);
        // Another zone generation: stale.
        assert_eq!(cache.answer(&key, p2, &q2, 4, &mut out), None);
        // Another spelling is another question.
        let q3 = query(9, &["CaMeRa", "iot"], 1, None);
        let p3 = parse(&q3, &mut key).unwrap();
        assert_eq!(cache.answer(&key, p3, &q3, 3, &mut out), None);
    }

    #[test]
    fn keys_differ_by_type_flags_and_edns() {
        let mut a = [0u8; KEY_MAX];
        let mut b = [0u8; KEY_MAX];
        let base = query(1, &["x"], 1, None);
        let pa = parse(&base, &mut a).unwrap();
        for other in [
            query(1, &["x"], 28, None),
            query(1, &["x"], 1, Some([0, 0, 0, 0])),
            query(1, &["x"], 1, Some([0, 0, 0x80, 0])),
            query(1, &["y"], 1, None),
            {
                let mut q = base.clone();
                q[2] = 0; // RD clear
                q
            },
        ] {
            let pb = parse(&other, &mut b).unwrap();
            assert_ne!(a[..pa.key_len], b[..pb.key_len], "{other:?}");
        }
    }

    #[test]
    fn only_plain_questions_qualify() {
        let mut key = [0u8; KEY_MAX];
        let ok = query(1, &["x", "y"], 1, None);
        assert!(parse(&ok, &mut key).is_some());
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut q = ok.clone();
            f(&mut q);
            q
        };
        for q in [
            bad(&|q| q[2] |= 0x80),            // a response
            bad(&|q| q[2] |= 0x08),            // opcode 1
            bad(&|q| q[2] |= 0x02),            // TC
            bad(&|q| q[5] = 2),                // two questions
            bad(&|q| q[7] = 1),                // an answer
            bad(&|q| q[11] = 1),               // additional that is not there
            bad(&|q| q.push(0)),               // trailing byte
            bad(&|q| q.truncate(q.len() - 1)), // short
            bad(&|q| q[12] = 0xc0),            // pointer
            bad(&|q| q[12] = 0x40),            // extended label
            query(1, &["x"], 1, Some([0, 0, 0, 0]))[..20].to_vec(),
            {
                let mut q = query(1, &["x"], 1, Some([0, 0, 0, 0]));
                let n = q.len();
                q[n - 1] = 4; // OPT with options
                q
            },
            vec![0; 11],
        ] {
            assert!(parse(&q, &mut key).is_none(), "{q:?}");
        }
        // A 253-byte name is fine, one over 255 is not.
        let long: Vec<String> = (0..4).map(|_| "a".repeat(62)).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        assert!(parse(&query(1, &long, 1, None), &mut key).is_some());
        let mut longer = long.clone();
        longer.push("bcd"); // 4 x 63 + 4 + 1 = 257 bytes
        assert!(parse(&query(1, &longer, 1, None), &mut key).is_none());
    }

    #[test]
    fn keeps_only_replayable_answers() {
        let mut key = [0u8; KEY_MAX];
        let mut cache = AnswerCache::new();
        let q = query(1, &["x"], 1, None);
        let p = parse(&q, &mut key).unwrap();
        let r = response(&q);
        cache.insert(&key, p, &q, &r, Validity::Never);
        let mut tc = r.clone();
        tc[2] |= 0x02;
        cache.insert(&key, p, &q, &tc, Validity::Zone(1));
        let mut big = r.clone();
        big.resize(600, 0);
        cache.insert(&key, p, &q, &big, Validity::Zone(1));
        let mut other = r.clone();
        other[HEADER + 1] = b'z';
        cache.insert(&key, p, &q, &other, Validity::Zone(1));
        cache.insert(&key, p, &q, &r[..HEADER + 2], Validity::Zone(1));
        assert!(cache.is_empty());

        let now = Instant::now();
        let aged = |expires| Validity::Aged {
            stored: now,
            age: 0,
            expires,
        };
        cache.insert(&key, p, &q, &r, aged(now));
        let mut out = Vec::new();
        assert_eq!(cache.answer(&key, p, &q, 0, &mut out), None);
        cache.insert(&key, p, &q, &r, aged(now + Duration::from_secs(60)));
        assert_eq!(
            cache.answer(&key, p, &q, 0, &mut out),
            Some(Source::Forwarded)
        );
        assert_eq!(out, r);
    }

    #[test]
    fn forwarded_ttls_age_on_replay() {
        let mut key = [0u8; KEY_MAX];
        let mut cache = AnswerCache::new();
        let q = query(1, &["www", "example"], 1, None);
        let p = parse(&q, &mut key).unwrap();
        // Two answers: the first names the question by pointer, the second
        // spells a name out; TTLs 5 and 300 as encoded after 2 s of age.
        let mut r = response(&q);
        r[7] = 2;
        r.extend([3, b'w', b'w', b'w', 0xc0, 16, 0, 1, 0, 1, 0, 0, 1, 0x2c]);
        r.extend([0, 4, 10, 0, 0, 2]);
        let stored = Instant::now() - Duration::from_millis(5_500);
        let valid = Validity::Aged {
            stored,
            age: 2,
            expires: stored + Duration::from_secs(7),
        };
        cache.insert(&key, p, &q, &r, valid);
        let mut out = Vec::new();
        assert_eq!(
            cache.answer(&key, p, &q, 0, &mut out),
            Some(Source::Forwarded)
        );
        // 5 s of age now: 5 + 2 - 5 = 2 and 300 + 2 - 5 = 297.
        let tail = HEADER + qlen(&q);
        assert_eq!(out[tail + 6..tail + 10], 2u32.to_be_bytes());
        assert_eq!(out[tail + 26..tail + 30], 297u32.to_be_bytes());
        assert_eq!(out.len(), r.len());
        // Records that do not parse are not kept.
        let mut bad = r.clone();
        bad.truncate(bad.len() - 3);
        let mut fresh = AnswerCache::new();
        fresh.insert(&key, p, &q, &bad, valid);
        assert!(fresh.is_empty());
    }

    #[test]
    fn bounded() {
        let mut key = [0u8; KEY_MAX];
        let mut cache = AnswerCache::new();
        for i in 0..MAX_ENTRIES + 10 {
            let name = format!("n{i}");
            let q = query(1, &[name.as_str()], 1, None);
            let p = parse(&q, &mut key).unwrap();
            cache.insert(&key, p, &q, &response(&q), Validity::Zone(0));
            assert!(cache.len() <= MAX_ENTRIES);
        }
    }
}
