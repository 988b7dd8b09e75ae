//! The shared rtnetlink client against the real kernel, in network
//! namespaces of its own (root): links, addresses and routes, and dumps the
//! kernel really interrupts.
//!
//! A namespace here is made by `unshare` on a short-lived thread that opens
//! the sockets and exits: the namespace lives exactly as long as those
//! sockets, so it disappears with them even when a test fails.
#![allow(clippy::panic)] // test harness: a failed setup step fails the test

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smarter_common::netlink::{Ipv4Prefix, Netlink, NetlinkError, Route4};
use smarter_test_support::require_root;

/// `n` sockets in one new, empty network namespace.
fn sockets_in_new_netns(n: usize) -> Vec<Netlink> {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET): {e}"));
        (0..n)
            .map(|_| Netlink::new().unwrap_or_else(|e| panic!("{e}")))
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap_or_else(|_| panic!("the namespace thread panicked"))
}

/// The stable addresses: 10.1.0.0/32 onwards, `n` of them on `lo`.
fn stable(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i)
}

/// Enough addresses that a dump of them takes many datagrams (the kernel
/// fills one of at most 32 KiB at a time, about 370 addresses), so a
/// change can land between two parts.
const STABLE: u32 = 4000;

/// Every stable address exactly once, and no address twice: what a dump
/// that the kernel did not interrupt must return while other addresses
/// come and go.
fn assert_consistent(addrs: &[Ipv4Prefix]) {
    let mut seen: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    for a in addrs {
        *seen.entry(a.addr).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "addresses dumped twice: {twice:?}");
    let missing: Vec<_> = (0..STABLE)
        .map(stable)
        .filter(|a| !seen.contains_key(a))
        .collect();
    assert!(missing.is_empty(), "stable addresses missing: {missing:?}");
}

/// A namespace with the stable addresses on `lo`, a socket to dump with
/// and a thread that keeps changing the namespace (a bridge created and
/// deleted, over and over: each change moves the sequence the kernel
/// checks address dumps against) until dropped.
struct Churn {
    dumper: Netlink,
    lo: u32,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<u64, NetlinkError>>>,
}

