"""Apps on a gateway for the app-to-app DNS test (tests/test_apps.py), and its checks.

Two back ends run the same two apps from the same probe image, chosen by the board's
features:

* `DockerApps` (the emulated gateway, whose apps run under Docker): `docker run` with
  `--dns 169.254.0.2`; smarter-dns learns the containers from Docker's events.
* `CrictlApps` (k3s boards): pods made on the gateway itself with k3s's bundled `crictl`
  and `ctr`, talking CRI to k3s's containerd, no master involved. Each app is a pod
  sandbox (`crictl runp`) whose config is what the kubelet would send for a pod with
  `--cluster-dns 169.254.0.2`, so containerd attaches it through smarter-cni exactly as it
  does the kubelet's pods; smarter-cni writes the record smarter-dns serves, under the
  pod's name (`K8S_POD_NAME` in `CNI_ARGS`, which containerd fills from the sandbox's
  `metadata.name`) and `<name>.<namespace>.svc.cluster.local`.

  The k3s agent's kubelet tears down any running pod sandbox it did not create (its
  housekeeping treats it as an orphan, within seconds), so the back end stops the k3s
  agent's main process (SIGSTOP: the kubelet is in it; containerd is a process of its own
  and goes on) from just before the first sandbox until the last one is removed, and a
  watchdog on the gateway sends SIGCONT after `PAUSE_LIMIT_S` should the suite die in
  between. Why, and what else was weighed: docs/decisions/0093-app-test-pods-through-crictl.md.

`check_apps` is the test itself, the same for both: app A listens on a TCP port; app B
resolves A's name through smarter-dns (its only name server) to the address the runtime
gave A, connects to A by that name, and resolves an outside name through smarter-dns's
forwarder.
"""

import ipaddress
import json
import re
import shlex
import time
import uuid

from smarter_hil.gateway import RUN_DIR

DNS = "169.254.0.2"  # smarter-dns's address (its default `listen`), the kubelet's --cluster-dns
DOMAIN = "cluster.local"  # the kubelet's --cluster-domain
OUTSIDE_NAME = "outside.smarter-hil.test"
OUTSIDE_ADDR = "192.0.2.7"
APP_A = "hil-app-a"
APP_B = "hil-app-b"
PORT = 7000
PROBE = "smarter-hil-probe:1"
# The same image under the full name containerd gives it (CRI looks images up by it).
PROBE_REF = f"docker.io/library/{PROBE}"
# What the probe image holds: a shell, the resolver's own tool and netcat, each with the
# libraries ldd names (copied from the gateway's root file system, so no image is pulled).
PROBE_TOOLS = "/usr/bin/bash /usr/bin/getent /usr/bin/nc.openbsd"
LISTEN = ["/usr/bin/nc.openbsd", "-lk", str(PORT)]
# How long app A may take to become resolvable by name.
RESOLVE_DEADLINE_S = 90

# k3s boards: the namespace the test's pods are in (nothing else uses it), and the longest
# the kubelet stays stopped should the suite die before it resumes it.
NAMESPACE = "smarter-hil"
PAUSE_LIMIT_S = 300
# The label that marks the test's pods, so a later run finds what an earlier one left.
POD_LABEL = ("smarter-hil", "app-test")
# NamespaceMode of CRI runtime v1: what the kubelet asks for a pod without host namespaces.
NS_POD, NS_CONTAINER = 0, 1


def sh(gateway, cmd, timeout=120):
    """Run `cmd` in the gateway's shell: (exit status, output as one string)."""
    out, _, code = gateway.run(cmd, timeout=timeout)
    return code, "\n".join(out)


