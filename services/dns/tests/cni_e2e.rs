//! End to end, the product story "apps on one gateway find each other by
//! name": the real `smarter-cni` binary, run exactly as a container runtime
//! runs it (CNI environment, network config on stdin, `CNI_ARGS` with the
//! pod name and namespace), attaches two pods (network namespaces) to a
//! bridge with its built-in IPAM and writes their records; the real
//! `smarter-dns` binary in the host (gateway) namespace listens on the
//! bridge address and watches the same records directory. From inside pod A,
//! `dig` and the libc resolver find pod B by name at the address the plugin
//! gave it, pod A pings pod B there, a name that is not local is forwarded
//! to a `dnsmasq` upstream, and after the runtime's DEL of pod B its names
//! are NXDOMAIN within 50 ms.
//!
//! Needs root, `ip`, `nft`, `ping`, `dig`, `getent`, `dnsmasq` and the
//! `smarter-cni` binary built into the same target directory
//! (`cargo test --workspace`, or `cargo build -p smarter-cni` first).

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    ChildGuard, TestResult, addrs, dnsmasqs, have, query_bytes, rcode, require_peer, require_root,
    skip,
};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};
use smarter_test_support::{Netns, wait_until};

const DNS_BIN: &str = env!("CARGO_BIN_EXE_smarter-dns");

/// Our bound from a pod's removal to NXDOMAIN.
const REMOVAL_LIMIT: Duration = Duration::from_millis(50);

type Error = Box<dyn std::error::Error>;

/// `target/<profile>/smarter-cni`, beside this test's `deps/` directory.
fn cni_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("smarter-cni");
    bin.is_file().then_some(bin)
}

fn run(args: &[&str]) -> Result<String, Error> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A pod sandbox's network namespace, deleted on drop together with its
/// `/etc/netns/<name>` (the pod's resolv.conf, bind-mounted by
/// `ip netns exec`).
struct Pod {
    ns: Netns,
    path: PathBuf,
    /// Whether we created `/etc/netns` (removed again on drop if empty).
    made_etc_netns: bool,
}

impl Pod {
    fn new(name: String) -> Result<Self, Error> {
        let ns = Netns::new(&name)?;
        Ok(Self {
            path: ns.path().to_path_buf(),
            ns,
            made_etc_netns: false,
        })
    }

