//! The local names: which names exist and what they answer.
//!
//! No I/O here. A [`Store`] holds what we know (attachment records from
//! smarter-cni, keyed by file name, and pod metadata from the container
//! runtime, keyed by sandbox id); [`Store::zone`] turns it into an immutable
//! [`Zone`] index that the server swaps in atomically and looks names up in.
//!
//! Names served for each pod, compatible with the original SMARTER DNS:
//! `<n>`, `<n>.<namespace>.svc.<domain>`, `<n>.svc.<domain>` and
//! `<n>.<domain>`, where `<n>` is each of the pod name, its hostname and its
//! application name (labels `app.kubernetes.io/name`, `app`, `name`) when
//! known. Several pods answering to one name give several addresses.
//! Host-network pods have no address of their own: they answer 127.0.0.1
//! (as in the original) and have no PTR record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use smarter_common::records::Record as Attachment;

/// Namespace used for the `<n>.<ns>.svc.<domain>` form when nothing says
/// which namespace a pod is in.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What the container runtime tells us about one pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pod {
    /// Sandbox id (matches the attachment record's `container_id`).
    pub id: String,
    /// Pod (or container) name.
    pub name: Option<String>,
    /// Namespace, when the runtime knows one.
    pub namespace: Option<String>,
    /// The pod's hostname.
    pub hostname: Option<String>,
    /// Application name from the labels.
    pub app: Option<String>,
    /// The pod shares the host's network namespace.
    pub host_network: bool,
    /// Addresses the runtime reports (used when no attachment record exists).
    pub ips: Vec<IpAddr>,
}

/// Application name from pod labels: `app.kubernetes.io/name`, then `app`,
/// then `name`.
pub fn app_name<'a>(labels: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
    ["app.kubernetes.io/name", "app", "name"]
        .into_iter()
        .find_map(|k| labels(k).filter(|v| !v.is_empty()))
        .map(str::to_string)
}

/// What one source (a record, or a pod without a record) puts in the zone.
#[derive(Debug, Clone, Default, PartialEq)]
struct Contribution {
    forward: Vec<(LowerName, IpAddr)>,
    reverse: Vec<(IpAddr, Name)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Record(String),
    Pod(String),
}

/// Everything known about local pods, keyed by source, and the zone built
/// from it. The zone is maintained incrementally: a change to one record or
/// pod touches only that source's names, so an update costs the same with
/// ten pods or ten thousand.
#[derive(Debug, Clone)]
pub struct Store {
    records: BTreeMap<String, Attachment>,
    /// Number of records per sandbox id.
    record_ids: HashMap<String, usize>,
    pods: BTreeMap<String, Pod>,
    contributions: HashMap<Source, Contribution>,
    zone: Zone,
}

impl Store {
    /// An empty store for `domain`, answering with `ttl`.
    pub fn new(domain: &Name, ttl: u32) -> Self {
        Self {
            records: BTreeMap::new(),
            record_ids: HashMap::new(),
            pods: BTreeMap::new(),
            contributions: HashMap::new(),
            zone: Zone::empty(domain, ttl),
        }
    }

    /// The current zone.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Add or replace the attachment record stored under `key` (file name).
    pub fn upsert_record(&mut self, key: String, record: Attachment) {
        let id = record.container_id.clone();
        if let Some(old) = self.records.insert(key.clone(), record) {
            self.forget_id(&old.container_id);
            if old.container_id != id {
                self.refresh(Source::Pod(old.container_id));
            }
        }
        *self.record_ids.entry(id.clone()).or_default() += 1;
        self.refresh(Source::Record(key));
        self.refresh(Source::Pod(id));
    }

