#!/usr/bin/env python3
"""QEMU tests of the emulated gateway: boot, provisioning, A/B updates, rollback, power cuts.

    images/emulated/test.py [--out out/emulated] [--work out/emulated/test] [--kills N]

Runs against the image images/emulated/build.sh made (disk.img, its keys) on a copy of the
disk, so the built image stays as it is. One QEMU process serves several checks per boot:

  boot 1 (slot A, malformed provisioning file): services healthy and slot A marked good; the
         provisioning message on the console, nothing applied; bundles signed by another CA,
         corrupted, and for another compatible are refused. The OS update agent starts as its
         DaemonSet's pod would (agent_pod.py: the manifest's image, user, capabilities and
         mounts, under the gateway's Docker) with the update bundle (N+1) as the desired one,
         served from this host (bundle_server.py); the server cuts the download part-way and
         then refuses; power cut 1 with the partial bundle on /data.
  boot 2 (slot A): the provisioning file (now valid) applied; the agent resumes the download
         (only the missing bytes cross the link), RAUC installs it into B, the agent waits for
         its reboot window; power cut 2 before any reboot.
  boot 3 (slot B, the new one): marked good, /data kept; the agent Ready on N+1. A new desired
         bundle that fails the health gate: the agent downloads, installs and reboots through
         logind;
  boot 4 (slot A, broken): the health gate marks it bad and reboots;
  boot 5 (slot B): the agent not Ready ("rolled back"), and it does not try again.
  then N-2 more power cuts at points across an install, chosen from RAUC's progress output;
  after each, the gateway must boot a slot that the health gate marks good, /data kept,
  provisioning not applied again.

A reboot into an updated slot by hand (rauc install, systemctl reboot), a rollback and a power
cut are also tested by the hardware-in-the-loop suite on this same image
(hardware-tests/tests/test_update.py, after this suite in ./dev test), as every board runs them.

Timings go to <work>/figures.json. Exit status 0 when every check passed.
Needs qemu-system-aarch64, u-boot-qemu, mtools, rauc and python3-yaml on the host (the bundles are built by
build.sh --variant); missing tools fail when CI or SMARTER_REQUIRE_PEERS is set, else skip.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import agent_pod
from bundle_server import BundleServer

ROOT = Path(__file__).resolve().parents[2]
UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
# TCG emulates the Armv8.3 pointer authentication the Debian kernel and libraries use on every
# function call; QEMU's architected algorithm (QARMA) is slow to emulate, its implementation-defined
# one is not, and the guest cannot tell the difference.
QEMU_CPU = os.environ.get("SMARTER_QEMU_CPU", "max,pauth-impdef=on")
UNITS = ["docker", "smarter-device-manager", "smarter-cni", "smarter-dns", "smarter-debug-agent"]

FAILURES: list[str] = []
FIGURES: dict[str, float] = {}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def check(ok: bool, what: str, detail: str = "") -> bool:
    if ok:
        log(f"ok   {what}")
    else:
        log(f"FAIL {what}{': ' + detail if detail else ''}")
        FAILURES.append(what)
    return ok


class Guest:
    """One QEMU process: serial console to a file, a root shell on the virtio console."""

    def __init__(self, disk: Path, work: Path, share: Path):
        self.disk, self.work, self.share = disk, work, share
        self.console = work / "console.log"
        self.sock_path = work / "shell.sock"
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.buf = ""
        self.n = 0
        self.started = 0.0

    # -- process
    def start(self) -> None:
        if self.sock_path.exists():
            self.sock_path.unlink()
        cmd = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", QEMU_CPU, "-smp", "2", "-m", "1024",
            "-display", "none", "-monitor", "none", "-bios", str(UBOOT),
            # QEMU's user network: the gateway's uplink by DHCP; the test host (the update
            # agent's bundle server) is 10.0.2.2 from inside. Nothing reaches the gateway.
            "-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0",
            "-drive", f"if=none,file={self.disk},format=raw,id=hd0",
            "-device", "virtio-blk-device,drive=hd0",
            "-chardev", f"file,id=con,path={self.console},append=on", "-serial", "chardev:con",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=sh,path={self.sock_path},server=on,wait=off",
            "-device", "virtconsole,chardev=sh",
            "-fsdev", f"local,id=host,path={self.share},security_model=none,readonly=on",
            "-device", "virtio-9p-device,fsdev=host,mount_tag=host",
        ]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=open(self.work / "qemu.log", "ab"), stderr=subprocess.STDOUT)
        for _ in range(100):
            if self.sock_path.exists():
                break
            time.sleep(0.1)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self.sock_path))
        self.sock.setblocking(False)
        self.buf = ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.sock:
            self.sock.close()
        self.proc = self.sock = None

    # -- console
    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern: str, since: int, timeout: float) -> re.Match | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.compile(pattern).search(self.console_text(), since)
            if m:
                return m
            if self.proc and self.proc.poll() is not None:
                return None
            time.sleep(0.5)
        return None

    # -- shell
    def _read(self, timeout: float) -> str:
        assert self.sock
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return ""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return ""
        text = data.decode(errors="replace").replace("\r", "")
        with (self.work / "shell.log").open("a") as f:
            f.write(text)
        return text

    def _send(self, text: str) -> None:
        assert self.sock
        with (self.work / "shell.log").open("a") as f:
            f.write(f"\n>>> {text}")
        self.sock.sendall(text.encode())

    def wait_shell(self, timeout: float = 300) -> bool:
        """Wait for the autologin root shell on hvc0 and make it quiet (no echo, no prompt).

        Readiness is a marker the shell itself prints (an arithmetic expansion, so the echoed
        command line cannot match), not a prompt: that works whether or not an earlier call
        already emptied PS1, and the lines sent before the shell started are harmless."""
        end = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < end:
            if self.proc and self.proc.poll() is not None:
                return False
            self._send("stty -echo; PS1=''; PS2=''; export PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 TERM=dumb; "
                       "echo @@ready$((6*7))@@\n")
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                seen += self._read(0.5)
                if "@@ready42@@" in seen:
                    while self._read(1.0):
                        pass
                    self.buf = ""
                    return True
            seen = seen[-200:]
        return False

    def sh(self, cmd: str, timeout: float = 120, stream=None) -> tuple[int, str]:
        """Run one shell command line; returns (status, output). stream(line) sees lines as they come."""
        self.n += 1
        marker = re.compile(rf"@@{self.n}@@(\d+)@@")
        self._send(f"{cmd} 2>&1; echo @@{self.n}@@$?@@\n")
        out = ""
        end = time.monotonic() + timeout
        pending = ""
        while time.monotonic() < end:
            chunk = self._read(1.0)
            if not chunk:
                if self.proc and self.proc.poll() is not None:
                    break
                continue
            out += chunk
            if stream:
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    if stream(line):
                        return -2, out
            m = marker.search(out)
            if m:
                return int(m.group(1)), out[: m.start()].strip("\n")
        return -1, out

    def ok(self, cmd: str, timeout: float = 120) -> str:
        rc, out = self.sh(cmd, timeout)
        if rc != 0:
            raise RuntimeError(f"guest command failed ({rc}): {cmd}\n{out[-2000:]}")
        return out

    # -- gateway state
    def booted_slot(self) -> str:
        m = re.search(r"rauc\.slot=(\w+)", self.ok("cat /proc/cmdline"))
        return m.group(1) if m else "?"

    def wait_healthy(self, timeout: float = 420) -> tuple[str | None, float]:
        """Wait until a booted slot is marked good by the health gate, across any reboots the
        gateway does by itself (a rejected slot). Returns (slot, seconds since the boot began)."""
        end = self.started + timeout
        while time.monotonic() < end:
            if not self.wait_shell(max(end - time.monotonic(), 1)):
                break
            rc, out = self.sh("cat /proc/cmdline", 15)
            m = re.search(r"rauc\.slot=(\w+)", out)
            if rc != 0 or not m:
                continue
            slot = m.group(1)
            while time.monotonic() < end:
                rc, out = self.sh(f"grep -a '^BOOT_{slot}_LEFT=' /boot/smarter-env.txt", 15)
                if rc == -1:
                    break  # the shell went away: this boot ended (rollback reboot); wait for the next
                if rc == 0 and out.strip().endswith("=3"):
                    return slot, time.monotonic() - self.started
                time.sleep(2)
        return None, time.monotonic() - self.started

    def reboot(self) -> None:
        """Reboot from inside; the same QEMU process goes on."""
        self._send("systemctl reboot\n")
        self.started = time.monotonic()
        time.sleep(2)
        while self._read(0.5):
            pass


def tools_missing() -> list[str]:
    missing = [t for t in ("qemu-system-aarch64", "mcopy", "rauc") if not shutil.which(t)]
    if not UBOOT.exists():
        missing.append(str(UBOOT))
    return missing


def fat_put(disk: Path, src: Path, name: str) -> None:
    subprocess.run(["mcopy", "-o", "-i", f"{disk}@@1M", str(src), f"::{name}"], check=True,
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def prepare_bundles(out: Path, share: Path) -> None:
    """The bundles the tests install, in the directory the guest mounts over 9p."""
    keys = out / "keys"
    variants = out / "variants"
    if not (variants / "update.raucb").exists():
        raise SystemExit(f"{variants}/update.raucb missing: images/test.sh builds the variants")
    shutil.copy(variants / "update.raucb", share / "update.raucb")
    small = share / "small.ext4"
    small_dir = share / "small"
    small_dir.mkdir(exist_ok=True)
    (small_dir / "blob").write_bytes(os.urandom(256 * 1024))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(small_dir), str(small), "8M"], check=True)
    other = out / "test-other-ca"
    subprocess.run([str(ROOT / "images/rauc/make-dev-ca.sh"), str(other), "Not the fleet owner"], check=True)
    mk = str(ROOT / "images/rauc/make-bundle.sh")

    def bundle(name: str, compatible: str, cert: Path, key: Path) -> Path:
        dst = share / f"{name}.raucb"
        subprocess.run([mk, "--compatible", compatible, "--version", "0.0.0-test", "--rootfs", str(small),
                        "--cert", str(cert), "--key", str(key), str(dst)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return dst

    bundle("other-key", "smarter-qemuarm64", other / "signing.cert.pem", other / "signing.key.pem")
    bundle("other-compatible", "smarter-raspberrypi4-64", keys / "signing.cert.pem", keys / "signing.key.pem")
    corrupt = bundle("corrupted", "smarter-qemuarm64", keys / "signing.cert.pem", keys / "signing.key.pem")
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 4] ^= 0xFF  # inside the squashfs payload, before the verity tree and signature
    corrupt.write_bytes(bytes(data))
    shutil.rmtree(small_dir)
    small.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", type=Path, default=ROOT / "out/emulated")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--kills", type=int, default=int(os.environ.get("SMARTER_IMAGES_KILLS", "4")),
                    help="power cuts (default 4, at least 2, at most 6: two in the update agent's test, the "
                         "rest during installs; SMARTER_IMAGES_KILLS)")
    args = ap.parse_args()
    missing = tools_missing()
    if missing:
        if os.environ.get("CI") or os.environ.get("SMARTER_REQUIRE_PEERS"):
            print(f"FAIL: emulated gateway tests need {', '.join(missing)} (cross/setup-debian.sh)", file=sys.stderr)
            return 1
        print(f"SKIP: emulated gateway tests need {', '.join(missing)}")
        return 0
    out = args.out
    work = args.work or out / "test"
    if work.exists():
        shutil.rmtree(work)
    share = work / "share"
    share.mkdir(parents=True)
    disk = work / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(out / "disk.img"), str(disk)], check=True)
    prepare_bundles(out, share)
    (share / "bad-provision.toml").write_text(
        'version = 1\nserver = "https://k3s.example.com:6443"\ntoken = "K10x::server:y"\nnode_name = "Gateway_1"\n')
    (share / "good-provision.toml").write_text(
        'version = 1\nserver = "https://k3s.example.com:6443"\ntoken = "K10test::server:secret"\n'
        'node_name = "gw-test-0001"\n\n[node_labels]\n"example.com/site" = "ci"\n')
    fat_put(disk, share / "bad-provision.toml", "smarter-provision.toml")

    FIGURES["image_apparent_mib"] = (out / "disk.img").stat().st_size / 2**20
    FIGURES["image_allocated_mib"] = (out / "disk.img").stat().st_blocks * 512 / 2**20
    FIGURES["rootfs_slot_image_mib"] = (out / "rootfs.ext4").stat().st_size / 2**20
    FIGURES["bundle_mib"] = (out / "update.raucb").stat().st_size / 2**20
    g = Guest(disk, work, share)
    try:
        run(g, args.kills, out)
    except Exception as e:  # a harness error is a failure, with the console's tail for context
        FAILURES.append(f"harness: {e}")
        log(f"FAIL harness: {e}")
        log("console tail:\n" + g.console_text()[-3000:])
    finally:
        g.kill()
    (work / "figures.json").write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
    log("figures: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(FIGURES.items())))
    if FAILURES:
        log(f"{len(FAILURES)} check(s) failed: " + "; ".join(FAILURES))
        log(f"console log: {g.console}")
        return 1
    log("all emulated gateway checks passed")
    return 0


def install(g: Guest, bundle: str, timeout: float = 600, stream=None) -> tuple[int, str, float]:
    t = time.monotonic()
    rc, out = g.sh(f"rauc install /mnt/{bundle}", timeout, stream)
    return rc, out, time.monotonic() - t


def run(g: Guest, kills: int, out_dir: Path) -> None:
    # ---- boot 1: slot A, first boot, malformed provisioning file
    g.start()
    slot, secs = g.wait_healthy()
    if not check(slot == "A", "first boot: slot A comes up and the health gate marks it good", f"slot {slot}"):
        raise RuntimeError("first boot did not become healthy")
    FIGURES["boot_to_healthy_s"] = secs
    for u in UNITS:
        rc, out = g.sh(f"systemctl is-active {u}.service")
        check(out.strip() == "active", f"{u} is active", out.strip())
    rc, out = g.sh("smarter-device-manager --config /etc/smarter/smarter-device-manager.toml list")
    check(rc == 0 and "smarter-devices/" in out, "device manager lists devices", out[-300:])
    rc, out = g.sh("docker image ls --format '{{.Repository}}:{{.Tag}}'")
    check(rc == 0 and "smarter-dns" in out, "container images pre-loaded into Docker", out[-300:])
    image = next((l.strip() for l in out.splitlines() if "smarter-dns" in l), "")
    rc, out = g.sh(f"docker run --rm --read-only {image} --version", 180)
    check(rc == 0 and "smarter-dns" in out, "an app container runs under Docker", out[-300:])
    console = g.console_text()
    check("smarter-provision.toml" in console and "node_name" in console and "nothing was applied" in console,
          "malformed provisioning file: message on the console")
    rc, _ = g.sh("test -e /data/smarter/provision/record.toml || test -e /data/etc/rancher/k3s/config.yaml "
                 "|| test -e /data/etc/rancher/k3s/smarter-token || test -e /data/etc/hostname")
    check(rc != 0, "malformed provisioning file: nothing applied (no record, config, token or hostname)")
    g.ok("echo persistent-$(cat /proc/sys/kernel/random/uuid) > /data/test-marker; sync")
    marker = g.ok("cat /data/test-marker").strip()
    g.ok("mkdir -p /mnt && mount -t 9p -o trans=virtio,ro host /mnt")
    for name, expect in (("other-key", r"signature|certificate|issuer"), ("corrupted", r"corrupt|verif|hash|I/O|error"),
                         ("other-compatible", r"[Cc]ompatible")):
        rc, out, _ = install(g, f"{name}.raucb", 300)
        check(rc not in (0, -1) and re.search(expect, out) is not None, f"bundle {name} refused",
              f"rc {rc}: {out[-400:]}")
    g.ok("cp /mnt/good-provision.toml /boot/smarter-provision.toml; sync")

    # ---- the OS update agent, as its DaemonSet's pod, takes the gateway to the update bundle
    # (N+1). The bundle server cuts the download part-way and then refuses, as a failing field
    # link would; the gateway loses power with the partial bundle on /data.
    server = BundleServer()
    try:
        record = agent_update(g, server, out_dir, marker)
    finally:
        server.close()

    # ---- more power cuts during installs
    points = kill_points(kills - 2)
    slot_bytes = (out_dir / "variants/update.ext4").stat().st_size
    for i, (label, pattern, delay, fraction, expect) in enumerate(points, 3):
        g.ok("mkdir -p /mnt && mount -t 9p -o trans=virtio,ro host /mnt")
        before = g.booted_slot()
        seen = {"hit": False}

        def cut(line: str, pattern=pattern) -> bool:
            if re.search(pattern, line):
                seen["hit"] = True
                return True
            return False

        if pattern == "reboot":
            rc, out, _ = install(g, "update.raucb", 900)
            g.reboot()
            time.sleep(delay)
            seen["hit"] = rc == 0
        elif fraction is not None:
            # Cut by what has reached the other slot's partition, not by time: how fast RAUC
            # writes depends on what else the machine runs.
            part = {"A": "vda3", "B": "vda2"}.get(before, "?")
            # Bundles are adaptive: RAUC skips writing blocks the target slot already holds, and
            # after the earlier installs it holds nearly all of them. Zeroed first, the slot must
            # be written whole, which is the case these cuts are about (a slot of other content).
            g.sh(f"dd if=/dev/zero of=/dev/{part} bs=4M oflag=direct status=none", 600)
            base = int(g.ok(f"cat /sys/class/block/{part}/stat").split()[6])
            g.ok("rauc install /mnt/update.raucb > /run/smarter-install.log 2>&1 &")
            end = time.monotonic() + 900
            out = ""
            while time.monotonic() < end:
                rc, out = g.sh(f"cat /sys/class/block/{part}/stat; tail -3 /run/smarter-install.log", 60)
                written = (int(out.split()[6]) - base) * 512 if rc == 0 else 0
                if written >= fraction * slot_bytes:
                    seen["hit"] = True
                    break
                if re.search(r"succeeded|failed", out):
                    break
                time.sleep(0.3)
        else:
            rc, out, _ = install(g, "update.raucb", 900, cut)
            if delay:
                time.sleep(delay)
        g.kill()
        check(seen["hit"], f"power cut {i} ({label}): reached the point", out[-300:])
        g.start()
        slot, secs = g.wait_healthy(600)
        check(slot in ("A", "B"), f"power cut {i} ({label}): a good slot boots (was {before}, now {slot})")
        # Where the cut falls decides which slot that must be: before RAUC switched the boot
        # order, the old one; once it reported success, the new one (the switch is on disk).
        other = {"A": "B", "B": "A"}.get(before, "?")
        want = {"old": before, "new": other}.get(expect)
        if want:
            check(slot == want, f"power cut {i} ({label}): the {expect} slot boots", f"{slot}, expected {want}")
        rc, out = g.sh("cat /data/test-marker")
        check(out.strip() == marker, f"power cut {i} ({label}): /data intact")
        if i == 3:
            check(g.ok("sha256sum /data/smarter/provision/record.toml").split()[0] == record,
                  "provisioning applied once (record unchanged after more boots)")


# ---- the OS update agent

AGENT_PORT = 9479


def agent_get(g: Guest, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:9479<path> inside the gateway, as the kubelet's probe does (the
    agent listens on the gateway's loopback only). Returns (status, body); status 0 when it
    does not answer."""
    rc, out = g.sh(f"( exec 3<>/dev/tcp/127.0.0.1/{AGENT_PORT} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 "
                   "&& timeout 5 cat <&3 )", 30)
    m = re.match(r"HTTP/1\.[01] (\d{3})", out)
    if rc != 0 or not m:
        return 0, out
    return int(m.group(1)), out.split("\n\n", 1)[1] if "\n\n" in out else ""