    /// What the kubelet writes for a pod with `cluster-dns` = `server`.
    fn set_resolv_conf(&mut self, server: Ipv4Addr, namespace: &str) -> Result<(), Error> {
        self.made_etc_netns = !Path::new("/etc/netns").exists();
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!(
                "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n\
                 nameserver {server}\noptions ndots:5\n"
            ),
        )?;
        Ok(())
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from(format!("/etc/netns/{}", self.ns.name()))
    }

    fn exec(&self, args: &[&str]) -> Result<String, Error> {
        let out = self.ns.exec(args)?;
        if !out.status.success() {
            return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `dig` inside the pod; its output whatever the status.
    fn dig(&self, args: &[&str]) -> Result<String, Error> {
        let mut v = vec!["dig", "+tries=1", "+time=1"];
        v.extend_from_slice(args);
        let out = self.ns.exec(&v)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A UDP socket that lives in the pod's namespace, for polling faster
    /// than spawning `dig`.
    fn udp_socket(&self) -> Result<UdpSocket, Error> {
        Ok(self.ns.run(|| UdpSocket::bind("0.0.0.0:0"))??)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The namespace itself goes with `ns`.
        let _ = std::fs::remove_dir_all(self.etc_dir());
        if self.made_etc_netns {
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
}

/// The runtime side: runs the plugin as containerd does, and DELs every
/// attachment still present on drop (while the pods still exist).
struct Runtime {
    bin: PathBuf,
    conf: Value,
    attached: Vec<(String, PathBuf)>,
}

impl Runtime {
    fn call(
        &self,
        command: &str,
        id: &str,
        netns: &Path,
        args: &str,
    ) -> Result<(i32, Value, String), Error> {
        use std::io::Write;
        let mut child = Command::new(&self.bin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(self.conf.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let result = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        };
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        Ok((out.status.code().unwrap_or(-1), result, stderr))
    }

    /// ADD `pod` of `namespace` in sandbox `id`; returns its address.
    fn add(&mut self, id: &str, netns: &Path, pod: &str, namespace: &str) -> Result<String, Error> {
        self.attached.push((id.to_string(), netns.to_path_buf()));
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};\
             K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID=0d5c{id:.8}"
        );
        let (code, result, stderr) = self.call("ADD", id, netns, &args)?;
        if code != 0 {
            return Err(format!("ADD {pod}: exit {code}: {result} {stderr}").into());
        }
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .ok_or_else(|| format!("ADD {pod}: no address in {result}"))?;
        Ok(ip.to_string())
    }

    fn del(&mut self, id: &str) -> Result<(), Error> {
        let Some(pos) = self.attached.iter().position(|(i, _)| i == id) else {
            return Err(format!("DEL of {id}, which was never added").into());
        };
        let (id, netns) = self.attached.remove(pos);
        let (code, result, stderr) = self.call("DEL", &id, &netns, "IgnoreUnknown=1")?;
        if code != 0 {
            return Err(format!("DEL {id}: exit {code}: {result} {stderr}").into());
        }
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for (id, netns) in std::mem::take(&mut self.attached) {
            let _ = self.call("DEL", &id, &netns, "IgnoreUnknown=1");
        }
    }
}

/// The network the plugin keeps between pods (bridge, nftables tables,
/// iptables FORWARD accepts on Docker hosts), torn down by the plugin's own
/// `smarter_cni::native::remove_network`, so which rules exist is stated
/// only in the cni crate. On drop (a failed run, or after
/// [`NetworkGuard::remove`] found something left) it tears down again, best
/// effort, so a failure does not leave the host dirty for the next run.
struct NetworkGuard {
    network: String,
    bridge: String,
}

impl NetworkGuard {
    /// Tear the network down and check, with `ip`, `nft` and `iptables`
    /// themselves, that nothing of it is left on the host.
    fn remove(self) -> Result<(), Error> {
        smarter_cni::native::remove_network(&self.network, &self.bridge)?;
        let link = Command::new("ip")
            .args(["link", "show", "dev", &self.bridge])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if link.success() {
            return Err(format!("bridge {} left behind", self.bridge).into());
        }
        let table = smarter_cni::nft::table_name(&self.network);
        let tables = run(&["nft", "list", "tables"])?;
        let left: Vec<_> = tables
            .lines()
            .filter(|l| l.split_whitespace().last() == Some(table.as_str()))
            .collect();
        if !left.is_empty() {
            return Err(format!("nft tables left behind: {left:?}").into());
        }
        if have("iptables") {
            let forward = run(&["iptables", "-w", "-S", "FORWARD"])?;
            let left: Vec<_> = forward
                .lines()
                .filter(|l| l.split_whitespace().any(|w| w == self.bridge))
                .collect();
            if !left.is_empty() {
                return Err(format!("iptables FORWARD rules left behind: {left:?}").into());
            }
        }
        Ok(())
    }
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let _ = smarter_cni::native::remove_network(&self.network, &self.bridge);
    }
}

/// One A question over `sock`; `None` when nothing came back in time.
fn ask(sock: &UdpSocket, server: SocketAddr, name: &str) -> Result<Option<Message>, Error> {
    let (id, bytes) = query_bytes(name, RecordType::A)?;
    sock.send_to(&bytes, server)?;
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let m = Message::from_vec(&buf[..n])?;
                if m.metadata.id == id {
                    return Ok(Some(m));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Poll `f` every 2 ms until it holds or `limit` passes; the time it took,
/// `None` on timeout, or the first error `f` returned.
fn poll(
    limit: Duration,
    mut f: impl FnMut() -> Result<bool, Error>,
) -> Result<Option<Duration>, Error> {
    let start = Instant::now();
    let outcome = wait_until("a condition", limit, Duration::from_millis(2), || {
        match f() {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    });
    match outcome {
        Ok(r) => r.map(|()| Some(start.elapsed())),
        Err(_) => Ok(None),
    }
}

#[test]
fn pods_find_each_other_by_name_through_cni_records() -> TestResult {
    if !require_root("network namespaces, bridge, nftables, port 53") {
        return Ok(());
    }
    let Some(cni) = cni_bin() else {
        skip("smarter-cni not built (run cargo test --workspace)");
        return Ok(());
    };
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("ping", "iputils-ping"),
        ("dig", "bind9-dnsutils"),
        ("getent", "libc-bin"),
        ("dnsmasq", "dnsmasq"),
    ] {
        if !require_peer(tool, package) {
            return Ok(());
        }
    }

    // Names and a subnet of our own, so the cni crate's tests (10.201-10.252)
    // and another run of this one can run beside it.
    let pid = std::process::id();
    let tag = format!("{:x}", pid % 0xffff);
    let network = format!("e2e{tag}");
    let bridge = format!("sme2e{tag}");
    let octet = 20 + pid % 200;
    let subnet = format!("10.231.{octet}.0/24");
    let gateway = Ipv4Addr::new(10, 231, u8::try_from(octet)?, 1);
    let network_guard = NetworkGuard {
        network: network.clone(),
        bridge: bridge.clone(),
    };
    let dir = tempfile::tempdir()?;
    let records = dir.path().join("records");

    // The upstream: dnsmasq on loopback, answering *.fwd.test.
    let (_dnsmasq, upstream_port) =
        dnsmasqs(&[(Ipv4Addr::LOCALHOST.into(), "192.0.2.53")], "fwd.test")?;

    // smarter-dns in the gateway (host) namespace, on the bridge address,
    // which does not exist yet (the first ADD creates the bridge).
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.1\n")?;
    let config = dir.path().join("smarter-dns.toml");
    std::fs::write(
        &config,
        format!(
            "records_dir = \"{}\"\nlisten = [\"{gateway}\"]\nport = 53\ndummy_interface = \"\"\n\
             resolv_conf = \"{}\"\nupstream_port = {upstream_port}\nttl = 5\n",
            records.display(),
            dir.path().join("resolv.conf").display(),
        ),
    )?;
    let checked = Command::new(DNS_BIN)
        .arg("--check-config")
        .arg("--config")
        .arg(&config)
        .status()?;
    assert!(
        checked.success(),
        "smarter-dns rejects {}",
        config.display()
    );
    let mut dns = ChildGuard(
        Command::new(DNS_BIN)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );

    // The pods and the runtime that attaches them. Declared after the
    // network guard, so on drop: DEL every attachment, delete the
    // namespaces, then the bridge and rules.
    let mut pod_a = Pod::new(format!("e2ea{tag}"))?;
    let pod_b = Pod::new(format!("e2eb{tag}"))?;
    let mut runtime = Runtime {
        bin: cni,
        conf: json!({
            "cniVersion": "1.1.0",
            "name": network,
            "type": "smarter-cni",
            "bridge": bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "recordsDir": records,
            "ipam": { "subnet": subnet, "dataDir": dir.path().join("ipam") },
        }),
        attached: Vec::new(),
    };
    let id_a = format!("{:0>64}", format!("a{tag}"));
    let id_b = format!("{:0>64}", format!("b{tag}"));

    let ip_a = runtime.add(&id_a, &pod_a.path, "camera", "iot")?;
    pod_a.set_resolv_conf(gateway, "iot")?;
    let server = SocketAddr::from((gateway, 53));
    let from_a = pod_a.udp_socket()?;
    // Ready: smarter-dns answers pod A its own name over the bridge.
    let ready = poll(Duration::from_secs(10), || {
        if let Ok(Some(status)) = dns.0.try_wait() {
            return Err(format!("smarter-dns exited: {status}").into());
        }
        Ok(ask(&from_a, server, "camera")?.is_some_and(|m| {
            addrs(&m)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                == [ip_a.as_str()]
        }))
    })?;
    assert!(
        ready.is_some(),
        "smarter-dns never answered camera -> {ip_a} on {server}"
    );

    // Pod B arrives: A finds it by name, at the address the plugin gave it.
    let ip_b = runtime.add(&id_b, &pod_b.path, "sensor", "iot")?;
    assert_ne!(ip_a, ip_b);
    let seen = poll(Duration::from_secs(2), || {
        Ok(ask(&from_a, server, "sensor.iot.svc.cluster.local")?
            .is_some_and(|m| addrs(&m).iter().any(|a| a.to_string() == ip_b)))
    })?;
    let Some(seen) = seen else {
        return Err(format!("sensor never resolved to {ip_b}").into());
    };
    eprintln!("ADD of sensor -> resolvable from camera in {seen:?}");
    let gw = format!("@{gateway}");
    for name in ["sensor", "sensor.iot.svc.cluster.local"] {
        for transport in ["+notcp", "+tcp"] {
            let out = pod_a.dig(&[&gw, transport, "+short", name])?;
            assert_eq!(out.trim(), ip_b, "dig {transport} {name} from camera");
        }
    }
    let out = pod_a.dig(&[&gw, "+short", "-x", &ip_b])?;
    assert_eq!(out.trim(), "sensor.iot.svc.cluster.local.");
    // An app's view: the libc resolver with the pod's resolv.conf
    // (search list, ndots:5), as the kubelet would write it.
    let out = pod_a.exec(&["getent", "ahostsv4", "sensor"])?;
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.starts_with(&format!("{ip_b} "))),
        "getent ahostsv4 sensor in camera: {out}"
    );
    // The resolved address reaches pod B.
    let resolved = pod_a.dig(&[&gw, "+short", "sensor"])?;
    pod_a
        .exec(&["ping", "-c", "1", "-W", "2", "-q", resolved.trim()])
        .map_err(|e| format!("camera cannot ping sensor at {resolved}: {e}"))?;

    // Not local: forwarded to the upstream.
    let out = pod_a.dig(&[&gw, "+short", "www.fwd.test"])?;
    assert_eq!(out.trim(), "192.0.2.53", "forwarded name");

    // Pod B goes: after the runtime's DEL returns, its names are NXDOMAIN
    // within the limit.
    runtime.del(&id_b)?;
    let gone = poll(Duration::from_secs(2), || {
        Ok(
            rcode(&ask(&from_a, server, "sensor.iot.svc.cluster.local")?)
                == Some(ResponseCode::NXDomain),
        )
    })?;
    let Some(gone) = gone else {
        let last = ask(&from_a, server, "sensor.iot.svc.cluster.local")?;
        let left: Vec<_> = std::fs::read_dir(&records)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        return Err(format!(
            "sensor not NXDOMAIN 2 s after its DEL; last answer {last:?}; records left {left:?}"
        )
        .into());
    };
    eprintln!("DEL of sensor -> NXDOMAIN in {gone:?}");
    assert!(
        gone <= REMOVAL_LIMIT,
        "NXDOMAIN {gone:?} after DEL, limit {REMOVAL_LIMIT:?}"
    );
    for name in ["sensor", "sensor.iot.svc.cluster.local"] {
        let out = pod_a.dig(&[&gw, name])?;
        assert!(out.contains("status: NXDOMAIN"), "{name} after DEL: {out}");
    }
    // Pod A still reaches the gateway and resolves (the bridge kept its MAC).
    let out = pod_a.dig(&[&gw, "+short", "camera.iot.svc.cluster.local"])?;
    assert_eq!(out.trim(), ip_a);

    runtime.del(&id_a)?;
    // While it was up the plugin did make the rules the teardown must
    // remove (so the checks below can fail).
    let table = smarter_cni::nft::table_name(&network);
    assert!(
        run(&["nft", "list", "tables"])?
            .lines()
            .any(|l| l.split_whitespace().last() == Some(table.as_str())),
        "no nft table {table} while the network was up"
    );
    if have("iptables") {
        assert!(
            run(&["iptables", "-w", "-S", "FORWARD"])?
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == bridge)),
            "no iptables FORWARD accept for {bridge} while the network was up"
        );
    }
    network_guard.remove()?;
    Ok(())
}