def check_apps(apps, figure):
    """The test proper, on either back end (which the caller cleans up)."""
    apps.make_image()
    address = apps.start()

    # Time from app A running until app B resolves its name through smarter-dns.
    name = apps.names_of_a()[0]
    start = time.monotonic()
    resolved = []
    while time.monotonic() - start < RESOLVE_DEADLINE_S:
        code, out = apps.in_b(f"/usr/bin/getent hosts {name}")
        resolved = out.split()
        if code == 0 and resolved:
            break
        time.sleep(0.5)
    assert code == 0 and resolved[:1] == [address], (
        f"app B resolved {name} to {resolved[:1] if code == 0 else 'nothing'} through smarter-dns; "
        f"{apps.runtime} gave app A {address} (last output: {out[-300:]!r})")
    figure("app start to name resolvable", time.monotonic() - start, "s")
    for other in apps.names_of_a()[1:]:
        code, out = apps.in_b(f"/usr/bin/getent hosts {other}")
        assert code == 0 and out.split()[:1] == [address], (
            f"app B resolved {other} to {out!r}; {apps.runtime} gave app A {address}")

    code, out = apps.in_b(
        "/usr/bin/bash -c " + shlex.quote(
            f"echo hello | /usr/bin/nc.openbsd -N -w 5 {name} {PORT} && echo connected"),
        name=APP_B)
    assert code == 0 and "connected" in out, f"app B could not connect to {name}:{PORT} by name: {out}"

    code, out = apps.in_b(f"/usr/bin/getent hosts {OUTSIDE_NAME}")
    assert code == 0 and out.split()[:1] == [OUTSIDE_ADDR], (
        f"{OUTSIDE_NAME} did not resolve through the forwarder to {OUTSIDE_ADDR}: {out!r}")


class DockerApps:
    """The apps as Docker containers (the emulated gateway)."""

    runtime = "Docker"

    def __init__(self, gateway):
        self.gateway = gateway

    def make_image(self):
        code, out = sh(self.gateway, f"docker image inspect {PROBE} >/dev/null 2>&1 || "
                       f"{{ ldd {PROBE_TOOLS} | grep -o '/[^ ]*' | sort -u | "
                       f"tar -chf - {PROBE_TOOLS} -T - 2>/dev/null | docker import - {PROBE}; }}", 300)
        assert code == 0, f"could not make the probe image from the gateway's files: {out}"

    def start(self):
        """Start app A; its address as Docker reports it."""
        code, out = sh(self.gateway, f"docker run -d --name {APP_A} --dns {DNS} --read-only "
                       f"{PROBE} {' '.join(LISTEN)}", 180)
        assert code == 0, f"app A did not start: {out}"
        return self.gateway.run_check(
            "docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' " + APP_A)[0]

    def names_of_a(self):
        return [APP_A]

    def in_b(self, cmd, timeout=120, name=None):
        """Run `cmd` as app B: a fresh container with smarter-dns as its name server."""
        named = f"--name {name} " if name else ""
        return sh(self.gateway, f"docker run --rm {named}--dns {DNS} {PROBE} {cmd}", timeout)

    def cleanup(self):
        self.gateway.run(f"docker rm -f {APP_A} {APP_B} >/dev/null 2>&1")


def pod_config(name, uid, log_directory, cgroup_parent):
    """CRI PodSandboxConfig (crictl's JSON: runtime.v1 field names) of a pod the way the
    kubelet makes it for a pod without host namespaces, with --cluster-dns 169.254.0.2 and
    --cluster-domain cluster.local."""
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": uid, "attempt": 0},
        "hostname": name,
        "log_directory": log_directory,
        "dns_config": {
            "servers": [DNS],
            "searches": [f"{NAMESPACE}.svc.{DOMAIN}", f"svc.{DOMAIN}", DOMAIN],
            "options": ["ndots:5"],
        },
        "labels": {"app": name, POD_LABEL[0]: POD_LABEL[1]},
        "linux": {
            "cgroup_parent": cgroup_parent,
            "security_context": {
                "namespace_options": {"network": NS_POD, "pid": NS_CONTAINER, "ipc": NS_POD},
            },
        },
    }


def container_config(read_only):
    """CRI ContainerConfig (crictl's JSON) of an app: the probe image listening on PORT."""
    return {
        "metadata": {"name": "app", "attempt": 0},
        "image": {"image": PROBE_REF},
        "command": LISTEN[:1],
        "args": LISTEN[1:],
        "log_path": "app.log",
        "linux": {
            "security_context": {
                "namespace_options": {"network": NS_POD, "pid": NS_CONTAINER, "ipc": NS_POD},
                "readonly_rootfs": read_only,
            },
        },
    }


