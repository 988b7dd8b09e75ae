"""OS updates on the gateway: an A/B update that the health gate marks good, a broken update
that the gateway rolls back by itself, and a power cut in the middle of an install.

Runs on every board with RAUC A/B slots (feature `ab-update`). The bundles come from the
environment's `images:` section:

* `update-bundle`: a bundle for this board whose services are healthy;
* `broken-bundle`: one whose services fail the health gate (the emulated gateway's is built
  by `images/emulated/build.sh --variant broken`).

The test host sends each bundle to the gateway over TCP (the gateway runs `nc`, which every
SMARTER image has), into `SmarterBoard.scratch_dir` on the gateway, and `rauc install`s it
from there. "Marked good" means what the health gate records: its unit finished
successfully and its state names the booted slot as the last good one.

The tests share the session's gateway and run in file order (update, rollback, power cut);
each leaves a gateway booted into a good slot, which is also what the next one starts from.
"""

import hashlib
import json
import os
import socket
import threading
import time

import pytest

from smarter_hil.gateway import free_port

GATE_STATE = "/data/smarter/health-gate/state.toml"
MARKER = "/data/smarter-hil-marker"


@pytest.fixture
def ab(board, strategy):
    if not board.has("ab-update"):
        pytest.skip(f"{board.name}: no RAUC A/B slots (feature ab-update)")
    if not board.test_host:
        pytest.skip(f"{board.name}: no test_host in the environment (the gateway's route to "
                    "the test host, which sends it the bundles)")
    return strategy


def _bundle(env, kind):
    path = env.config.get_image_path(kind)
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        pytest.fail(f"images.{kind}: {path}: {e.strerror} (for the emulated gateway, "
                    "images/test.sh builds it; hardware-tests/test.sh --qemu too)")
    return path, digest


def _send(gateway, board, path, digest, name):
    """The bundle at `path` on the test host -> `scratch_dir/name` on the gateway, checked."""
    size = os.path.getsize(path)
    dest = f"{board.scratch_dir}/{name}"
    free = int(gateway.run_check(
        f"mkdir -p {board.scratch_dir} && rm -f {board.scratch_dir}/*.raucb && "
        f"df -Pk {board.scratch_dir} | awk 'NR == 2 {{ print $4 }}'")[-1])
    assert free * 1024 > size + 8 * 2**20, (
        f"{board.scratch_dir} on the gateway has {free // 1024} MiB free; the bundle needs "
        f"{size // 2**20} MiB (set SmarterBoard.scratch_dir)")
    port = free_port()
    server = socket.create_server(("0.0.0.0", port))
    server.settimeout(120)

    def serve():
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn, open(path, "rb") as f:
            conn.sendfile(f)
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    start = time.monotonic()
    gateway.run_check(f"nc {board.test_host} {port} </dev/null > {dest}", timeout=600)
    secs = time.monotonic() - start
    thread.join(5)
    server.close()
    got = gateway.run_check(f"sha256sum {dest}")[-1].split()[0]
    assert got == digest, f"{name} arrived on the gateway with sha256 {got}, sent {digest}"
    return dest, secs


def _status(gateway):
    """(booted bootname, the gate's last good slot, {bootname: RAUC boot status})."""
    out = "\n".join(gateway.run_check("rauc status --output-format=json"))
    try:
        status = json.loads(out[out.index("{"):])
        states = {}
        for entry in status.get("slots", []):
            for slot in entry.values():
                if slot.get("bootname"):
                    states[slot["bootname"]] = slot.get("boot_status", "?")
        booted = status["booted"]
    except (ValueError, KeyError, AttributeError) as e:
        pytest.fail(f"rauc status --output-format=json: unexpected output ({e}): {out[-500:]}")
    state, _, _ = gateway.run(f"cat {GATE_STATE} 2>/dev/null")
    last_good = next((line.split('"')[1] for line in state
                      if line.startswith("last_good_slot") and '"' in line), None)
    return booted, last_good, states


