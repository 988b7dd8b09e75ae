"""The gateway checks every board runs: boot, services, USB hotplug.

Run against one board: `pytest --lg-env env/<board>.yaml tests/test_gateway.py`.
One boot (the session's `gateway` fixture) serves all of them.
"""

import time

import pytest

# The services every SMARTER gateway runs, and the container runtime.
SERVICES = ["smarter-device-manager", "smarter-dns", "smarter-debug-agent"]


def test_boots_to_a_shell(gateway, board, boot_time, figure):
    figure("boot to shell", boot_time, "s")
    assert boot_time < board.boot_deadline_s, (
        f"boot took {boot_time:.0f} s, deadline {board.boot_deadline_s} s")
    out = gateway.run_check("uname -m")
    assert out == ["aarch64"] or out == ["armv7l"], out


def test_services_and_runtime_are_healthy(gateway, board):
    units = list(SERVICES)
    units.append("k3s-agent" if board.has("k3s") else "docker")
    out, _, code = gateway.run("systemctl is-active " + " ".join(units))
    states = dict(zip(units, out))
    assert code == 0, f"not active: { {u: s for u, s in states.items() if s != 'active'} }"
    # RAUC knows the booted slot and the health gate marked it good.
    if board.has("ab-update"):
        out = gateway.run_check("rauc status --output-format=shell")
        status = dict(line.split("=", 1) for line in out if "=" in line)
        booted = status.get("RAUC_BOOT_SLOT") or status.get("RAUC_SYSTEM_BOOTED_BOOTNAME")
        assert booted, f"rauc status names no booted slot: {out}"
    if not board.has("k3s"):
        gateway.run_check("docker info --format '{{.ServerVersion}}'")


def _usb_serial_devices(gateway):
    """The ttyUSB devices smarter-device-manager's rules match now (its own
    scan with the gateway's config: a resource `smarter-devices/ttyUSB0` with
    the default rules, `smarter-devices/usb-serial` with pooled ones)."""
    out, _, code = gateway.run("smarter-device-manager list 2>&1")
    assert code == 0, out
    return [line for line in out if "ttyUSB" in line]


def test_usb_serial_adapter_appears_and_goes(gateway, target, board, figure):
    if board.has("usb-hotplug-monitor"):
        qemu = target.get_driver("QEMUDriver")

        def plug():
            # The adapter's serial line needs a backend that counts as open: QEMU attaches a
            # usb-serial device to the bus only then (a `null` chardev never is, so the
            # adapter would never be plugged in at all). A ring buffer is.
            qemu.monitor_command("chardev-add", {
                "id": "hilserial", "backend": {"type": "ringbuf", "data": {"size": 4096}}})
            qemu.monitor_command("device_add", {
                "driver": "usb-serial", "id": "hilusb", "chardev": "hilserial"})

        def unplug():
            qemu.monitor_command("device_del", {"id": "hilusb"})

    else:
        pytest.skip(f"{board.name}: no remotely switchable USB port in this rig "
                    "(declare feature usb-hotplug-monitor or add a USB power switch driver)")
    before = _usb_serial_devices(gateway)
    assert before == [], f"a USB serial device is there before the test: {before}"

    start = time.monotonic()
    plug()
    appeared = _wait(lambda: _usb_serial_devices(gateway), 30)
    if not appeared:
        kernel, _, _ = gateway.run("dmesg | grep -i -E 'usb|tty' | tail -15; ls -l /dev/ttyUSB* 2>&1")
        pytest.fail("the USB serial adapter did not appear as a device resource within 30 s; "
                    "the gateway's kernel said:\n" + "\n".join(kernel))
    figure("plug to resource", time.monotonic() - start, "s")

    start = time.monotonic()
    unplug()
    gone = _wait(lambda: not _usb_serial_devices(gateway), 30)
    assert gone, "the USB serial adapter's device resource did not go within 30 s"
    figure("unplug to gone", time.monotonic() - start, "s")


def _wait(check, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    return None
