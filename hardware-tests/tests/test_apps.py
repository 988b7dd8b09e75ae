"""Apps on the gateway find each other by name through smarter-dns, and outside names
resolve through its forwarder.

Two containers on the gateway: app A listens on a TCP port; app B, started after it,
resolves A's name and connects to it by that name, with smarter-dns as its only name
server. An outside name resolves through smarter-dns's forwarder to a DNS server (dnsmasq)
that this suite runs on the test host, which the gateway reaches at `test_host`; the
gateway's smarter-dns is pointed at it with a changed config and a reload (SIGHUP).

Boards whose apps run under Docker (the emulated gateway) run the apps with `docker run`;
on k3s boards the apps are pods scheduled by the master, which this suite does not drive
yet, so the test skips there and says so.
"""

import shutil
import socket
import subprocess
import time

import pytest

from smarter_hil.gateway import free_port, override_config

DNS = "169.254.0.2"  # smarter-dns's address (its default `listen`)
OUTSIDE_NAME = "outside.smarter-hil.test"
OUTSIDE_ADDR = "192.0.2.7"
PROBE = "smarter-hil-probe:1"
# What the probe image holds: a shell, the resolver's own tool and netcat, each with the
# libraries ldd names (copied from the gateway's root file system, so no image is pulled).
PROBE_TOOLS = "/usr/bin/bash /usr/bin/getent /usr/bin/nc.openbsd"


@pytest.fixture
def upstream(board):
    """dnsmasq on the test host answering OUTSIDE_NAME; yields its port."""
    if not board.test_host:
        pytest.skip(f"{board.name}: no test_host in the environment (the gateway's route to "
                    "the test host, for the DNS upstream this test serves)")
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen(
        [dnsmasq, "--no-daemon", "--conf-file=/dev/null", f"--port={port}", "--no-resolv",
         "--no-hosts", "--user=root", f"--address=/{OUTSIDE_NAME}/{OUTSIDE_ADDR}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    if proc.poll() is not None:
        pytest.fail(f"dnsmasq did not start: {proc.stderr.read().decode()[-500:]}")
    yield port
    proc.terminate()
    proc.wait()


def _sh(gateway, cmd, timeout=120):
    out, _, code = gateway.run(cmd, timeout=timeout)
    return code, "\n".join(out)


def test_apps_reach_each_other_by_name(gateway, board, upstream, figure):
    if board.has("k3s"):
        pytest.skip(f"{board.name}: apps are pods on k3s boards; this suite does not drive "
                    "the master that schedules them yet")
    # Point smarter-dns at the test host's DNS server: its config with a resolv.conf of our own.
    with override_config(gateway, "/etc/smarter/smarter-dns.toml",
                         {"resolv_conf": '"/run/smarter-hil/resolv.conf"', "upstream_port": str(upstream)},
                         "smarter-dns", files={"resolv.conf": f"nameserver {board.test_host}\n"}):
        try:
            _check_apps(gateway, figure)
        finally:
            gateway.run("docker rm -f hil-app-a hil-app-b >/dev/null 2>&1")


def _check_apps(gateway, figure):
    code, out = _sh(gateway, f"docker image inspect {PROBE} >/dev/null 2>&1 || "
                    f"{{ ldd {PROBE_TOOLS} | grep -o '/[^ ]*' | sort -u | "
                    f"tar -chf - {PROBE_TOOLS} -T - 2>/dev/null | docker import - {PROBE}; }}", 300)
    assert code == 0, f"could not make the probe image from the gateway's files: {out}"

    code, out = _sh(gateway, f"docker run -d --name hil-app-a --dns {DNS} --read-only "
                    f"{PROBE} /usr/bin/nc.openbsd -lk 7000", 180)
    assert code == 0, f"app A did not start: {out}"
    address = gateway.run_check(
        "docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' hil-app-a")[0]

    # smarter-dns learns app A from Docker's events; time until it answers for the name.
    start = time.monotonic()
    resolved = []
    while time.monotonic() - start < 90:
        code, out = _sh(gateway, f"docker run --rm --dns {DNS} {PROBE} /usr/bin/getent hosts hil-app-a", 120)
        resolved = out.split()
        if code == 0 and resolved:
            break
        time.sleep(0.5)
    assert resolved[:1] == [address], (
        f"app B resolved hil-app-a to {resolved[:1]} through smarter-dns; Docker gave it {address}")
    figure("app start to name resolvable", time.monotonic() - start, "s")

    code, out = _sh(gateway, f"docker run --rm --name hil-app-b --dns {DNS} {PROBE} "
                    "/usr/bin/bash -c 'echo hello | /usr/bin/nc.openbsd -N -w 5 hil-app-a 7000 && echo connected'",
                    120)
    assert code == 0 and "connected" in out, f"app B could not connect to hil-app-a:7000 by name: {out}"

    code, out = _sh(gateway, f"docker run --rm --dns {DNS} {PROBE} /usr/bin/getent hosts {OUTSIDE_NAME}")
    assert code == 0 and out.split()[:1] == [OUTSIDE_ADDR], (
        f"{OUTSIDE_NAME} did not resolve through the forwarder to {OUTSIDE_ADDR}: {out!r}")