    fn forget_id(&mut self, id: &str) {
        if let Some(n) = self.record_ids.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                self.record_ids.remove(id);
            }
        }
    }

    /// Forget the attachment record stored under `key`, and the runtime
    /// metadata of its sandbox when no other record refers to it (a removed
    /// record means the pod is gone, whatever a later resync may say).
    /// Returns whether it existed.
    pub fn remove_record(&mut self, key: &str) -> bool {
        let Some(rec) = self.records.remove(key) else {
            return false;
        };
        self.forget_id(&rec.container_id);
        self.refresh(Source::Record(key.to_string()));
        if !self.record_ids.contains_key(&rec.container_id) {
            self.pods.remove(&rec.container_id);
            self.refresh(Source::Pod(rec.container_id));
        }
        true
    }

    /// Replace every attachment record (after a full directory scan).
    pub fn replace_records(&mut self, records: impl IntoIterator<Item = (String, Attachment)>) {
        self.records = records.into_iter().collect();
        self.rebuild();
    }

    /// Replace all runtime pod metadata.
    pub fn replace_pods(&mut self, pods: impl IntoIterator<Item = Pod>) {
        self.pods = pods.into_iter().map(|p| (p.id.clone(), p)).collect();
        self.rebuild();
    }

    /// Add or replace one pod's runtime metadata.
    pub fn upsert_pod(&mut self, pod: Pod) {
        let id = pod.id.clone();
        if self.pods.get(&id) == Some(&pod) {
            return;
        }
        self.pods.insert(id.clone(), pod);
        self.refresh_id(&id);
    }

    /// Forget one pod's runtime metadata.
    pub fn remove_pod(&mut self, id: &str) -> bool {
        if self.pods.remove(id).is_none() {
            return false;
        }
        self.refresh_id(id);
        true
    }

    /// Number of attachment records held.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Recompute every source of sandbox `id`.
    fn refresh_id(&mut self, id: &str) {
        if self.record_ids.contains_key(id) {
            let keys: Vec<String> = self
                .records
                .iter()
                .filter(|(_, r)| r.container_id == id)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.refresh(Source::Record(k));
            }
        }
        self.refresh(Source::Pod(id.to_string()));
    }

    /// Recompute everything (after a full scan or resync).
    fn rebuild(&mut self) {
        self.record_ids.clear();
        for r in self.records.values() {
            *self.record_ids.entry(r.container_id.clone()).or_default() += 1;
        }
        self.contributions.clear();
        self.zone.forward.clear();
        self.zone.reverse.clear();
        let sources: Vec<Source> = self
            .records
            .keys()
            .cloned()
            .map(Source::Record)
            .chain(self.pods.keys().cloned().map(Source::Pod))
            .collect();
        for s in sources {
            self.refresh(s);
        }
    }

    /// What `source` contributes now.
    fn contribution(&self, source: &Source) -> Contribution {
        let mut c = Contribution::default();
        match source {
            Source::Record(key) => {
                let Some(rec) = self.records.get(key) else {
                    return c;
                };
                let pod = self.pods.get(&rec.container_id);
                let namespace = rec
                    .namespace
                    .as_deref()
                    .or_else(|| pod.and_then(|p| p.namespace.as_deref()));
                let mut names = rec.names();
                if let Some(p) = pod {
                    names.extend(p.name.as_deref());
                    names.extend(p.hostname.as_deref());
                    names.extend(p.app.as_deref());
                }
                self.zone.add(&mut c, &names, namespace, &rec.ips, true);
            }
            Source::Pod(id) => {
                let Some(pod) = self.pods.get(id) else {
                    return c;
                };
                if self.record_ids.contains_key(id) {
                    return c;
                }
                let mut names: Vec<&str> = Vec::new();
                names.extend(pod.name.as_deref());
                names.extend(pod.app.as_deref());
                if pod.host_network {
                    // The hostname of a host-network pod is the node's: not
                    // a name of this pod.
                    let lo = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
                    self.zone
                        .add(&mut c, &names, pod.namespace.as_deref(), &lo, false);
                } else if !pod.ips.is_empty() {
                    names.extend(pod.hostname.as_deref());
                    self.zone
                        .add(&mut c, &names, pod.namespace.as_deref(), &pod.ips, true);
                }
            }
        }
        c
    }

    /// Swap `source`'s old contribution for its current one in the zone.
    fn refresh(&mut self, source: Source) {
        let new = self.contribution(&source);
        let old = self.contributions.remove(&source).unwrap_or_default();
        if old == new {
            if !new.forward.is_empty() || !new.reverse.is_empty() {
                self.contributions.insert(source, new);
            }
            return;
        }
        for (name, ip) in &old.forward {
            if let Some(v) = self.zone.forward.get_mut(name) {
                if let Some(i) = v.iter().position(|e| e == ip) {
                    v.swap_remove(i);
                }
                if v.is_empty() {
                    self.zone.forward.remove(name);
                }
            }
        }
        for (ip, name) in &old.reverse {
            if let Some(v) = self.zone.reverse.get_mut(ip) {
                if let Some(i) = v.iter().position(|e| e == name) {
                    v.remove(i);
                }
                if v.is_empty() {
                    self.zone.reverse.remove(ip);
                }
            }
        }
        for (name, ip) in &new.forward {
            self.zone.forward.entry(name.clone()).or_default().push(*ip);
        }
        for (ip, name) in &new.reverse {
            self.zone.reverse.entry(*ip).or_default().push(name.clone());
        }
        if !new.forward.is_empty() || !new.reverse.is_empty() {
            self.contributions.insert(source, new);
        }
    }
}