impl Churn {
    fn start() -> Self {
        let Ok([mut dumper, mut churner]) = <[Netlink; 2]>::try_from(sockets_in_new_netns(2))
        else {
            panic!("two sockets asked for");
        };
        let lo = match dumper.link_by_name("lo") {
            Ok(Some(l)) => l.index,
            r => panic!("lo: {r:?}"),
        };
        dumper
            .set_up(lo, None, None)
            .unwrap_or_else(|e| panic!("{e}"));
        for i in 0..STABLE {
            let net = Ipv4Prefix {
                addr: stable(i),
                len: 32,
            };
            dumper
                .add_address(lo, net)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_consistent(&dumper.addresses(lo).unwrap_or_else(|e| panic!("{e}")));
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut changes = 0u64;
            while !s.load(Ordering::Relaxed) {
                churner.add_bridge("churn0", None)?;
                let l = churner.link_by_name("churn0")?;
                if let Some(l) = l {
                    churner.del_link(l.index)?;
                }
                changes += 2;
            }
            Ok(changes)
        });
        Self {
            dumper,
            lo,
            stop,
            thread: Some(thread),
        }
    }

    /// Stop the churn; how many changes it made.
    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| match t.join() {
                Ok(Ok(changes)) => changes,
                Ok(Err(e)) => panic!("churn: {e}"),
                Err(_) => panic!("the churn thread panicked"),
            })
            .unwrap_or(0)
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long a test keeps dumping while waiting for the kernel to interrupt
/// a dump: each dump takes about a millisecond and a change lands every
/// few, so this is seen within a second; the bound only keeps a broken
/// kernel or client from hanging the test.
const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn an_interrupted_dump_is_reported_when_retries_run_out() {
    if !require_root("network namespaces") {
        return;
    }
    let mut c = Churn::start();
    // One attempt: the first interrupted dump must come back as the typed
    // error, naming the request, instead of a possibly inconsistent list.
    c.dumper.set_dump_attempts(1);
    let start = Instant::now();
    let (mut clean, mut interrupted) = (0u32, None);
    while interrupted.is_none() && start.elapsed() < PATIENCE {
        match c.dumper.addresses(c.lo) {
            Ok(addrs) => {
                assert_consistent(&addrs);
                clean += 1;
            }
            Err(e) => interrupted = Some(e),
        }
    }
    let changes = c.stop();
    let e = interrupted.unwrap_or_else(|| {
        panic!(
            "no dump interrupted in {PATIENCE:?} ({clean} clean dumps, {changes} changes \
             meanwhile): the kernel's NLM_F_DUMP_INTR went unnoticed"
        )
    });
    assert!(
        matches!(&e, NetlinkError::DumpInterrupted { op, attempts: 1 } if op == "dump addresses"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "netlink dump addresses: interrupted by concurrent changes 1 times in a row"
    );
    assert_eq!(c.dumper.interrupted_dumps(), 1);
    eprintln!("interrupted after {clean} clean dumps, {changes} changes");
}

#[test]
fn an_interrupted_dump_is_read_again_and_the_result_is_consistent() {
    if !require_root("network namespaces") {
        return;
    }
    let mut c = Churn::start();
    let start = Instant::now();
    let (mut dumps, mut retried_ok, mut gave_up) = (0u32, 0u32, 0u32);
    // Until a dump that the kernel interrupted came back, read again, as
    // a complete and consistent list.
    while retried_ok == 0 && start.elapsed() < PATIENCE {
        let before = c.dumper.interrupted_dumps();
        match c.dumper.addresses(c.lo) {
            Ok(addrs) => {
                assert_consistent(&addrs);
                if c.dumper.interrupted_dumps() > before {
                    retried_ok += 1;
                }
            }
            // Five interruptions in a row can happen under this churn; a
            // typed error then, never a partial list.
            Err(NetlinkError::DumpInterrupted { .. }) => gave_up += 1,
            Err(e) => panic!("{e}"),
        }
        dumps += 1;
    }
    let changes = c.stop();
    assert!(
        retried_ok > 0,
        "no dump was interrupted and then read again in {PATIENCE:?} ({dumps} dumps, \
         {gave_up} gave up, {changes} changes)"
    );
    // Without the churn every dump is clean on the first attempt.
    let before = c.dumper.interrupted_dumps();
    for _ in 0..20 {
        assert_consistent(&c.dumper.addresses(c.lo).unwrap());
    }
    assert_eq!(c.dumper.interrupted_dumps(), before);
    eprintln!("{dumps} dumps, {} interrupted, {gave_up} gave up", before);
}

#[test]
fn links_addresses_and_routes_round_trip() {
    if !require_root("network namespaces") {
        return;
    }
    let mut nl = sockets_in_new_netns(1).pop().expect("one socket");
    assert!(nl.link_by_name("nothere0").unwrap().is_none());
    nl.add_bridge("br-test0", Some(1400)).unwrap();
    let e = nl.add_bridge("br-test0", None).unwrap_err();
    assert!(e.is_exists(), "{e}");
    let br = nl.link_by_name("br-test0").unwrap().expect("bridge");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, Some(1400));
    assert!(!br.up);
    let mac = br.mac.expect("mac");
    assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
    nl.set_up(br.index, None, None).unwrap();
    assert!(nl.link_by_name("br-test0").unwrap().expect("bridge").up);
    let net = Ipv4Prefix {
        addr: Ipv4Addr::new(10, 9, 0, 1),
        len: 24,
    };
    nl.add_address(br.index, net).unwrap();
    nl.add_address(br.index, net).unwrap(); // existing: fine
    assert_eq!(nl.addresses(br.index).unwrap(), vec![net]);
    let host = IpAddr::from([169, 254, 0, 2]);
    nl.add_host_address(br.index, host).unwrap();
    nl.add_host_address(br.index, host).unwrap(); // replaced: fine
    assert!(nl.addresses(br.index).unwrap().contains(&Ipv4Prefix {
        addr: Ipv4Addr::new(169, 254, 0, 2),
        len: 32
    }));
    nl.add_host_address(br.index, "fe80::53".parse().unwrap())
        .unwrap();
    let default = Route4 {
        dst: Ipv4Prefix {
            addr: Ipv4Addr::UNSPECIFIED,
            len: 0,
        },
        gateway: Some(Ipv4Addr::new(10, 9, 0, 254)),
        oif: Some(br.index),
    };
    nl.add_route(&default).unwrap();
    nl.add_route(&default).unwrap(); // existing: fine
    assert!(nl.routes().unwrap().contains(&default));
    assert!(nl.links().unwrap().iter().any(|l| l.name == "br-test0"));
    nl.del_link(br.index).unwrap();
    let e = nl.del_link(br.index).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(nl.link_by_name("br-test0").unwrap().is_none());
}

