#!/usr/bin/env python3
"""Run every amd64 image under dockerd exactly as its manifest says, and the arm images under qemu.

For each SMARTER workload in deploy/kubernetes the docker flags are derived from the manifest
itself, so test and deployment cannot drift: the user and group, `--cap-drop ALL` plus the
capabilities the manifest adds (or `--privileged` where it says so), `--read-only`,
`no-new-privileges`, the memory and CPU limits, and every volume (hostPath -> a fixture
directory the test fills, ConfigMap -> its data written to files, PVC -> a directory owned by
fsGroup). Then, per image:

  version   `--version` prints the binary name and the workspace version
  help      `--help` answers (and names the subcommand the manifest runs, if any)
  config    the manifest's own `--config` checked with `--check-config` (after its subcommand)
  start     the manifest's args start the service, it stays up, its memory is measured, and
            SIGTERM (`docker stop`) ends it with exit code 0
  jobs      real work where the service does it today (see JOBS; add one per service feature)

A hostPath of type Socket at /run/dbus/system_bus_socket gets a private dbus-daemon on a socket in
the fixture directory (no RAUC or logind on it): the update agent's check is that it reaches the
bus through it and asks RAUC.

hostNetwork is replaced by a fresh network namespace (`--network none`): the test must not
change the CI host's network. Arm images: their layers are unpacked and the binary runs under
qemu-user, once with the host's multiarch loader (no -L) and once with only the image's own
libraries (-L <rootfs>), printing --version and checking the sample config.

Checks listed in KNOWN_GAPS are features the services have not landed yet: they run, and a
failure is reported as XFAIL with the reason; a pass is reported as XPASS and fails the run so
the entry gets removed. Exit status is non-zero on any failure.

    run_images.py --images out/images [--only SERVICE]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]

# workload name -> (manifest file, image/binary name)
WORKLOADS = {
    "smarter-device-manager": ("gateway/device-manager.yaml", "smarter-device-manager"),
    "smarter-cni": ("gateway/cni.yaml", "smarter-cni"),
    "smarter-dns": ("gateway/dns.yaml", "smarter-dns"),
    "smarter-debug-agent": ("gateway/debug-agent.yaml", "smarter-debug-agent"),
    "smarter-comms": ("cloud/comms.yaml", "smarter-comms"),
    # The canary DaemonSet (update/canary.yaml) runs the same image with the same settings.
    "smarter-update": ("update/agent.yaml", "smarter-update"),
}

# (workload, check) -> why it cannot pass yet. Remove entries as features land (XPASS says so).
KNOWN_GAPS: dict[tuple[str, str], str] = {
    # e.g. ("smarter-dns", "answers"): "why it cannot pass yet",
}

QEMU = {"arm64": "qemu-aarch64-static", "armv7": "qemu-arm-static"}
SAMPLE_CONFIGS = {
    "smarter-device-manager": "services/device-manager/config/smarter-device-manager.toml",
    "smarter-cni": "services/cni/config/smarter-cni.toml",
    "smarter-dns": "services/dns/config/smarter-dns.toml",
    "smarter-debug-agent": "services/debug/config/smarter-debug-agent.toml",
    "smarter-comms": "services/debug/config/smarter-comms.toml",
    "smarter-update": "services/update/config/update-agent.toml",
}


@dataclasses.dataclass
class Results:
    passed: int = 0
    failed: int = 0
    xfailed: int = 0
    skipped: int = 0
    memory: dict = dataclasses.field(default_factory=dict)

    def record(self, workload: str, check: str, ok: bool, detail: str = "") -> None:
        gap = KNOWN_GAPS.get((workload, check))
        if gap and not ok:
            self.xfailed += 1
            print(f"XFAIL {workload} {check}: {gap} ({detail.strip()[:300]})")
        elif gap and ok:
            self.failed += 1
            print(f"XPASS {workload} {check}: now works, remove it from KNOWN_GAPS in {__file__}")
        elif ok:
            self.passed += 1
            print(f"PASS  {workload} {check}{': ' + detail if detail else ''}")
        else:
            self.failed += 1
            print(f"FAIL  {workload} {check}: {detail.strip()[:2000]}")

    def skip(self, workload: str, check: str, why: str) -> None:
        self.skipped += 1
        print(f"SKIP  {workload} {check}: {why}")


def sh(*cmd: str, timeout: float = 60, check: bool = False, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check, **kw)


def quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, mult in units.items():
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * mult)
    return int(q)


def quantity_cpus(q: str) -> str:
    return str(float(q[:-1]) / 1000) if q.endswith("m") else q


# ---------------------------------------------------------------------------------------------
# Fixtures: what the hostPath volumes hold on a gateway, made small and real.


def mknod(path: Path, major: int, minor: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o660 | stat.S_IFCHR, os.makedev(major, minor))


# Fixture processes (a private system bus) started for the current workload; stop_fixtures() ends them.
FIXTURES: list[subprocess.Popen] = []
SYSTEM_BUS = "/run/dbus/system_bus_socket"


def start_system_bus(sock: Path) -> None:
    """A private dbus-daemon listening on sock, standing in for the host's system bus.

    Nothing owns RAUC's or logind's names on it: a client that gets onto this bus and asks RAUC
    gets D-Bus's "no such service" back, which proves the socket, user and capabilities work.
    Without dbus-daemon the socket is missing (the checks that need it fail and say so).
    """
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        return
    conf = sock.parent / "system-bus.conf"
    conf.write_text(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow own="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
""")
    proc = subprocess.Popen([daemon, f"--config-file={conf}", "--nofork", "--nopidfile"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    FIXTURES.append(proc)
    wait_for(sock.is_socket, 5)


def stop_fixtures() -> None:
    while FIXTURES:
        proc = FIXTURES.pop()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fill_host_path(host_path: str, target: Path) -> None:
    if host_path == SYSTEM_BUS:
        target.parent.mkdir(parents=True, exist_ok=True)
        start_system_bus(target)
        return
    target.mkdir(parents=True, exist_ok=True)
    if host_path == "/dev":
        # A few device nodes the default rules match, with their real major:minor numbers.
        for rel, major, minor in [("video0", 81, 0), ("ttyUSB0", 188, 0), ("snd/controlC0", 116, 0),
                                  ("gpiomem", 239, 0), ("null", 1, 3)]:
            try:
                mknod(target / rel, major, minor)
            except PermissionError:
                pass  # not root: the device nodes are missing; checks that need them say so
    elif host_path == "/sys":
        (target / "devices" / "gpu.0").mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Pod:
    workload: str
    image: str
    binary: str
    spec: dict
    container: dict
    configmaps: dict[str, dict]

    def config_arg(self) -> list[str]:
        return [a for a in self.container.get("args", []) if a.startswith("--config")]

    def subcommand(self) -> list[str]:
        """The leading non-option args (smarter-update's `agent`); empty for single-command binaries."""
        args = self.container.get("args", [])
        n = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
        return args[:n]


def load_pod(workload: str) -> Pod:
    path, binary = WORKLOADS[workload]
    docs = [d for d in yaml.safe_load_all((MANIFESTS / path).read_text()) if d]
    wl = next(d for d in docs if d["kind"] in ("DaemonSet", "Deployment") and d["metadata"]["name"] == workload)
    spec = wl["spec"]["template"]["spec"]
    container = spec["containers"][0]
    cms = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    return Pod(workload, container["image"], binary, spec, container, cms)


CAP_NAMES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]


def host_missing_caps() -> list[str]:
    """Capabilities missing from this process's bounding set (a sandboxed CI host)."""
    bounding = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            bounding = int(line.split()[1], 16)
    return [n for i, n in enumerate(CAP_NAMES) if not bounding & (1 << i)]


def privileged_flags() -> list[str]:
    """`--privileged`, or its nearest equivalent where this machine cannot grant it.

    A sandboxed CI host may lack capabilities in its own bounding set (runc then fails with
    "unable to apply caps"); the container then gets every capability the host has, no seccomp
    filter and no AppArmor profile, and the run says so.
    """
    probe = sh("docker", "run", "--rm", "--privileged", "--entrypoint", "/usr/bin/smarter-dns",
               f"ghcr.io/smarter-project/smarter-dns:{VERSION}", "--version")
    if probe.returncode == 0:
        return ["--privileged"]
    missing = host_missing_caps()
    print(f"NOTE  this host cannot start --privileged containers; privileged workloads get every "
          f"capability but {missing}, seccomp=unconfined, apparmor=unconfined")
    flags = ["--cap-add", "ALL", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined"]
    for n in missing:
        flags += ["--cap-drop", n]
    return flags


def docker_flags(pod: Pod, scratch: Path) -> list[str]:
    """docker run flags equivalent to the pod spec (see the module doc)."""
    pod_sc = pod.spec.get("securityContext", {})
    sc = pod.container.get("securityContext", {})
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", uid))
    flags = ["--network", "none", "--user", f"{uid}:{gid}"]
    if sc.get("privileged"):
        flags += privileged_flags()
    else:
        caps = sc.get("capabilities", {})
        if caps.get("drop") == ["ALL"]:
            flags += ["--cap-drop", "ALL"]
        missing = host_missing_caps()
        for cap in caps.get("add", []):
            if cap in missing:
                # runc cannot grant what the host itself lacks; say so instead of failing to start.
                print(f"NOTE  {pod.workload}: this host cannot grant {cap}; running without it")
                continue
            flags += ["--cap-add", cap]
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    limits = pod.container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        flags += ["--memory", str(quantity_bytes(limits["memory"])), "--memory-swap",
                  str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        flags += ["--cpus", quantity_cpus(str(limits["cpu"]))]
    volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
    fs_group = pod_sc.get("fsGroup")
    for m in pod.container.get("volumeMounts", []):
        vol = volumes[m["name"]]
        src = scratch / "volumes" / m["name"]
        if "hostPath" in vol:
            if vol["hostPath"].get("type") == "Socket":
                src = src / "socket"  # docker bind-mounts the socket file itself
            fill_host_path(vol["hostPath"]["path"], src)
        elif "configMap" in vol:
            src.mkdir(parents=True, exist_ok=True)
            for key, value in pod.configmaps[vol["configMap"]["name"]].items():
                (src / key).write_text(value)
        elif "persistentVolumeClaim" in vol or "emptyDir" in vol:
            src.mkdir(parents=True, exist_ok=True)
            if fs_group is not None:
                os.chown(src, uid or 0, fs_group)
                os.chmod(src, 0o2770)
        else:
            raise SystemExit(f"{pod.workload}: volume type of {m['name']} not handled by the test")
        flags += ["-v", f"{src}:{m['mountPath']}{':ro' if m.get('readOnly') else ''}"]
    return flags


def docker_run(flags: list[str], image: str, args: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return sh("docker", "run", "--rm", *flags, image, *args, timeout=timeout)


def check_start(pod: Pod, flags: list[str], res: Results, scratch: Path) -> None:
    name = f"smarter-test-{pod.workload}-{os.getpid()}"
    args = pod.container.get("args", [])
    started = sh("docker", "run", "-d", "--name", name, *flags, pod.image, *args)
    if started.returncode != 0:
        res.record(pod.workload, "start", False, started.stderr)
        return
    try:
        deadline = time.monotonic() + 3
        running = True
        while time.monotonic() < deadline:
            state = json.loads(sh("docker", "inspect", "--format", "{{json .State}}", name).stdout)
            running = state["Running"]
            if not running:
                break
            time.sleep(0.2)
        if not running:
            logs = sh("docker", "logs", name)
            res.record(pod.workload, "start", False,
                       f"exited with {state['ExitCode']} instead of running: {logs.stdout}{logs.stderr}")
            return
        pid = int(sh("docker", "inspect", "--format", "{{.State.Pid}}", name).stdout.strip() or 0)
        for job_name, job in LIVE_JOBS.get(pod.workload, []):
            outcome = job(pod, scratch / "volumes", pid)
            if isinstance(outcome, str):
                res.skip(pod.workload, job_name, outcome)
            else:
                res.record(pod.workload, job_name, *outcome)
        mem = sh("docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name).stdout.strip()
        res.memory[pod.workload] = mem
        stop = sh("docker", "stop", "-t", "5", name, timeout=30)
        code = json.loads(sh("docker", "inspect", "--format", "{{json .State}}", name).stdout)["ExitCode"]
        logs = sh("docker", "logs", name)
        res.record(pod.workload, "start", stop.returncode == 0 and code == 0,
                   f"ran under the manifest's limits, memory {mem}, SIGTERM exit {code}"
                   if code == 0 else f"exit {code} after SIGTERM: {logs.stdout}{logs.stderr}")
    finally:
        sh("docker", "rm", "-f", name)


# Real work per service, run with the manifest's flags. Each returns (ok, detail) or None to
# skip when the binary does not offer the feature yet (detected from --help).
Job = Callable[[Pod, list[str], str], "tuple[bool, str] | str"]


def job_device_manager_list(pod: Pod, flags: list[str], help_text: str) -> tuple[bool, str] | str:
    if "list" not in help_text:
        return "no `list` subcommand yet"
    if os.geteuid() != 0:
        return "needs root to mknod the fixture device nodes"
    out = docker_run(flags, pod.image, [*pod.config_arg(), "list"])
    want = ["video0", "ttyUSB0", "snd"]
    missing = [w for w in want if w not in out.stdout]
    return (out.returncode == 0 and not missing,
            f"lists {want} from the mounted dev root" if not missing else f"missing {missing}: {out.stdout}{out.stderr}")


def wait_for(predicate: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# Jobs checked while the service runs with the manifest's args: (pod, volumes dir, pid).
LiveJob = Callable[[Pod, Path, int], "tuple[bool, str] | str"]


def job_cni_installed(pod: Pod, volumes: Path, pid: int) -> tuple[bool, str] | str:
    """The installer put the plugin in the host's CNI bin dir and wrote the conflist there."""
    plugin = volumes / "cni-bin" / "smarter-cni"
    conf_dir = volumes / "cni-conf"
    if not wait_for(lambda: plugin.exists() and any(conf_dir.glob("*.conflist"))):
        return False, f"after 3 s: bin={sorted(p.name for p in plugin.parent.iterdir())} conf={sorted(p.name for p in conf_dir.iterdir())}"
    conflist = json.loads(next(conf_dir.glob("*.conflist")).read_text())
    types = [p.get("type") for p in conflist.get("plugins", [])]
    ok = (os.access(plugin, os.X_OK) and plugin.read_bytes()[:4] == b"\x7fELF"
          and conflist.get("name") == "smartnet" and types[:1] == ["smarter-cni"])
    return ok, f"plugin in bin dir, conflist {conflist.get('name')} with {types}" if ok else json.dumps(conflist)


def job_dns_answers(pod: Pod, volumes: Path, pid: int) -> tuple[bool, str] | str:
    """A record written as smarter-cni writes it is answered on 169.254.0.2 in the pod's netns."""
    dig, nsenter = shutil.which("dig"), shutil.which("nsenter")
    if not dig or not nsenter:
        return "needs dig (bind9-dnsutils) and nsenter"
    if os.geteuid() != 0:
        return "needs root to enter the container's network namespace"
    record = {"version": 1, "container_id": "0123456789abcdef", "ifname": "eth0", "network": "smartnet",
              "pod_name": "camera", "namespace": "demo", "ips": ["172.39.0.5"]}
    records = volumes / "records"
    tmp = records / ".0123456789abcdef_eth0.json.tmp"
    tmp.write_text(json.dumps(record))
    tmp.rename(records / "0123456789abcdef_eth0.json")
    answers: list[str] = []

    def query() -> bool:
        out = sh(nsenter, "-t", str(pid), "-n", dig, "+short", "+time=1", "+tries=1", "@169.254.0.2",
                 "camera.demo.svc.cluster.local", "A", timeout=10)
        answers[:] = out.stdout.split()
        return answers == ["172.39.0.5"]

    ok = wait_for(query)
    return ok, ("camera.demo.svc.cluster.local -> 172.39.0.5 on 169.254.0.2" if ok else f"answers {answers}")


def job_device_manager_serves(pod: Pod, volumes: Path, pid: int) -> tuple[bool, str] | str:
    """One plugin socket per matched device in the kubelet's plugin dir, named as the original."""
    if os.geteuid() != 0:
        return "needs root to mknod the fixture device nodes"
    plugin_dir = volumes / "device-plugins"
    want = {f"smarter-{n}.sock" for n in ("video0", "ttyUSB0", "snd", "gpiomem", "nvidia-gpu0")}
    have: set[str] = set()

    def served() -> bool:
        have.clear()
        have.update(p.name for p in plugin_dir.iterdir() if p.is_socket())
        return want <= have

    ok = wait_for(served)
    return ok, f"sockets {sorted(want)}" if ok else f"missing {sorted(want - have)}, have {sorted(have)}"


def job_update_system_bus(pod: Pod, volumes: Path, pid: int) -> tuple[bool, str] | str:
    """Through the mounted system bus socket, as the manifest's user with its capabilities, the
    agent reaches the bus and asks RAUC (absent from the fixture bus): /readyz says so, 503."""
    if not shutil.which("dbus-daemon"):
        return False, "dbus-daemon not installed (Debian package dbus): no system bus fixture"
    if os.geteuid() != 0:
        return "needs root to enter the container's network namespace"
    port = pod.container["readinessProbe"]["httpGet"]["port"]
    probe = ("import urllib.request, urllib.error\n"
             "try:\n"
             f"    r = urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=2); print(r.status, r.read().decode())\n"
             "except urllib.error.HTTPError as e:\n"
             "    print(e.code, e.read().decode())\n")
    seen = [""]

    def asked_rauc() -> bool:
        out = sh("nsenter", "-t", str(pid), "-n", sys.executable, "-c", probe, timeout=10)
        seen[0] = (out.stdout + out.stderr).strip()
        return seen[0].startswith("503 ") and "RAUC (de.pengutronix.rauc) over D-Bus" in seen[0]

    ok = wait_for(asked_rauc, 5)
    return ok, f"/readyz: {seen[0][:200]}"


LIVE_JOBS: dict[str, list[tuple[str, LiveJob]]] = {
    "smarter-update": [("system-bus", job_update_system_bus)],
    "smarter-device-manager": [("serves", job_device_manager_serves)],
    "smarter-cni": [("installs", job_cni_installed)],
    "smarter-dns": [("answers", job_dns_answers)],
}


def job_board_rules(pod: Pod, flags: list[str], help_text: str) -> tuple[bool, str] | str:
    """Every board ConfigMap (device-rules/*.yaml) passes the real binary's --check-config."""
    bad, boards = [], []
    for path in sorted((MANIFESTS / "device-rules").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "ConfigMap":
                with tempfile.TemporaryDirectory(prefix="smarter-rules-") as tmp:
                    (Path(tmp) / "conf.yaml").write_text(doc["data"]["conf.yaml"])
                    out = docker_run([*flags, "-v", f"{tmp}:/rules:ro"], pod.image,
                                     ["--config=/rules/conf.yaml", "--check-config"])
                boards.append(path.stem)
                if out.returncode != 0:
                    bad.append(f"{path.name}: {out.stdout}{out.stderr}")
    return not bad, f"{boards} valid" if not bad else "; ".join(bad)


JOBS: dict[str, list[tuple[str, Job]]] = {
    "smarter-device-manager": [("list", job_device_manager_list), ("board-rules", job_board_rules)],
}


def test_amd64(images: Path, workloads: list[str], res: Results) -> None:
    for workload in workloads:
        pod = load_pod(workload)
        archive = images / "amd64" / f"{pod.binary}.docker.tar"
        load = sh("docker", "load", "-i", str(archive), timeout=120)
        if load.returncode != 0 or pod.image not in load.stdout:
            res.record(workload, "load", False, f"{load.stdout}{load.stderr} (want {pod.image})")
            continue
        res.record(workload, "load", True, pod.image)
        with tempfile.TemporaryDirectory(prefix=f"smarter-{workload}-") as tmp:
            try:
                test_amd64_pod(pod, Path(tmp), res)
            finally:
                stop_fixtures()


def test_amd64_pod(pod: Pod, tmp: Path, res: Results) -> None:
    workload = pod.workload
    flags = docker_flags(pod, tmp)
    out = docker_run(flags, pod.image, ["--version"])
    ok = out.returncode == 0 and pod.binary in out.stdout and VERSION in out.stdout
    res.record(workload, "version", ok, out.stdout.strip() if ok else out.stdout + out.stderr)
    out = docker_run(flags, pod.image, ["--help"])
    help_text = out.stdout
    # A binary with subcommands lists the one its manifest runs.
    ok = out.returncode == 0 and "Usage" in help_text and all(a in help_text for a in pod.subcommand())
    res.record(workload, "help", ok, "" if ok else out.stdout + out.stderr)
    out = docker_run(flags, pod.image, [*pod.subcommand(), *pod.config_arg(), "--check-config"])
    args = " ".join([*pod.subcommand(), *pod.config_arg()])
    res.record(workload, "config", out.returncode == 0,
               f"{args} is valid" if out.returncode == 0 else out.stdout + out.stderr)
    check_start(pod, flags, res, tmp)
    for job_name, job in JOBS.get(workload, []):
        outcome = job(pod, flags, help_text)
        if isinstance(outcome, str):
            res.skip(workload, job_name, outcome)
        else:
            res.record(workload, job_name, *outcome)


def unpack_rootfs(images: Path, binary: str, arch: str, dest: Path) -> None:
    """Unpack the layers of binary's image for arch from the OCI layout into dest."""
    layout = images / "oci"
    blob = lambda d: layout / "blobs" / "sha256" / d.split(":", 1)[1]  # noqa: E731
    top = json.loads((layout / "index.json").read_text())
    ref = f"{binary}:{VERSION}"
    index_desc = next(m for m in top["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
    index = json.loads(blob(index_desc["digest"]).read_bytes())
    want = {"arm64": ("arm64", "v8"), "armv7": ("arm", "v7"), "amd64": ("amd64", None)}[arch]
    manifest_desc = next(m for m in index["manifests"]
                         if (m["platform"]["architecture"], m["platform"].get("variant")) == want)
    manifest = json.loads(blob(manifest_desc["digest"]).read_bytes())
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=gzip.open(blob(layer["digest"]))) as tar:
            if hasattr(tarfile, "tar_filter"):  # Python >= 3.11.4 (PEP 706)
                tar.extractall(dest, filter="tar")
            else:
                tar.extractall(dest)  # our own layers: sorted, relative, no device nodes


def test_arm(images: Path, workloads: list[str], arches: list[str], res: Results) -> None:
    for arch in arches:
        qemu = shutil.which(QEMU[arch])
        for workload in workloads:
            binary = WORKLOADS[workload][1]
            check = f"qemu-{arch}"
            if qemu is None:
                res.record(workload, check, False, f"{QEMU[arch]} not installed")
                continue
            with tempfile.TemporaryDirectory(prefix=f"smarter-{arch}-") as tmp:
                rootfs = Path(tmp)
                unpack_rootfs(images, binary, arch, rootfs)
                exe = str(rootfs / "usr" / "bin" / binary)
                host = sh(qemu, exe, "--version", timeout=30)
                own = sh(qemu, "-L", str(rootfs), exe, "--version", timeout=30)
                sub = load_pod(workload).subcommand()
                cfg = sh(qemu, exe, *sub, "--check-config", "--config", str(ROOT / SAMPLE_CONFIGS[workload]),
                         timeout=30)
                ok = all(r.returncode == 0 for r in (host, own, cfg)) and VERSION in own.stdout
                res.record(workload, check, ok,
                           own.stdout.strip() + " (host loader, image-only libraries; sample config valid)"
                           if ok else "\n".join(r.stdout + r.stderr for r in (host, own, cfg)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(ROOT / "out" / "images"))
    ap.add_argument("--only", action="append", choices=sorted(WORKLOADS))
    ap.add_argument("--arch", action="append", choices=["amd64", "arm64", "armv7"])
    args = ap.parse_args()
    images = Path(args.images)
    workloads = args.only or list(WORKLOADS)
    arches = args.arch or ["amd64", "arm64", "armv7"]
    res = Results()
    if "amd64" in arches:
        test_amd64(images, workloads, res)
    test_arm(images, workloads, [a for a in arches if a != "amd64"], res)
    if res.memory:
        print("memory after start, under the manifest's limit:")
        for wl, mem in res.memory.items():
            print(f"  {wl}: {mem}")
    print(f"known gaps (xfail): {res.xfailed}")
    print(f"images: {res.passed} passed, {res.failed} failed, {res.skipped} skipped")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