/// Lower-cased, validated DNS form of a pod-supplied name, or `None` when it
/// cannot be a DNS name (empty, too long, odd characters).
fn dns_name(raw: &str) -> Option<String> {
    let n = raw.trim_end_matches('.').to_ascii_lowercase();
    if n.is_empty() || n.len() > 200 {
        return None;
    }
    let ok = n.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    ok.then_some(n)
}

fn soa(domain: &Name, ttl: u32) -> Record {
    let mname = Name::from_ascii("ns.dns")
        .and_then(|n| n.append_domain(domain))
        .unwrap_or_else(|_| domain.clone());
    let rname = Name::from_ascii("hostmaster")
        .and_then(|n| n.append_domain(domain))
        .unwrap_or_else(|_| domain.clone());
    Record::from_rdata(
        domain.clone(),
        ttl,
        RData::SOA(SOA::new(mname, rname, 1, 60, 10, 3600, ttl)),
    )
}

/// The answer the zone gives to one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The name exists and has records of the asked type.
    Records(Vec<Record>),
    /// The name exists but has no records of the asked type (NODATA); the
    /// SOA goes in the authority section.
    NoData(Record),
    /// The name is ours to answer and does not exist; the SOA, if any, goes
    /// in the authority section.
    NxDomain(Option<Record>),
    /// Not a local name: forward it.
    NotLocal,
}

/// The index of local names. A forward entry holds one address per
/// contribution (duplicates are collapsed when answering); a reverse entry
/// lists the names claiming an address, the first one answers.
#[derive(Debug, Clone)]
pub struct Zone {
    domain: LowerName,
    domain_text: String,
    ttl: u32,
    soa: Record,
    forward: HashMap<LowerName, Vec<IpAddr>>,
    reverse: HashMap<IpAddr, Vec<Name>>,
}

impl Zone {
    /// An empty zone for `domain`.
    pub fn empty(domain: &Name, ttl: u32) -> Self {
        let mut domain = domain.to_lowercase();
        domain.set_fqdn(true);
        let text = domain.to_ascii();
        Self {
            soa: soa(&domain, ttl),
            domain_text: text.trim_end_matches('.').to_string(),
            domain: LowerName::new(&domain),
            ttl,
            forward: HashMap::new(),
            reverse: HashMap::new(),
        }
    }