#[test]
fn the_kernel_without_a_link_type_says_not_supported() {
    if !require_root("network namespaces") {
        return;
    }
    let mut nl = sockets_in_new_netns(1).pop().expect("one socket");
    // Either the dummy driver exists (the link appears) or the kernel says
    // EOPNOTSUPP, which smarter-dns takes as "use lo".
    match nl.add_dummy("dummy-test0") {
        Ok(()) => assert_eq!(
            nl.link_by_name("dummy-test0")
                .unwrap()
                .expect("dummy")
                .kind
                .as_deref(),
            Some("dummy")
        ),
        Err(e) => assert!(e.is_not_supported(), "{e}"),
    }
}

/// `nft` with `args` inside `ns`; its stdout.
fn nft_in(ns: &smarter_test_support::Netns, args: &[&str]) -> String {
    let mut full = vec!["nft"];
    full.extend_from_slice(args);
    let out = ns
        .exec(&full)
        .unwrap_or_else(|e| panic!("nft {args:?}: {e}"));
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The handles `nft -a` prints for `what` (`table`, or each rule's line).
fn handles(listing: &str, rule_marker: &str) -> Vec<u64> {
    listing
        .lines()
        .filter(|l| l.contains(rule_marker))
        .filter_map(|l| l.rsplit_once("# handle ")?.1.trim().parse().ok())
        .collect()
}

/// The nf_tables reader sees what `nft` wrote, with the handles `nft -a`
/// prints; a missing table is `None`; a table deleted and created again
/// has a new handle; flushed rules are gone; a dormant table says so.
#[test]
fn nftables_tables_and_rules_as_nft_sees_them() {
    use smarter_common::netlink::nftables::{Family, Nftables};
    if !require_root("network namespaces, nftables")
        || !smarter_test_support::require_peer("nft", "nftables")
    {
        return;
    }
    let ns = smarter_test_support::Netns::unique("nlnft").unwrap_or_else(|e| panic!("{e}"));
    let mut nft = Nftables::in_netns(ns.path()).unwrap();
    assert_eq!(nft.table(Family::Ip, "t").unwrap(), None);
    assert!(nft.rules(Family::Ip, "t").unwrap().is_empty());

    let script = "table ip t {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr 10.0.0.0/8 masquerade\n }\n chain forward {\n  type filter hook forward priority filter; policy accept;\n  oifname \"br0\" ct state established accept\n  oifname \"br0\" drop\n }\n}\ntable ip other {\n chain c {\n  counter\n }\n}\n";
    let out = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().map(|mut i| i.write_all(script.as_bytes()));
            c.wait()
        })
        .unwrap();
    assert!(out.success());
    let listing = nft_in(&ns, &["-a", "list", "table", "ip", "t"]);
    let table_handle = handles(&listing, "table ip t")[0];
    let rule_handles = handles(&listing, "oifname");
    let masq = handles(&listing, "masquerade");

    let t = nft.table(Family::Ip, "t").unwrap().expect("table t");
    assert_eq!(t.name, "t");
    assert_eq!(t.handle, table_handle);
    assert_eq!(t.use_count, 2, "two chains");
    assert!(!t.dormant());
    // Same name, other family: not this table.
    assert_eq!(nft.table(Family::Bridge, "t").unwrap(), None);

    let rules = nft.rules(Family::Ip, "t").unwrap();
    let seen: Vec<(&str, u64)> = rules.iter().map(|r| (r.chain.as_str(), r.handle)).collect();
    assert_eq!(
        seen,
        vec![
            ("postrouting", masq[0]),
            ("forward", rule_handles[0]),
            ("forward", rule_handles[1]),
        ],
        "{listing}"
    );
    assert!(rules.iter().all(|r| r.table == "t"), "only table t's rules");

    nft_in(&ns, &["flush", "chain", "ip", "t", "forward"]);
    let rules = nft.rules(Family::Ip, "t").unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].chain, "postrouting");

    nft_in(&ns, &["add", "table", "ip", "t", "{ flags dormant; }"]);
    assert!(nft.table(Family::Ip, "t").unwrap().expect("t").dormant());

    nft_in(&ns, &["delete", "table", "ip", "t"]);
    assert_eq!(nft.table(Family::Ip, "t").unwrap(), None);
    nft_in(&ns, &["add", "table", "ip", "t"]);
    let again = nft.table(Family::Ip, "t").unwrap().expect("t again");
    assert_ne!(again.handle, t.handle, "a new table, a new handle");

    nft_in(&ns, &["flush", "ruleset"]);
    assert_eq!(nft.table(Family::Ip, "t").unwrap(), None);
    assert_eq!(nft.table(Family::Ip, "other").unwrap(), None);
}