def _gate_passed(gateway):
    out, _, _ = gateway.run("systemctl show -p ActiveState,Result smarter-health-gate.service")
    return "ActiveState=active" in out and "Result=success" in out


def _install(gateway, dest):
    start = time.monotonic()
    out, _, code = gateway.run(f"rauc install {dest}", timeout=900)
    assert code == 0, f"rauc install {dest}: exit {code}: " + "\n".join(out[-8:])
    return time.monotonic() - start


def _prepare(gateway, board, env, kind, name):
    """Before an install: the booted slot, a fresh marker on /data, and the bundle `kind`
    sent to the gateway as `name`. Returns (slot, marker, path on the gateway, transfer s)."""
    path, digest = _bundle(env, kind)
    before, _, _ = _status(gateway)
    marker = gateway.run_check(f"date +%s > {MARKER}; sync; cat {MARKER}")
    dest, secs = _send(gateway, board, path, digest, name)
    return before, marker, dest, secs


def _assert_marked_good(gateway, slot, last_good, marker, after):
    assert _gate_passed(gateway) and last_good == slot, (
        f"the health gate did not mark slot {slot} good (its last good slot: {last_good})")
    assert gateway.run_check(f"cat {MARKER}") == marker, f"/data did not survive {after}"


def test_update_switches_slots_and_is_marked_good(gateway, ab, board, env, figure):
    before, marker, dest, secs = _prepare(gateway, board, env, "update-bundle", "update.raucb")
    figure("bundle transfer", secs, "s")
    figure("install", _install(gateway, dest), "s")
    gateway.run_check(f"rm -f {dest}")

    start = time.monotonic()
    ab.reboot()
    booted, last_good, _ = _status(gateway)
    figure("reboot to marked good", time.monotonic() - start, "s")
    assert booted != before, f"still on slot {before} after installing the update and rebooting"
    _assert_marked_good(gateway, booted, last_good, marker, "the update")


def test_broken_update_rolls_back_by_itself(gateway, ab, board, env, figure):
    before, marker, dest, _ = _prepare(gateway, board, env, "broken-bundle", "broken.raucb")
    _install(gateway, dest)
    gateway.run_check(f"rm -f {dest}")

    # The broken slot boots, its health gate fails it and reboots; the boot counter then
    # brings up the old slot again. Two boots; the test logs in after the second.
    start = time.monotonic()
    ab.reboot(boots=2)
    booted, last_good, states = _status(gateway)
    figure("rollback (reboot to the old slot marked good)", time.monotonic() - start, "s")
    assert booted == before, f"slot {booted} booted after the broken update; expected the old slot {before}"
    _assert_marked_good(gateway, booted, last_good, marker, "the rollback")
    rejected = [slot for slot, status in states.items() if slot != before]
    assert rejected and all(states[s] == "bad" for s in rejected), (
        f"the broken slot is not marked bad: RAUC boot status {states}")


def test_power_cut_during_an_update_leaves_a_good_slot(gateway, ab, board, env, figure):
    before, marker, dest, _ = _prepare(gateway, board, env, "update-bundle", "update.raucb")
    log = "/run/smarter-hil-install.log"
    gateway.run_check(f"(rauc install {dest} > {log} 2>&1 &)")
    # Cut once RAUC is writing the slot: the target slot is half-written.
    deadline = time.monotonic() + 600
    while "Copying image" not in "\n".join(gateway.run(f"cat {log}")[0]):
        assert time.monotonic() < deadline, "rauc install never started writing the slot"
        time.sleep(0.5)
    time.sleep(3)
    start = time.monotonic()
    ab.power_cut()
    booted, last_good, _ = _status(gateway)
    figure("power on to marked good", time.monotonic() - start, "s")
    assert booted == before, f"slot {booted} booted after a power cut during the slot write; expected {before}"
    _assert_marked_good(gateway, booted, last_good, marker, "the power cut")
    gateway.run(f"rm -f {board.scratch_dir}/*.raucb")
