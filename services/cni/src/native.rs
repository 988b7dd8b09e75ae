//! Native mode: a Linux bridge, one veth pair per attachment with its
//! container end created directly inside the container's network namespace,
//! addresses and routes over netlink, masquerade and isolation with
//! nftables.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::ForkResult;

use crate::ipam::{Ipv4Net, Owner, Store};
use crate::netconf::{BuiltinIpam, Ipam, NetConf};
use crate::nft;
use crate::spec::{CniError, CniResult, Env, Interface, IpConfig, Route, code};
use crate::{delegate, ipam::IpamError};
use smarter_common::netlink::nftables::Nftables;
use smarter_common::netlink::{Ipv4Prefix, Link, Netlink, NetlinkError, Route4};

/// Name of the host end of the veth for an attachment: `veth` and eight
/// hex digits of a hash of container id and ifname, so DEL and GC find it
/// without state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 32 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("veth{h:08x}")
}

/// Find a host tool: `$PATH` first (runtimes pass their own environment,
/// which may lack the sbin directories), then the usual sbin paths.
fn host_tool(name: &str) -> PathBuf {
    let from_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    });
    from_path
        .or_else(|| {
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Where the `nft` binary is (`SMARTER_CNI_NFT` overrides, for tests).
pub fn nft_binary() -> PathBuf {
    std::env::var_os("SMARTER_CNI_NFT")
        .map(PathBuf::from)
        .unwrap_or_else(|| host_tool("nft"))
}

fn nl_err(e: NetlinkError) -> CniError {
    CniError::new(code::PLUGIN, "netlink request failed").with_details(e.to_string())
}

/// The netlink client's form of an IPAM network.
fn prefix(net: Ipv4Net) -> Ipv4Prefix {
    Ipv4Prefix {
        addr: net.addr(),
        len: net.prefix(),
    }
}

fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } => {
            CniError::new(code::TRY_AGAIN_LATER, "no free address").with_details(e.to_string())
        }
        IpamError::Io { .. } => CniError::new(code::IO, "IPAM state").with_details(e.to_string()),
    }
}

fn open_netns(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("cannot open network namespace {}", path.display()),
        )
        .with_details(e.to_string())
    })
}

/// Owner record for the built-in IPAM.
fn owner(env: &Env) -> Owner {
    Owner {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        namespace: env.pod_namespace().map(str::to_string),
        pod: env.pod_name().map(str::to_string),
    }
}

/// The address(es) an ADD got from IPAM.
struct Lease {
    addr: Ipv4Net,
    gateway: Ipv4Addr,
    subnet: Ipv4Net,
    delegated: Option<CniResult>,
}

/// The built-in IPAM's store of this network, locked; `None` with a
/// delegated IPAM. A command opens it once and passes it down while it
/// needs the allocations; functions given `None` open it themselves
/// ([`store_or_open`]) on the rare paths that need it later.
fn open_store(conf: &NetConf) -> Result<Option<Store>, CniError> {
    match &conf.ipam {
        Ipam::Builtin(b) => Store::open(&b.data_dir, &conf.name)
            .map(Some)
            .map_err(ipam_err),
        Ipam::Delegate(_) => Ok(None),
    }
}

/// `held` if the caller holds the store, else the store opened (and
/// locked) into `slot` for this call.
fn store_or_open<'a>(
    conf: &NetConf,
    held: Option<&'a Store>,
    slot: &'a mut Option<Store>,
) -> Result<Option<&'a Store>, CniError> {
    if held.is_some() {
        return Ok(held);
    }
    *slot = open_store(conf)?;
    Ok(slot.as_ref())
}

fn no_store() -> CniError {
    CniError::new(code::PLUGIN, "built-in IPAM state is not open")
}