def oci_image_script(workdir):
    """Shell that makes the probe image as an OCI archive on the gateway from its own files
    (`ctr images import` takes image archives, not the root file system tar `docker import`
    takes) and imports it into the k8s.io namespace, where CRI finds it. `set -e` in a
    subshell: the first failed step ends it with its status."""
    script = r"""( set -e
d=@DIR@/probe-oci; rm -rf $d; mkdir -p $d/blobs/sha256
{ for t in @TOOLS@; do echo $t; done; ldd @TOOLS@ | grep -o '/[^ :]*'; } | sort -u | tar -chf $d/layer.tar -T - 2>/dev/null
blob() { s=$(sha256sum "$1" | cut -d' ' -f1); n=$(wc -c < "$1"); mv "$1" $d/blobs/sha256/$s; echo "$s $n"; }
set -- $(blob $d/layer.tar); layer=$1; layer_size=$2
case $(uname -m) in aarch64) arch=arm64;; armv7*|armv8l) arch=arm;; x86_64) arch=amd64;; *) arch=$(uname -m);; esac
printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/bin:/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' $arch $layer > $d/config.json
set -- $(blob $d/config.json); config=$1; config_size=$2
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' $config $config_size $layer $layer_size > $d/manifest.json
set -- $(blob $d/manifest.json); manifest=$1; manifest_size=$2
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"@REF@"}}]}' $manifest $manifest_size $arch > $d/index.json
printf '{"imageLayoutVersion":"1.0.0"}' > $d/oci-layout
tar -cf $d.tar -C $d oci-layout index.json blobs
k3s ctr -n k8s.io images import $d.tar
rm -rf $d $d.tar )"""
    # One line, as every command the suite types into the gateway's shell.
    return ("; ".join(script.splitlines()).replace("@DIR@", workdir).replace("@TOOLS@", PROBE_TOOLS)
            .replace("@REF@", PROBE_REF))


_ID = re.compile(r"^[0-9a-f]{64}$")


def _last_id(out):
    """The id crictl printed (its last line of 64 hex digits), or None."""
    ids = [line.strip() for line in out.splitlines() if _ID.match(line.strip())]
    return ids[-1] if ids else None