def agent_phase(g: Guest) -> str:
    status, body = agent_get(g, "/metrics")
    m = re.search(r'^smarter_update_phase\{phase="([^"]+)"\} 1$', body, re.M) if status == 200 else None
    return m.group(1) if m else f"(no answer: {status})"


def wait_agent(g: Guest, what: str, pred, timeout: float) -> tuple[bool, str]:
    """Poll the agent's /readyz until pred(status, body, phase) holds; (held, last seen)."""
    end = time.monotonic() + timeout
    last = ""
    while time.monotonic() < end:
        status, body = agent_get(g, "/readyz")
        phase = agent_phase(g)
        last = f"readyz {status} {body.strip()[:300]!r}, phase {phase}"
        if pred(status, body, phase):
            return True, last
        if g.proc and g.proc.poll() is not None:
            break
        time.sleep(3)
    log(f"     agent while waiting for {what}: {last}")
    return False, last


def bundle_desired(server: BundleServer, name: str, path: Path, keyring: Path) -> dict:
    """The desired-bundle file for `path` served as `name`: version from the bundle's manifest."""
    info = subprocess.run(["rauc", "info", "--output-format=json", f"--keyring={keyring}", str(path)],
                          capture_output=True, text=True, check=True)
    version = json.loads(info.stdout)["version"]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return {"version": version, "url": server.add(name, path), "size": path.stat().st_size,
            "sha256": h.hexdigest()}