fn lease(
    conf: &NetConf,
    env: &Env,
    stdin: &[u8],
    store: Option<&Store>,
) -> Result<Lease, CniError> {
    match &conf.ipam {
        Ipam::Builtin(b) => {
            let store = store.ok_or_else(no_store)?;
            let ip = store
                .allocate(b.range_start, b.range_end, &[b.gateway], &owner(env))
                .map_err(ipam_err)?;
            Ok(Lease {
                addr: Ipv4Net::new(ip, b.subnet.prefix()).unwrap_or(b.subnet),
                gateway: b.gateway,
                subnet: b.subnet,
                delegated: None,
            })
        }
        Ipam::Delegate(plugin) => {
            let bin = delegate::find(plugin, &env.path)?;
            let r = delegate::add(&bin, env, stdin)?;
            let v4 = r
                .ips
                .iter()
                .find_map(|ip| {
                    let IpAddr::V4(a) = ip.ip()? else { return None };
                    let prefix: u8 = ip.address.split('/').nth(1)?.parse().ok()?;
                    let net = Ipv4Net::new(a, prefix)?;
                    let gw = match ip.gateway {
                        Some(IpAddr::V4(g)) => g,
                        _ => net.network().nth(1),
                    };
                    Some((net, gw))
                })
                .ok_or_else(|| {
                    CniError::new(
                        code::PLUGIN,
                        format!("IPAM plugin {plugin} returned no IPv4 address"),
                    )
                })?;
            Ok(Lease {
                addr: v4.0,
                gateway: v4.1,
                subnet: v4.0.network(),
                delegated: Some(r),
            })
        }
    }
}

fn release(conf: &NetConf, env: &Env, stdin: &[u8], store: Option<&Store>) -> Result<(), CniError> {
    match &conf.ipam {
        Ipam::Builtin(_) => {
            let mut slot = None;
            store_or_open(conf, store, &mut slot)?
                .ok_or_else(no_store)?
                .release(&env.container_id, &env.ifname)
                .map_err(ipam_err)?;
            Ok(())
        }
        Ipam::Delegate(plugin) => {
            let bin = delegate::find(plugin, &env.path)?;
            delegate::exec(&bin, "DEL", env, stdin).map(|_| ())
        }
    }
}

/// Another attachment (per the built-in IPAM) whose host veth is `host`.
fn other_owner_of(
    conf: &NetConf,
    store: Option<&Store>,
    env: &Env,
    host: &str,
) -> Result<Option<String>, CniError> {
    let mut slot = None;
    let Some(store) = store_or_open(conf, store, &mut slot)? else {
        return Ok(None);
    };
    Ok(store
        .list()
        .map_err(ipam_err)?
        .into_values()
        .flatten()
        .find(|o| {
            (o.container_id != env.container_id || o.ifname != env.ifname)
                && host_veth_name(&o.container_id, &o.ifname) == host
        })
        .map(|o| format!("{}/{}", o.container_id, o.ifname)))
}

/// Make sure the bridge exists, is up, and (as gateway) has the gateway
/// address. Returns it and whether this call created it.
fn ensure_bridge(
    nl: &mut Netlink,
    conf: &NetConf,
    gateway: Option<Ipv4Net>,
) -> Result<(Link, bool), CniError> {
    let mut created = false;
    let br = match nl.link_by_name(&conf.bridge).map_err(nl_err)? {
        Some(l) => l,
        None => {
            match nl.add_bridge(&conf.bridge, conf.mtu) {
                Ok(()) => created = true,
                Err(e) if e.is_exists() => {} // a parallel ADD won the race
                Err(e) => return Err(nl_err(e)),
            }
            nl.link_by_name(&conf.bridge)
                .map_err(nl_err)?
                .ok_or_else(|| {
                    CniError::new(code::PLUGIN, format!("bridge {} vanished", conf.bridge))
                })?
        }
    };
    if br.kind.as_deref().is_some_and(|k| k != "bridge") {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "{} exists and is a {}, not a bridge",
                conf.bridge,
                br.kind.as_deref().unwrap_or("?")
            ),
        ));
    }
    if !br.up {
        nl.set_up(br.index, None, None).map_err(nl_err)?;
    }
    if let Some(gw) = gateway {
        nl.add_address(br.index, prefix(gw)).map_err(nl_err)?;
    }
    Ok((br, created))
}