class CrictlApps:
    """The apps as pods made through k3s's crictl on the gateway (k3s boards)."""

    runtime = "containerd (CRI)"

    def __init__(self, gateway):
        self.gateway = gateway
        self.dir = f"{RUN_DIR}/cri"
        self.pods = []  # sandbox ids this run made
        self.kubelet_pid = None
        self.watchdog_pid = None
        self.image_imported = False
        self.b_container = None

    def _run(self, cmd, timeout=120):
        return sh(self.gateway, cmd, timeout)

    def make_image(self):
        need = " ".join(f"[ -x {t} ] || echo {t};" for t in PROBE_TOOLS.split())
        code, out = self._run(f"for c in k3s ldd tar sha256sum; do command -v $c >/dev/null || echo $c; done; {need}")
        assert code == 0 and not out.strip(), (
            "the probe image is made on the gateway from its own k3s, ldd, tar, sha256sum and "
            f"{PROBE_TOOLS}; missing: {' '.join(out.split())}")
        self.image_imported = True  # from here on, cleanup removes whatever got imported
        code, out = self._run(oci_image_script(self.dir), 300)
        assert code == 0, f"could not make the probe image and import it into k3s's containerd: {out}"

    def start(self):
        """Start app B, then app A, as pods; A's address as CRI reports it. B comes first so
        that the time to resolvable is A's alone."""
        self._remove_pods()  # what an earlier run that died left
        parent = self._cgroup_parent()
        self._pause_kubelet()
        _, self.b_container = self._run_app(APP_B, parent, read_only=False)
        pod_a, _ = self._run_app(APP_A, parent, read_only=True)
        code, out = self._run(f"k3s crictl inspectp -o json {pod_a}")
        try:
            status = json.loads(out[out.index("{"):])
            # crictl prints {"status": ..., "info": ...}; releases before 1.19 the status alone.
            address = status.get("status", status)["network"]["ip"]
            ipaddress.ip_address(address)
        except (ValueError, KeyError, TypeError) as e:
            raise AssertionError(f"no address for app A's pod in `crictl inspectp` ({e}): {out[-800:]}")
        return address

    def names_of_a(self):
        return [APP_A, f"{APP_A}.{NAMESPACE}.svc.{DOMAIN}"]

    def in_b(self, cmd, timeout=120, name=None):
        """Run `cmd` in app B's container (CRI ExecSync): B's resolv.conf is its pod's."""
        return self._run(f"k3s crictl exec -s --timeout {timeout} {self.b_container} {cmd}", timeout + 30)

    def _cgroup_parent(self):
        # The kubelet names a cgroup parent in the form of the runtime's cgroup driver;
        # containerd turns a `.slice` parent into a systemd scope and anything else into a
        # cgroupfs path, and runc refuses the wrong form.
        code, out = self._run(
            "{ k3s crictl info 2>/dev/null | grep -Eiq '\"systemdCgroup\": *true' || "
            "grep -Eiqs 'SystemdCgroup *= *true' /var/lib/rancher/k3s/agent/etc/containerd/config*.toml; } "
            "&& echo systemd || echo cgroupfs")
        return "system.slice" if out.split()[-1:] == ["systemd"] else f"/{NAMESPACE}"

    def _pause_kubelet(self):
        code, out = self._run("systemctl show -p MainPID --value k3s-agent")
        pid = out.split()[-1] if out.split() else ""
        # `kill -STOP 0` would stop the shell's own process group: only a real process.
        assert code == 0 and pid.isdigit() and int(pid) > 1, f"k3s-agent has no main process: {out!r}"
        code, out = self._run(
            f"( sleep {PAUSE_LIMIT_S}; kill -CONT {pid} ) >/dev/null 2>&1 </dev/null & echo $!")
        watchdog = out.split()[-1] if out.split() else ""
        assert code == 0 and watchdog.isdigit(), f"could not start the kubelet's watchdog: {out!r}"
        self.watchdog_pid = watchdog
        self.kubelet_pid = pid
        code, out = self._run(f"kill -STOP {pid}")
        assert code == 0, f"could not stop k3s-agent ({pid}): {out}"

    def _resume_kubelet(self):
        if self.kubelet_pid:
            self._run(f"kill -CONT {self.kubelet_pid}")
        if self.watchdog_pid:
            self._run(f"kill {self.watchdog_pid} 2>/dev/null")

    def _write(self, path, data):
        code, out = self._run(f"printf %s {shlex.quote(json.dumps(data))} > {path}")
        assert code == 0, f"could not write {path}: {out}"

    def _run_app(self, name, cgroup_parent, read_only):
        """One app: its pod sandbox and its container, started. (sandbox id, container id)"""
        uid = str(uuid.uuid4())
        logs = f"{self.dir}/pods/{NAMESPACE}_{name}_{uid}"
        pod_json, ctr_json = f"{self.dir}/{name}-pod.json", f"{self.dir}/{name}-container.json"
        # The kubelet makes the pod's log directory before it asks for the sandbox.
        code, out = self._run(f"mkdir -p {logs}")
        assert code == 0, f"could not make {logs}: {out}"
        self._write(pod_json, pod_config(name, uid, logs, cgroup_parent))
        self._write(ctr_json, container_config(read_only))
        code, out = self._run(f"k3s crictl runp {pod_json}", 180)
        pod = _last_id(out)
        if pod:
            self.pods.append(pod)
        assert code == 0 and pod, (
            f"`crictl runp` of {name} failed (k3s's pause image must be on the gateway, or "
            f"pullable; smarter-cni must attach it): {out}")
        code, out = self._run(f"k3s crictl create {pod} {ctr_json} {pod_json}", 180)
        container = _last_id(out)
        assert code == 0 and container, f"`crictl create` of {name}'s container failed: {out}"
        code, out = self._run(f"k3s crictl start {container}", 120)
        assert code == 0, f"`crictl start` of {name}'s container failed: {out}; " + self._logs(container)
        return pod, container

    def _logs(self, container):
        return "its log: " + self._run(f"k3s crictl logs --tail 20 {container} 2>&1")[1]

    def _remove_pods(self):
        """Stop and remove this run's sandboxes and any an earlier run left (their containers
        go with them; CNI DEL removes their records)."""
        listed = f"$(k3s crictl pods -q --label {'='.join(POD_LABEL)} 2>/dev/null)"
        ids = " ".join(self.pods)
        self._run(f"for p in {ids} {listed}; do k3s crictl stopp $p >/dev/null 2>&1; "
                  "k3s crictl rmp $p >/dev/null 2>&1; done; true", 300)
        self.pods = []

    def cleanup(self):
        """Remove the pods, then let the kubelet run again, then remove the image and the
        files: each step whatever the one before did."""
        try:
            self._remove_pods()
        finally:
            try:
                self._resume_kubelet()
            finally:
                if self.image_imported:
                    # Through CRI: containerd's CRI plugin also keeps a reference by image id
                    # (sha256:<config digest>), which `ctr images rm` of the name leaves
                    # behind with the image's content. ctr for an import CRI never saw.
                    self._run(f"k3s crictl rmi {PROBE_REF} >/dev/null 2>&1 || "
                              f"k3s ctr -n k8s.io images rm {PROBE_REF} >/dev/null 2>&1")
                self._run(f"rm -rf {self.dir}")