    /// The names and PTRs of one source, into `c`.
    fn add(
        &self,
        c: &mut Contribution,
        names: &[&str],
        namespace: Option<&str>,
        ips: &[IpAddr],
        ptr: bool,
    ) {
        let namespace = namespace
            .and_then(dns_name)
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let domain = &self.domain_text;
        let mut seen = BTreeSet::new();
        for raw in names {
            let Some(n) = dns_name(raw) else { continue };
            if !seen.insert(n.clone()) {
                continue;
            }
            let forms = [
                format!("{n}."),
                format!("{n}.{namespace}.svc.{domain}."),
                format!("{n}.svc.{domain}."),
                format!("{n}.{domain}."),
            ];
            for (i, form) in forms.iter().enumerate() {
                let Ok(name) = Name::from_ascii(form) else {
                    continue;
                };
                if ptr && i == 1 {
                    for ip in ips {
                        c.reverse.push((*ip, name.clone()));
                    }
                }
                let lower = LowerName::new(&name);
                for ip in ips {
                    if !c.forward.contains(&(lower.clone(), *ip)) {
                        c.forward.push((lower.clone(), *ip));
                    }
                }
            }
        }
    }

    /// Number of distinct names served.
    pub fn name_count(&self) -> usize {
        self.forward.len()
    }

    /// Every name with its addresses, sorted (for `smarter-dns records`).
    pub fn entries(&self) -> Vec<(String, Vec<IpAddr>)> {
        let mut v: Vec<(String, Vec<IpAddr>)> = self
            .forward
            .iter()
            .map(|(n, ips)| (n.to_string(), sorted_unique(ips)))
            .collect();
        v.sort();
        v
    }

    /// Every PTR mapping, sorted.
    pub fn reverse_entries(&self) -> Vec<(IpAddr, String)> {
        let mut v: Vec<(IpAddr, String)> = self
            .reverse
            .iter()
            .filter_map(|(ip, n)| Some((*ip, n.first()?.to_string())))
            .collect();
        v.sort();
        v
    }

    /// Answer one question.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Answer {
        if qtype == RecordType::PTR
            && let Some(ip) = reverse_ip(name)
        {
            return match self.reverse.get(&ip).and_then(|v| v.first()) {
                Some(target) => Answer::Records(vec![Record::from_rdata(
                    Name::from(name.clone()),
                    self.ttl,
                    RData::PTR(PTR(target.clone())),
                )]),
                None => Answer::NotLocal,
            };
        }
        if let Some(ips) = self.forward.get(name) {
            let owner = Name::from(name.clone());
            let records: Vec<Record> = sorted_unique(ips)
                .iter()
                .filter_map(|ip| match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
                    (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                        Some(RData::AAAA(AAAA(*v6)))
                    }
                    _ => None,
                })
                .map(|rdata| Record::from_rdata(owner.clone(), self.ttl, rdata))
                .collect();
            return if records.is_empty() {
                Answer::NoData(self.soa.clone())
            } else {
                Answer::Records(records)
            };
        }
        if self.domain.zone_of(name) {
            Answer::NxDomain(Some(self.soa.clone()))
        } else if name.num_labels() == 1 {
            // A bare single label is never resolvable upstream: only pods
            // have such names.
            Answer::NxDomain(None)
        } else {
            Answer::NotLocal
        }
    }
}