fn enable_forwarding() -> Result<(), CniError> {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(p, "1").map_err(|e| {
        CniError::new(code::IO, "cannot enable IPv4 forwarding").with_details(format!("{p}: {e}"))
    })
}

/// Pods by namespace from the built-in IPAM, for the isolation rules.
fn pods_by_namespace(store: &Store) -> Result<BTreeMap<String, Vec<Ipv4Addr>>, CniError> {
    let mut pods: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for (ip, owner) in store.list().map_err(ipam_err)? {
        let ns = owner.and_then(|o| o.namespace).unwrap_or_default();
        pods.entry(ns).or_default().push(ip);
    }
    Ok(pods)
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Bring the network's nftables tables in line with the config (and, with
/// isolation, with the current pods). With masquerade only, the script is
/// applied once per boot and config (a marker in the IPAM state directory
/// remembers it, with the table as the kernel held it right after), so
/// most ADDs run no `nft` at all: they read the table over netlink and
/// write it again only when someone else deleted, flushed or changed it
/// (docs/decisions/0126 and 0134).
fn sync_rules(
    conf: &NetConf,
    store: Option<&Store>,
    subnet: Ipv4Net,
    force: bool,
) -> Result<(), CniError> {
    let nft_err =
        |e: nft::NftError| CniError::new(code::PLUGIN, "nftables").with_details(e.to_string());
    let mut slot = None;
    let pods = match conf.isolation.enabled {
        true => match store_or_open(conf, store, &mut slot)? {
            Some(s) => pods_by_namespace(s)?,
            None => BTreeMap::new(),
        },
        false => BTreeMap::new(),
    };
    let rules = nft::Rules {
        network: &conf.name,
        subnet,
        bridge: &conf.bridge,
        masquerade: conf.ip_masq,
        deny_inbound: conf.deny_inbound,
        isolation: &conf.isolation,
        pods,
    };
    let script = rules.script();
    let marker = rules_marker(conf);
    let boot = boot_id();
    if !force
        && !conf.isolation.enabled
        && let Some(m) = &marker
        && let Some(written) = nft::Marker::read(m)
        && written.boot == boot
        && written.script == script
        && rules_in_place(&conf.name, written.state.as_ref())
    {
        return Ok(());
    }
    nft::apply(&nft_binary(), &script).map_err(nft_err)?;
    allow_forwarding_in_iptables(&conf.bridge);
    if let Some(m) = marker {
        // What the kernel holds now, for the next ADD to compare with.
        let state = Nftables::new()
            .and_then(|mut n| nft::observe(&mut n, &conf.name))
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot read the nftables rules just written; the next ADD writes them again");
            })
            .ok();
        let _ = std::fs::write(
            m,
            nft::Marker {
                boot,
                state,
                script,
            }
            .render(),
        );
    }
    Ok(())
}

/// Where the network's rules marker lives: beside its built-in IPAM
/// state (a delegated IPAM keeps no state of ours, so no marker).
fn rules_marker(conf: &NetConf) -> Option<PathBuf> {
    match &conf.ipam {
        Ipam::Builtin(b) => Some(b.data_dir.join(&conf.name).join("nft-applied")),
        Ipam::Delegate(_) => None,
    }
}

