"""A developer on the test host reaches the gateway through smarter-comms with plain ssh.

The suite runs smarter-comms on the test host (the binary the environment's `tools:` names)
and points the gateway's smarter-debug-agent at it (a changed config and a reload, SIGHUP),
enrols the gateway with the agent's key, adds a developer with an OpenSSH key and a grant,
then runs OpenSSH's own client: `ssh -J developer@comms gateway -- command`. The agent dials
out; nothing listens on the gateway.
"""

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request

import pytest

from smarter_hil.gateway import free_port, override_config

GATEWAY_NAME = "hil-gateway"
AGENT_CONFIG = "/etc/smarter/smarter-debug-agent.toml"


class Comms:
    def __init__(self, binary, workdir):
        self.dir = workdir
        self.token = secrets.token_hex(16)
        self.ssh_port, self.api_port = free_port(), free_port()
        (workdir / "state").mkdir()
        config = workdir / "comms.toml"
        # The gateway reaches the test host through QEMU's NAT or the rig's network, so
        # comms' SSH port listens on every address; the API stays on loopback.
        config.write_text(
            f'ssh_listen = "0.0.0.0:{self.ssh_port}"\n'
            f'api_listen = "127.0.0.1:{self.api_port}"\n'
            f'state_dir = "{workdir / "state"}"\n'
            f'admin_token_sha256 = "{hashlib.sha256(self.token.encode()).hexdigest()}"\n'
            "auth_rejection_ms = 100\n")
        self.log = open(workdir / "comms.log", "wb")
        self.proc = subprocess.Popen([binary, "--config", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (workdir / "state/host_key.pub").exists() or not self._up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"smarter-comms did not start: {(workdir / 'comms.log').read_text()[-800:]}")
            time.sleep(0.2)
        self.host_key = (workdir / "state/host_key.pub").read_text().split()[:2]

    def _up(self):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/healthz", timeout=1)
            return True
        except OSError:
            return False

    def api(self, method, path, body=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        return json.loads(text) if text.startswith(("{", "[")) else text

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def comms(board, env, tmp_path):
    if not board.test_host:
        pytest.skip(f"{board.name}: no test_host in the environment (the gateway's route to "
                    "the test host, where this test runs smarter-comms)")
    for tool in ("ssh", "ssh-keygen"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing on the test host (Debian openssh-client)")
    binary = env.config.get_tool("smarter-comms")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"tools.smarter-comms: {binary} is not an executable (build it: ./dev release)")
    c = Comms(binary, tmp_path)
    yield c
    c.stop()


def test_developer_reaches_the_gateway_with_plain_ssh(gateway, board, comms, tmp_path, figure):
    # The agent: comms' address as the gateway sees the test host, comms' host key, our name.
    key_line = " ".join(comms.host_key)
    edits = {
        "comms_address": f'"{board.test_host}:{comms.ssh_port}"',
        "comms_host_key": f'"{key_line}"',
        "gateway_name": f'"{GATEWAY_NAME}"',
        "max_backoff_secs": "2",
    }
    with override_config(gateway, AGENT_CONFIG, edits, "smarter-debug-agent"):
        _connect(gateway, comms, tmp_path, figure)


def _connect(gateway, comms, tmp_path, figure):
    state_dir = next((line.split('"')[1] for line in gateway.run_check(f"cat {AGENT_CONFIG}")
                      if line.startswith("state_dir")), "/var/lib/smarter/debug-agent")
    agent_key = []
    deadline = time.monotonic() + 60
    while not agent_key and time.monotonic() < deadline:
        agent_key, _, _ = gateway.run(f"cat {state_dir}/agent_key.pub 2>/dev/null")
        time.sleep(1)
    assert agent_key, f"the agent wrote no {state_dir}/agent_key.pub within 60 s"

    start = time.monotonic()
    comms.api("POST", "/v1/gateways", {"name": GATEWAY_NAME, "public_key": agent_key[0]})
    while not comms.api("GET", f"/v1/gateways/{GATEWAY_NAME}").get("connected"):
        assert time.monotonic() - start < 60, (
            "the agent did not connect to comms within 60 s of enrolment; comms log: "
            + (tmp_path / "comms.log").read_text()[-600:])
        time.sleep(0.5)
    figure("enrolment to agent connected", time.monotonic() - start, "s")

    key = tmp_path / "alice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    comms.api("POST", "/v1/developers", {"name": "alice"})
    comms.api("POST", "/v1/developers/alice/keys", {"public_key": (tmp_path / "alice.pub").read_text().strip()})
    comms.api("POST", "/v1/grants", {"developer": "alice", "gateway": GATEWAY_NAME})
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{comms.ssh_port} {' '.join(comms.host_key)}\n"
                     + comms.api("GET", f"/v1/gateways/{GATEWAY_NAME}/known_hosts"))
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host comms\n  HostName 127.0.0.1\n  Port {comms.ssh_port}\n  User alice\n"
        f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 30\n")

    start = time.monotonic()
    result = subprocess.run(
        ["ssh", "-F", str(config), "-J", "comms", GATEWAY_NAME, "--", "cat /etc/smarter-release; exit 7"],
        capture_output=True, text=True, timeout=180)
    figure("ssh command round trip", time.monotonic() - start, "s")
    release = "\n".join(gateway.run_check("cat /etc/smarter-release"))
    assert result.returncode == 7 and result.stdout.strip() == release.strip(), (
        f"ssh -J alice@comms {GATEWAY_NAME} -- ...: exit {result.returncode}, "
        f"stdout {result.stdout!r}, stderr {result.stderr[-500:]!r}")
