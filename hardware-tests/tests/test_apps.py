"""Apps on the gateway find each other by name through smarter-dns, and outside names
resolve through its forwarder.

Two apps on the gateway: app A listens on a TCP port; app B resolves A's name and connects
to it by that name, with smarter-dns as its only name server. An outside name resolves
through smarter-dns's forwarder to a DNS server (dnsmasq) that this suite runs on the test
host, which the gateway reaches at `test_host`; the gateway's smarter-dns is pointed at it
with a changed config and a reload (SIGHUP).

The apps run the way the board runs apps (smarter_hil/apps.py has both back ends; the
checks are one):

* boards whose apps run under Docker (the emulated gateway): containers, `docker run`;
  smarter-dns learns them from Docker's events;
* k3s boards: pods made on the gateway with k3s's bundled crictl and ctr over CRI, no
  master: the probe image is imported with `k3s ctr -n k8s.io images import`, each app is
  a pod sandbox (`k3s crictl runp`, with the pod config the kubelet would send:
  metadata, hostname, log directory, smarter-dns as the pod's name server as with
  `--cluster-dns`, Linux security context) and a container in it (`crictl create` and
  `start`). containerd attaches each sandbox through smarter-cni, whose record names the
  pod (`K8S_POD_NAME`, the sandbox's `metadata.name`) for smarter-dns; app B resolves
  `hil-app-a` (through the pod's search list) and
  `hil-app-a.smarter-hil.svc.cluster.local`. The k3s agent (whose kubelet would tear
  down pods it did not make) is stopped while the pods exist.
"""

import shutil
import socket
import subprocess
import time

import pytest

from smarter_hil.apps import OUTSIDE_ADDR, OUTSIDE_NAME, CrictlApps, DockerApps, check_apps
from smarter_hil.gateway import free_port, override_config


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


def test_apps_reach_each_other_by_name(gateway, board, upstream, figure):
    apps = CrictlApps(gateway) if board.has("k3s") else DockerApps(gateway)
    # Point smarter-dns at the test host's DNS server: its config with a resolv.conf of our own.
    with override_config(gateway, "/etc/smarter/smarter-dns.toml",
                         {"resolv_conf": '"/run/smarter-hil/resolv.conf"', "upstream_port": str(upstream)},
                         "smarter-dns", files={"resolv.conf": f"nameserver {board.test_host}\n"}):
        try:
            check_apps(apps, figure)
        finally:
            apps.cleanup()