/// Whether the network's `ip` table is as this plugin last wrote it
/// (`written`, from the marker; `None`: not known). Anything else is
/// logged as a warning naming what changed, and the caller writes the
/// rules again.
fn rules_in_place(network: &str, written: Option<&Option<nft::TableState>>) -> bool {
    let table = nft::table_name(network);
    let Some(written) = written else {
        tracing::info!(
            table,
            "no record of the nftables table as written; writing it again"
        );
        return false;
    };
    if written.is_none() {
        // No table to protect (neither masquerade nor inbound drop).
        return true;
    }
    let found = match Nftables::new().and_then(|mut n| nft::observe(&mut n, network)) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(table, error = %e, "cannot read the nftables rules; writing them again");
            return false;
        }
    };
    match nft::difference(&table, written.as_ref(), found.as_ref()) {
        None => true,
        Some(what) => {
            tracing::warn!(
                table,
                "nftables rules were changed by someone else ({what}); writing them again"
            );
            false
        }
    }
}

/// Hosts running Docker have an iptables `FORWARD` chain with policy DROP
/// (and `br_netfilter` loaded), which would drop pod traffic no matter what
/// our own tables accept. Insert two accepts there, the way Docker does for
/// its own bridges: anything from the bridge, and replies to it. Best
/// effort: without `iptables` or without that chain nothing is needed.
fn forward_rules(bridge: &str) -> [Vec<String>; 2] {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    [
        v(&[
            "-i",
            bridge,
            "-m",
            "comment",
            "--comment",
            "smarter-cni",
            "-j",
            "ACCEPT",
        ]),
        v(&[
            "-o",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-m",
            "comment",
            "--comment",
            "smarter-cni",
            "-j",
            "ACCEPT",
        ]),
    ]
}

fn allow_forwarding_in_iptables(bridge: &str) {
    let rules = forward_rules(bridge);
    for rule in rules {
        let run = |op: &str| {
            std::process::Command::new(host_tool("iptables"))
                .args(["-w", op, "FORWARD"])
                .args(&rule)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
        };
        match run("-C") {
            Ok(true) => {}
            Ok(false) => {
                if !run("-I").unwrap_or(false) {
                    tracing::debug!(bridge, "no iptables FORWARD chain to open");
                }
            }
            Err(_) => return, // no iptables binary
        }
    }
}