def closed_window() -> str:
    """A reboot window that is closed now and for the next two hours (UTC, as the agent reads it)."""
    h = (time.gmtime().tm_hour + 3) % 24
    return f"{h:02d}:00-{(h + 1) % 24:02d}:00"


def agent_update(g: Guest, server: BundleServer, out_dir: Path, marker: str) -> str:
    """N -> N+1 by the agent with a download cut, a power cut during it and one after the install;
    then a bundle that fails the health gate: the gateway rolls back and the agent stays not Ready.
    Returns the provisioning record's hash (applied on boot 2)."""
    keyring = out_dir / "keys" / "ca.cert.pem"
    update = bundle_desired(server, "update.raucb", out_dir / "variants/update.raucb", keyring)
    broken = bundle_desired(server, "broken.raucb", out_dir / "variants/broken.raucb", keyring)
    size = update["size"]
    quick = {"poll_interval_s": 5, "retry_interval_s": 5}
    server.cut_after(size * 2 // 5, then_refuse=True)
    rc, out = g.sh(agent_pod.docker_run(update, {**quick, "reboot_window": closed_window()}), 120)
    check(rc == 0, "update agent: its DaemonSet's pod starts (docker, the manifest's user, caps, mounts)", out[-400:])
    ok, last = wait_agent(g, "the cut", lambda s, b, p: len(server.requests) >= 1 and "download" in b, 300)
    partial = int(g.ok("stat -c %s /data/smarter/update/bundle.part 2>/dev/null || echo 0").strip() or 0)
    check(ok and 0 < partial < size, "update agent: a download cut part-way is reported, not Ready, the partial "
          "bundle kept", f"{last}; partial {partial} of {size}")
    FIGURES["agent_partial_download_mib"] = partial / 2**20

    # ---- power cut 1: during the download (the server refuses meanwhile)
    g.kill()
    server.refuse(False)
    since = len(server.requests)
    g.start()
    slot, secs = g.wait_healthy()
    check(slot == "A", "power cut 1 (during the agent's download): slot A boots and is marked good", f"slot {slot}")
    rc, out = g.sh("test -s /data/smarter/provision/record.toml && grep -q gw-test-0001 /data/etc/rancher/k3s/config.yaml "
                   "&& test \"$(stat -c %a /data/etc/rancher/k3s/smarter-token)\" = 600 && test \"$(hostname)\" = gw-test-0001")
    check(rc == 0, "valid provisioning file applied: k3s config, token 0600, hostname, record", out[-300:])
    record = g.ok("sha256sum /data/smarter/provision/record.toml").split()[0]
    t0 = time.monotonic()
    ok, last = wait_agent(g, "the install", lambda s, b, p: p == "waiting-for-reboot-window", 900)
    FIGURES["agent_resume_to_installed_s"] = time.monotonic() - t0
    resumed = server.requests[since:]
    sent = server.sent("update.raucb", since)
    FIGURES["agent_full_download_mib"] = size / 2**20
    FIGURES["agent_resumed_download_mib"] = sent / 2**20
    check(ok, "update agent: after the reboot the download resumes, RAUC installs it, and the agent waits "
          "for its reboot window", last)
    # The resume starts at the partial file's length on disk after the power cut: what the kernel
    # had not yet written back when the power went is fetched again, nothing else.
    start = resumed[0][1] if resumed else 0
    FIGURES["agent_lost_to_power_cut_mib"] = (partial - start) / 2**20
    check(bool(resumed) and 0 < start <= partial and sent == size - start,
          "update agent: the resumed download asks from the partial file's end on disk and moves only the rest",
          f"requests {resumed}, sent {sent} of {size}, partial before the cut {partial}")
    status, body = agent_get(g, "/metrics")
    check(status == 200 and re.search(r"^smarter_update_downloads_completed_total 1$", body, re.M) is not None,
          "update agent: /metrics counts the completed download", body[-400:])

    # ---- power cut 2, right after the install and before any reboot: RAUC has switched the
    # boot order on disk, so slot B must come up, and the agent finds its version booted.
    g.kill()
    g.start()
    slot, secs = g.wait_healthy()
    check(slot == "B", "power cut 2 (right after the install, before the reboot): the new slot B boots "
          "and is marked good", f"slot {slot}")
    FIGURES["power_on_to_marked_good_s"] = secs
    rc, out = g.sh("grep -q '^VARIANT=update' /etc/smarter-variant")
    check(rc == 0, "slot B holds the update bundle's root file system")
    check(g.ok("cat /data/test-marker").strip() == marker, "/data survives the update")
    ok, last = wait_agent(g, "Ready", lambda s, b, p: s == 200, 300)
    check(ok, f"update agent: Ready on {update['version']} once the health gate marked slot B good", last)
    rc, out = g.sh("ls -A /data/smarter/update")
    check(rc == 0 and out.strip() == "", "update agent: bundle and record removed once Ready", out[-300:])

    # ---- a bundle whose services fail the health gate, through the agent (a new desired
    # bundle: a new pod), with an open reboot window: logind reboots the gateway into it, the
    # gate marks it bad and reboots, the boot counter returns to B.
    since = len(server.requests)
    seen = len(g.console_text())
    t0 = time.monotonic()
    rc, out = g.sh(agent_pod.docker_run(broken, quick), 120)
    check(rc == 0, "update agent: the pod with the next desired bundle starts", out[-400:])
    booted = g.wait_console(r"Linux version \d", seen, 900)
    check(booted is not None, "update agent: downloads and installs the bundle, then reboots the gateway "
          "through logind")
    g.started = time.monotonic()
    FIGURES["agent_desired_to_reboot_s"] = g.started - t0
    slot, secs = g.wait_healthy(900)
    console = g.console_text()[seen:]
    check(slot == "B" and "UNHEALTHY: slot A" in console,
          "the slot that fails the health gate is marked bad and slot B boots again", f"slot {slot}")
    ok, last = wait_agent(g, "rolled-back", lambda s, b, p: s == 503 and "rolled back" in b and p == "rolled-back", 300)
    check(ok, "update agent: not Ready after the rollback, with the reason", last)
    n = len(server.requests)
    time.sleep(20)  # four polls
    ok2, last = wait_agent(g, "still rolled-back", lambda s, b, p: p == "rolled-back", 30)
    check(ok2 and len(server.requests) == n and server.sent("broken.raucb", since) == broken["size"],
          "update agent: no retry of the rolled-back bundle (one download, no new request)",
          f"{last}; requests {server.requests[since:]}")
    rc, out = g.sh("rauc status --output-format=json")
    check(rc == 0 and '"A"' in out and "bad" in out, "rauc: slot A marked bad", out[-300:])

    # ---- an adaptive update, streamed: a release in which only the services changed. The agent
    # hands RAUC the URL; RAUC fetches only the blocks it finds in neither slot. Not booted (its
    # binaries are the variant's scrambled ones): the boot order is set back afterwards.
    services = bundle_desired(server, "services.raucb", out_dir / "variants/services.raucb", keyring)
    since = len(server.requests)
    t0 = time.monotonic()
    rc, out = g.sh(agent_pod.docker_run(services, {**quick, "streaming": True, "reboot_window": closed_window()}), 120)
    check(rc == 0, "update agent (streaming): the pod starts", out[-400:])
    ok, last = wait_agent(g, "the streamed install", lambda s, b, p: p == "waiting-for-reboot-window", 900)
    FIGURES["agent_adaptive_install_s"] = time.monotonic() - t0
    sent = server.sent("services.raucb", since)
    FIGURES["agent_adaptive_mib"] = sent / 2**20
    FIGURES["agent_adaptive_percent_of_bundle"] = 100 * sent / services["size"]
    check(ok, "update agent (streaming): RAUC streams the adaptive bundle and installs it", last)
    check(0 < sent < services["size"] // 10, "adaptive update of the services alone moves under 10 % of the bundle",
          f"{sent} of {services['size']} bytes in {len(server.requests) - since} requests")
    g.ok("docker rm -f smarter-update && rauc status mark-active booted")
    return record


def kill_points(n: int) -> list[tuple[str, str, float, float | None, str]]:
    """(label, pattern in rauc's output, seconds to wait after it, or instead the fraction of the
    slot image that must have reached the target partition, which slot must boot after the cut:
    "old", "new", or "any" where the cut may fall either side of the switch) per power cut,
    besides the two the update agent's test makes (during its download; right after its install,
    before the reboot)."""
    points = [
        ("half-way through the slot write", r"Copying image", 0.0, 0.5, "old"),
        ("during the first boot of the new slot", "reboot", 20.0, None, "new"),
        ("while verifying the bundle", r"Checking bundle", 0.0, None, "old"),
        ("as the slot write starts", r"Copying image", 0.0, None, "old"),
    ]
    return points[: max(n, 0)] if n <= len(points) else points


if __name__ == "__main__":
    sys.exit(main())