fn sorted_unique(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut v = ips.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// The address named by a full `in-addr.arpa.`/`ip6.arpa.` name.
fn reverse_ip(name: &LowerName) -> Option<IpAddr> {
    let net = Name::from(name.clone()).parse_arpa_name().ok()?;
    let full = match net.addr() {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    (net.prefix_len() == full).then(|| net.addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn att(id: &str, pod: &str, ns: Option<&str>, ips: &[&str]) -> Attachment {
        Attachment {
            version: smarter_common::records::VERSION,
            container_id: id.into(),
            ifname: "eth0".into(),
            network: "smartnet".into(),
            pod_name: Some(pod.into()),
            namespace: ns.map(str::to_string),
            hostname: None,
            ips: ips.iter().filter_map(|s| s.parse().ok()).collect(),
        }
    }

    fn q(zone: &Zone, name: &str, t: RecordType) -> Answer {
        let n = Name::from_str(name).unwrap_or_else(|_| Name::root());
        zone.lookup(&LowerName::new(&n), t)
    }

    fn ips(a: &Answer) -> Vec<String> {
        match a {
            Answer::Records(r) => r.iter().map(|r| r.data.to_string()).collect(),
            _ => Vec::new(),
        }
    }

    fn domain() -> Name {
        Name::from_ascii("cluster.local").unwrap_or_else(|_| Name::root())
    }

    #[test]
    fn every_name_form_resolves() {
        let mut s = Store::new(&domain(), 5);
        s.upsert_record(
            "a_eth0.json".into(),
            att("a", "Camera", Some("iot"), &["172.39.0.5"]),
        );
        let z = s.zone().clone();
        for n in [
            "camera.",
            "CAMERA.iot.svc.cluster.local.",
            "camera.svc.cluster.local.",
            "camera.cluster.local.",
        ] {
            assert_eq!(ips(&q(&z, n, RecordType::A)), vec!["172.39.0.5"], "{n}");
        }
        assert!(matches!(
            q(&z, "camera.default.svc.cluster.local.", RecordType::A),
            Answer::NxDomain(Some(_))
        ));
        assert!(matches!(
            q(&z, "camera.", RecordType::AAAA),
            Answer::NoData(_)
        ));
        assert_eq!(q(&z, "example.com.", RecordType::A), Answer::NotLocal);
        assert!(matches!(
            q(&z, "nothing.", RecordType::A),
            Answer::NxDomain(None)
        ));
        // TTL is the configured one.
        assert!(matches!(
            q(&z, "camera.", RecordType::A),
            Answer::Records(r) if r[0].ttl == 5
        ));
    }

    #[test]
    fn several_pods_one_name_and_aaaa_and_ptr() {
        let mut s = Store::new(&domain(), 5);
        s.upsert_record("a".into(), att("a", "web", None, &["172.39.0.6"]));
        s.upsert_record(
            "b".into(),
            att("b", "web", None, &["172.39.0.7", "fd00::7"]),
        );
        let z = s.zone().clone();
        assert_eq!(
            ips(&q(&z, "web.default.svc.cluster.local.", RecordType::A)),
            vec!["172.39.0.6", "172.39.0.7"]
        );
        assert_eq!(ips(&q(&z, "web.", RecordType::AAAA)), vec!["fd00::7"]);
        assert_eq!(
            ips(&q(&z, "7.0.39.172.in-addr.arpa.", RecordType::PTR)),
            vec!["web.default.svc.cluster.local."]
        );
        let v6 =
            Name::from(IpAddr::from_str("fd00::7").unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(
            ips(&z.lookup(&LowerName::new(&v6), RecordType::PTR)),
            vec!["web.default.svc.cluster.local."]
        );
        assert_eq!(
            q(&z, "9.0.39.172.in-addr.arpa.", RecordType::PTR),
            Answer::NotLocal
        );
        assert!(s.remove_record("a"));
        let z = s.zone().clone();
        assert_eq!(ips(&q(&z, "web.", RecordType::A)), vec!["172.39.0.7"]);
    }

    #[test]
    fn runtime_adds_hostname_and_app_names() {
        let mut s = Store::new(&domain(), 5);
        s.upsert_record(
            "a".into(),
            att("a", "cam-7d9f", Some("iot"), &["172.39.0.5"]),
        );
        s.upsert_pod(Pod {
            id: "a".into(),
            hostname: Some("camhost".into()),
            app: app_name(|k| (k == "app").then_some("camera")),
            ..Pod::default()
        });
        let z = s.zone().clone();
        for n in [
            "cam-7d9f.",
            "camhost.iot.svc.cluster.local.",
            "camera.cluster.local.",
        ] {
            assert_eq!(ips(&q(&z, n, RecordType::A)), vec!["172.39.0.5"], "{n}");
        }
        // PTR points at the pod name's namespaced form.
        assert_eq!(
            ips(&q(&z, "5.0.39.172.in-addr.arpa.", RecordType::PTR)),
            vec!["cam-7d9f.iot.svc.cluster.local."]
        );
    }

    #[test]
    fn host_network_pods_answer_localhost_without_ptr() {
        let mut s = Store::new(&domain(), 5);
        s.upsert_pod(Pod {
            id: "h".into(),
            name: Some("agent-xyz".into()),
            hostname: Some("gateway1".into()),
            app: Some("agent".into()),
            host_network: true,
            ..Pod::default()
        });
        let z = s.zone().clone();
        assert_eq!(ips(&q(&z, "agent.", RecordType::A)), vec!["127.0.0.1"]);
        assert_eq!(ips(&q(&z, "agent-xyz.", RecordType::A)), vec!["127.0.0.1"]);
        assert!(matches!(
            q(&z, "gateway1.", RecordType::A),
            Answer::NxDomain(_)
        ));
        assert_eq!(
            q(&z, "1.0.0.127.in-addr.arpa.", RecordType::PTR),
            Answer::NotLocal
        );
    }

    #[test]
    fn runtime_only_pods_with_addresses_are_served() {
        let mut s = Store::new(&domain(), 5);
        s.replace_pods([Pod {
            id: "d".into(),
            name: Some("web_1".into()),
            ips: vec![IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2))],
            ..Pod::default()
        }]);
        let z = s.zone().clone();
        assert_eq!(ips(&q(&z, "web_1.", RecordType::A)), vec!["172.17.0.2"]);
    }

    #[test]
    fn bad_names_are_skipped() {
        assert_eq!(dns_name("Foo.Bar."), Some("foo.bar".into()));
        assert_eq!(dns_name(""), None);
        assert_eq!(dns_name("a b"), None);
        assert_eq!(dns_name("a..b"), None);
        assert_eq!(dns_name(&"x".repeat(64)), None);
        let mut s = Store::new(&domain(), 5);
        s.upsert_record("a".into(), att("a", "bad name", None, &["172.39.0.5"]));
        assert_eq!(s.zone().clone().name_count(), 0);
    }

    #[test]
    fn app_name_prefers_kubernetes_label() {
        let labels = |k: &str| match k {
            "app.kubernetes.io/name" => Some("a"),
            "app" => Some("b"),
            "name" => Some("c"),
            _ => None,
        };
        assert_eq!(app_name(labels), Some("a".into()));
        assert_eq!(app_name(|k| (k == "name").then_some("c")), Some("c".into()));
        assert_eq!(app_name(|_| Some("")), None);
    }

    #[test]
    fn incremental_updates_match_a_full_rebuild() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut s = Store::new(&domain(), 5);
        for _ in 0..600 {
            let id = format!("c{}", rnd(12));
            let key = format!("{id}_eth{}", rnd(2));
            match rnd(5) {
                0 | 1 => {
                    let ip = format!("172.39.0.{}", rnd(6) + 2);
                    let pod = format!("p{}", rnd(5));
                    let mut a = att(&id, &pod, Some(["iot", "default"][rnd(2) as usize]), &[&ip]);
                    a.ifname = key.clone();
                    s.upsert_record(key, a);
                }
                2 => {
                    s.remove_record(&key);
                }
                3 => s.upsert_pod(Pod {
                    id,
                    name: Some(format!("p{}", rnd(5))),
                    hostname: Some(format!("h{}", rnd(3))),
                    app: Some(format!("a{}", rnd(3))),
                    host_network: rnd(3) == 0,
                    ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, rnd(4) as u8))],
                    ..Pod::default()
                }),
                _ => {
                    s.remove_pod(&id);
                }
            }
            let mut fresh = Store::new(&domain(), 5);
            fresh.replace_records(s.records.clone());
            fresh.replace_pods(s.pods.values().cloned());
            assert_eq!(s.zone().entries(), fresh.zone().entries());
            let mut mine: Vec<IpAddr> = s.zone().reverse.keys().copied().collect();
            let mut theirs: Vec<IpAddr> = fresh.zone().reverse.keys().copied().collect();
            mine.sort();
            theirs.sort();
            assert_eq!(mine, theirs);
        }
    }
}