/// ADD in native mode.
pub fn add(conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<CniResult, CniError> {
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"))?;
    let ns = open_netns(netns_path)?;
    let mut store = open_store(conf)?;
    let lease = lease(conf, env, stdin, store.as_ref())?;
    // Unlock at once unless isolation rules are built from the allocations
    // below: parallel ADDs then only queue for the allocation itself. The
    // rare paths that need the store later (a stale veth, a failed ADD)
    // lock it again.
    if !conf.isolation.enabled {
        store = None;
    }
    let mut created_veth = false;
    match attach(
        conf,
        env,
        store.as_ref(),
        &ns,
        netns_path,
        &lease,
        &mut created_veth,
    ) {
        Ok(mut result) => {
            if let Some(d) = &lease.delegated {
                result.dns = d.dns.clone();
            }
            if !conf.dns.is_empty() {
                result.dns = conf.dns.clone();
            }
            Ok(result)
        }
        Err(e) => {
            // Leave nothing behind: the veth (only if this call made it) and
            // the address.
            if created_veth
                && let Ok(mut nl) = Netlink::new()
                && let Ok(Some(l)) =
                    nl.link_by_name(&host_veth_name(&env.container_id, &env.ifname))
            {
                let _ = nl.del_link(l.index);
            }
            if let Err(r) = release(conf, env, stdin, store.as_ref()) {
                tracing::warn!(error = %r, "releasing the address after a failed ADD failed");
            }
            Err(e)
        }
    }
}

fn attach(
    conf: &NetConf,
    env: &Env,
    store: Option<&Store>,
    ns: &File,
    netns_path: &Path,
    lease: &Lease,
    created_veth: &mut bool,
) -> Result<CniResult, CniError> {
    let mut nl = Netlink::new().map_err(nl_err)?;
    let gw_net = Ipv4Net::new(lease.gateway, lease.subnet.prefix());
    let (bridge, created) = ensure_bridge(&mut nl, conf, gw_net.filter(|_| conf.is_gateway))?;
    if conf.is_gateway || conf.ip_masq {
        enable_forwarding()?;
    }
    let host = host_veth_name(&env.container_id, &env.ifname);
    if let Some(stale) = nl.link_by_name(&host).map_err(nl_err)? {
        // Normally left by an ADD of this attachment that was killed half-way:
        // start again. Never take it from another live attachment whose name
        // hashes the same (32-bit hash, so rare but possible).
        if let Some(owner) = other_owner_of(conf, store, env, &host)? {
            return Err(CniError::new(
                code::PLUGIN,
                format!("host veth name {host} is already used by {owner}"),
            ));
        }
        match nl.del_link(stale.index) {
            // Gone meanwhile, e.g. by the detached delete of an earlier DEL.
            Err(e) if e.is_not_found() => {}
            r => r.map_err(nl_err)?,
        }
    }
    let mut cnl = Netlink::in_netns(netns_path).map_err(nl_err)?;
    if cnl.link_by_name(&env.ifname).map_err(nl_err)?.is_some() {
        return Err(CniError::new(
            code::PLUGIN,
            format!(
                "interface {} already exists in {}",
                env.ifname,
                netns_path.display()
            ),
        ));
    }
    nl.add_veth(&host, bridge.index, &env.ifname, ns, conf.mtu)
        .map_err(nl_err)?;
    *created_veth = true;
    let hl = nl
        .link_by_name(&host)
        .map_err(nl_err)?
        .ok_or_else(|| CniError::new(code::PLUGIN, format!("veth {host} vanished")))?;
    if conf.hairpin_mode {
        nl.set_hairpin(hl.index, true).map_err(nl_err)?;
    }
    let cl = cnl
        .link_by_name(&env.ifname)
        .map_err(nl_err)?
        .ok_or_else(|| {
            CniError::new(
                code::PLUGIN,
                format!("{} not found in container", env.ifname),
            )
        })?;
    cnl.add_address(cl.index, prefix(lease.addr))
        .map_err(nl_err)?;
    cnl.set_up(cl.index, None, None).map_err(nl_err)?;
    let mut routes = Vec::new();
    if conf.is_default_gateway {
        cnl.add_route(&Route4 {
            dst: Ipv4Prefix {
                addr: Ipv4Addr::UNSPECIFIED,
                len: 0,
            },
            gateway: Some(lease.gateway),
            oif: Some(cl.index),
        })
        .map_err(nl_err)?;
        routes.push(Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(IpAddr::V4(lease.gateway)),
        });
    }
    sync_rules(conf, store, lease.subnet, created)?;
    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                mac: bridge.mac_string(),
                sandbox: None,
                mtu: bridge.mtu,
            },
            Interface {
                name: host,
                mac: hl.mac_string(),
                sandbox: None,
                mtu: hl.mtu,
            },
            Interface {
                name: env.ifname.clone(),
                mac: cl.mac_string(),
                sandbox: Some(netns_path.display().to_string()),
                mtu: cl.mtu,
            },
        ],
        ips: vec![IpConfig {
            address: lease.addr.to_string(),
            gateway: Some(IpAddr::V4(lease.gateway)),
            interface: Some(2),
        }],
        routes,
        dns: Default::default(),
    })
}

/// How long DEL waits for a detached delete to take the veth out of the
/// namespace before deleting it in line.
const DETACHED_DELETE_DEADLINE: Duration = Duration::from_secs(2);
/// Pause between two looks at the link while a detached delete runs; the
/// kernel unlinks a veth within about a millisecond of the request.
const DETACHED_DELETE_POLL: Duration = Duration::from_micros(200);

/// Whether this process has exactly one thread (so `fork` is safe).
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// Delete the link `name` with index `index` and return as soon as it is
/// gone from the namespace, without waiting for the kernel to finish
/// tearing it down.
///
/// Deleting a veth takes the kernel about 20 ms (measured with
/// `sched_switch` stacks: `rcu_barrier()` in `netdev_run_todo` plus an
/// expedited RCU grace period), nearly all of it after the device, with
/// its peer, has already been unlinked: no name, no index, no carrier,
/// nothing left to observe or to reach. So a forked child sends the
/// request and sits out that wait, while this process looks the name up
/// ([`still_named`]) until it no longer resolves to `index`, and goes on. A sent request
/// completes even if the child is then killed. If the process has other
/// threads (forking would not be safe), the fork fails, the child gives up,
/// or the link is still there after [`DETACHED_DELETE_DEADLINE`], the link
/// is deleted here, in line, as before.
fn delete_link_detached(nl: &mut Netlink, name: &str, index: u32) -> Result<(), NetlinkError> {
    let in_line = |nl: &mut Netlink| match nl.del_link(index) {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    };
    if !single_threaded() {
        return in_line(nl);
    }
    // SAFETY: the process has a single thread (checked just above), so the
    // child is a complete copy of it: no lock or allocator state can belong
    // to a thread that does not exist in the child.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => delete_link_in_child(index),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            tracing::debug!(error = %e, "cannot fork: deleting {name} in line");
            return in_line(nl);
        }
    };
    let deadline = Instant::now() + DETACHED_DELETE_DEADLINE;
    let mut child_done = false;
    while still_named(nl, name, index)? {
        if !child_done {
            // Anything but "still running" means the child will send nothing more.
            child_done = !matches!(
                waitpid(child, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            );
        }
        if child_done || Instant::now() >= deadline {
            tracing::debug!(
                link = name,
                "detached delete did not finish: deleting in line"
            );
            return in_line(nl);
        }
        std::thread::sleep(DETACHED_DELETE_POLL);
    }
    // Reap the child if it is already done; otherwise init (or the nearest
    // subreaper) does when this process exits.
    if !child_done {
        let _ = waitpid(child, Some(WaitPidFlag::WNOHANG));
    }
    Ok(())
}

/// Whether `name` still resolves to `index` in this process's namespace.
///
/// Asked with `if_nametoindex` (an ioctl answered under RCU) rather than
/// rtnetlink: the kernel drops the name as the first step of the delete,
/// while an rtnetlink request would queue for the RTNL lock that the
/// child's delete holds for its grace periods (measured 1-8 ms under load).
fn still_named(nl: &mut Netlink, name: &str, index: u32) -> Result<bool, NetlinkError> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(i) => Ok(i == index),
        Err(nix::Error::ENODEV) => Ok(false),
        // Cannot tell this way (e.g. no descriptor left): ask rtnetlink.
        Err(_) => Ok(nl.link_by_name(name)?.is_some_and(|l| l.index == index)),
    }
}

/// The forked child of [`delete_link_detached`]: delete the link, exit.
fn delete_link_in_child(index: u32) -> ! {
    // Keep none of the parent's descriptors (IPAM lock file, namespace
    // files, netlink socket): only the link's deletion is the child's
    // business. The IPAM lock itself goes when the parent unlocks it
    // (LOCK_UN acts on the open file the child shares).
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<i32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect();
        for fd in fds {
            let _ = nix::unistd::close(fd);
        }
    }
    // The runtime reads the plugin's stdout and stderr to their end: the
    // child must not keep them open for the length of the kernel's wait.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let done = Netlink::new().and_then(|mut nl| match nl.del_link(index) {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    });
    std::process::exit(i32::from(done.is_err()))
}

/// DEL in native mode: remove the veth, the address, the rules; anything
/// already gone is fine.
pub fn del(conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<(), CniError> {
    let store = open_store(conf)?;
    let mut nl = Netlink::new().map_err(nl_err)?;
    let host = host_veth_name(&env.container_id, &env.ifname);
    let mut deleted_pair = false;
    if let Some(l) = nl.link_by_name(&host).map_err(nl_err)?
        && other_owner_of(conf, store.as_ref(), env, &host)?.is_none()
    {
        delete_link_detached(&mut nl, &host, l.index).map_err(nl_err)?;
        deleted_pair = true;
    }
    // A veth pair goes as a whole: the container end only needs a look of
    // its own when the host end was not there (or not ours to delete).
    if !deleted_pair
        && let Some(path) = &env.netns
        && path.exists()
        && let Ok(mut cnl) = Netlink::in_netns(path)
        && let Ok(Some(l)) = cnl.link_by_name(&env.ifname)
        && l.kind.as_deref() == Some("veth")
    {
        let _ = cnl.del_link(l.index);
    }
    release(conf, env, stdin, store.as_ref())?;
    if conf.isolation.enabled
        && let Ipam::Builtin(b) = &conf.ipam
    {
        sync_rules(conf, store.as_ref(), b.subnet, true)?;
    }
    Ok(())
}

fn check_failed(msg: impl Into<String>) -> CniError {
    CniError::new(code::PLUGIN, msg)
}

/// CHECK in native mode: everything ADD set up is still there.
pub fn check(
    conf: &NetConf,
    env: &Env,
    stdin: &[u8],
    prev: Option<&CniResult>,
) -> Result<(), CniError> {
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"))?;
    let _ = open_netns(netns_path)?;
    let expected: Option<Ipv4Addr> = match &conf.ipam {
        Ipam::Builtin(b) => {
            let store = Store::open(&b.data_dir, &conf.name).map_err(ipam_err)?;
            let ips = store
                .find(&env.container_id, &env.ifname)
                .map_err(ipam_err)?;
            Some(*ips.first().ok_or_else(|| {
                check_failed(format!(
                    "no address allocated to {}/{}",
                    env.container_id, env.ifname
                ))
            })?)
        }
        Ipam::Delegate(plugin) => {
            // The IPAM plugin checks its own state (it gets prevResult too).
            let bin = delegate::find(plugin, &env.path)?;
            delegate::exec(&bin, "CHECK", env, stdin)?;
            None
        }
    };
    let prev_ip = prev.and_then(|p| {
        p.ips.iter().find_map(|i| match i.ip() {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        })
    });
    if let (Some(e), Some(p)) = (expected, prev_ip)
        && e != p
    {
        return Err(check_failed(format!(
            "prevResult has {p} but IPAM holds {e}"
        )));
    }
    let want = expected.or(prev_ip);
    let mut nl = Netlink::new().map_err(nl_err)?;
    let bridge = nl
        .link_by_name(&conf.bridge)
        .map_err(nl_err)?
        .ok_or_else(|| check_failed(format!("bridge {} is missing", conf.bridge)))?;
    let host = host_veth_name(&env.container_id, &env.ifname);
    let hl = nl
        .link_by_name(&host)
        .map_err(nl_err)?
        .ok_or_else(|| check_failed(format!("host veth {host} is missing")))?;
    if hl.controller != Some(bridge.index) {
        return Err(check_failed(format!(
            "{host} is not a port of {}",
            conf.bridge
        )));
    }
    if !hl.up {
        return Err(check_failed(format!("{host} is down")));
    }
    let mut cnl = Netlink::in_netns(netns_path).map_err(nl_err)?;
    let cl = cnl
        .link_by_name(&env.ifname)
        .map_err(nl_err)?
        .ok_or_else(|| check_failed(format!("{} is missing in the container", env.ifname)))?;
    if let Some(ip) = want {
        let addrs = cnl.addresses(cl.index).map_err(nl_err)?;
        if !addrs.iter().any(|a| a.addr == ip) {
            return Err(check_failed(format!("{} lacks address {ip}", env.ifname)));
        }
    }
    if conf.is_default_gateway {
        let routes = cnl.routes().map_err(nl_err)?;
        if !routes.iter().any(|r| r.dst.len == 0 && r.gateway.is_some()) {
            return Err(check_failed("default route is missing in the container"));
        }
    }
    if conf.ip_masq || conf.deny_inbound {
        // Over netlink, as ADD does: the table must be there and, when this
        // boot's marker recorded it, be the table and rules last written.
        // Not with isolation: every ADD and DEL then rewrites the table, so
        // one running beside this CHECK would look like a stranger's change.
        let t = nft::table_name(&conf.name);
        let found = Nftables::new()
            .and_then(|mut n| nft::observe(&mut n, &conf.name))
            .map_err(nl_err)?
            .ok_or_else(|| check_failed(format!("masquerade table {t} is missing")))?;
        let written = rules_marker(conf)
            .filter(|_| !conf.isolation.enabled)
            .and_then(|m| nft::Marker::read(&m))
            .filter(|m| m.boot == boot_id())
            .and_then(|m| m.state.flatten());
        if let Some(what) = nft::difference(&t, written.as_ref().or(Some(&found)), Some(&found)) {
            return Err(check_failed(what));
        }
        if found.dormant {
            return Err(check_failed(format!("table ip {t} is dormant")));
        }
    }
    Ok(())
}

/// What GC released.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Attachments (container id, ifname) whose address was freed.
    pub released: Vec<(String, String)>,
    /// Host veths deleted.
    pub links: Vec<String>,
}

/// GC in native mode: free addresses, veths and rules of attachments not
/// in `valid`.
/// With a delegated IPAM (`b` is `None`) the delegate frees addresses; the
/// bridge ports are still ours to clean.
pub fn gc(
    conf: &NetConf,
    valid: &[(String, String)],
    b: Option<&BuiltinIpam>,
) -> Result<GcReport, CniError> {
    let mut report = GcReport::default();
    let store = match b {
        Some(b) => Some(Store::open(&b.data_dir, &conf.name).map_err(ipam_err)?),
        None => None,
    };
    if let Some(store) = &store {
        for (_, owner) in store.gc(valid).map_err(ipam_err)? {
            if let Some(o) = owner {
                report.released.push((o.container_id, o.ifname));
            }
        }
    }
    let keep: Vec<String> = valid
        .iter()
        .map(|(id, ifn)| host_veth_name(id, ifn))
        .collect();
    let mut nl = Netlink::new().map_err(nl_err)?;
    if let Some(br) = nl.link_by_name(&conf.bridge).map_err(nl_err)? {
        for l in nl.links().map_err(nl_err)? {
            let ours = l.name.len() == 12
                && l.name.starts_with("veth")
                && l.name[4..].chars().all(|c| c.is_ascii_hexdigit());
            if ours
                && l.controller == Some(br.index)
                && !keep.contains(&l.name)
                && nl.del_link(l.index).is_ok()
            {
                report.links.push(l.name);
            }
        }
    }
    if let Some(b) = b {
        sync_rules(conf, store.as_ref(), b.subnet, true)?;
    }
    Ok(report)
}

/// Remove everything a network left on the host that DEL keeps for the
/// next pod: the bridge, the nftables tables and the iptables FORWARD
/// accepts. Used when a network is retired (and by tests). Missing pieces
/// are fine.
pub fn remove_network(network: &str, bridge: &str) -> Result<(), CniError> {
    let mut nl = Netlink::new().map_err(nl_err)?;
    if let Some(b) = nl.link_by_name(bridge).map_err(nl_err)? {
        let _ = nl.del_link(b.index);
    }
    nft::apply(&nft_binary(), &nft::remove_script(network))
        .map_err(|e| CniError::new(code::PLUGIN, "nftables").with_details(e.to_string()))?;
    for rule in forward_rules(bridge) {
        while std::process::Command::new(host_tool("iptables"))
            .args(["-w", "-D", "FORWARD"])
            .args(&rule)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {}
    }
    Ok(())
}
