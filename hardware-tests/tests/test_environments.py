"""Every environment file loads in labgrid and names the resources and
drivers its board needs, bound the way SmarterStrategy uses them. Runs with
no board attached: labgrid creates the targets (resources and drivers are
instantiated and bound) without activating anything."""

import os
import pathlib

import pytest
from labgrid import Environment

ENV_DIR = pathlib.Path(__file__).resolve().parent.parent / "env"

# For each environment: the resource and driver classes it must declare, and
# which of the strategy's bindings must be filled (and by what class).
EXPECTED = {
    "qemu.yaml": {
        "board": "qemuarm64",
        "resources": {"SmarterBoard"},
        "drivers": {"QEMUDriver", "UBootDriver", "ShellDriver", "SmarterStrategy"},
        "bound": {"power": "QEMUDriver", "console": "QEMUDriver",
                  "uboot": "UBootDriver", "shell": "ShellDriver"},
        "unbound": {"sdmux", "loader", "flashscript", "recovery"},
        "images": {"gateway", "uboot", "provisioning", "update-bundle", "broken-bundle"},
    },
    "rpi4.yaml": {
        "board": "raspberrypi4-64",
        "resources": {"SmarterBoard", "USBSerialPort", "NetworkPowerPort", "USBSDMuxDevice"},
        "drivers": {"SerialDriver", "NetworkPowerDriver", "USBSDMuxDriver", "UBootDriver",
                    "ShellDriver", "SmarterStrategy"},
        "bound": {"power": "NetworkPowerDriver", "console": "SerialDriver",
                  "sdmux": "USBSDMuxDriver", "uboot": "UBootDriver", "shell": "ShellDriver"},
        "unbound": {"loader", "flashscript", "recovery"},
        "images": {"gateway", "provisioning", "update-bundle", "broken-bundle"},
    },
    "coral.yaml": {
        "board": "coral-dev",
        "resources": {"SmarterBoard", "USBSerialPort", "NetworkPowerPort", "IMXUSBLoader",
                      "SysfsGPIO"},
        "drivers": {"SerialDriver", "NetworkPowerDriver", "UUUDriver", "GpioDigitalOutputDriver",
                    "UBootDriver", "ShellDriver", "SmarterStrategy"},
        "bound": {"power": "NetworkPowerDriver", "console": "SerialDriver",
                  "loader": "UUUDriver", "recovery": "GpioDigitalOutputDriver",
                  "uboot": "UBootDriver", "shell": "ShellDriver"},
        "unbound": {"sdmux", "flashscript"},
        "images": {"gateway", "provisioning", "update-bundle", "broken-bundle"},
    },
    "xavier.yaml": {
        "board": "jetson-xavier-nx-devkit",
        "resources": {"SmarterBoard", "USBSerialPort", "NetworkPowerPort",
                      "USBFlashableDevice", "SysfsGPIO"},
        "drivers": {"SerialDriver", "NetworkPowerDriver", "FlashScriptDriver",
                    "GpioDigitalOutputDriver", "ShellDriver", "SmarterStrategy"},
        "bound": {"power": "NetworkPowerDriver", "console": "SerialDriver",
                  "flashscript": "FlashScriptDriver", "recovery": "GpioDigitalOutputDriver",
                  "shell": "ShellDriver"},
        "unbound": {"uboot", "sdmux", "loader"},
        "images": {"gateway", "provisioning", "tegraflash", "update-bundle", "broken-bundle"},
    },
}


def test_every_environment_file_is_checked():
    assert {p.name for p in ENV_DIR.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_environment_loads_with_its_resources_and_drivers(name):
    want = EXPECTED[name]
    env = Environment(config_file=str(ENV_DIR / name))
    target = env.get_target("main")
    assert target is not None, f"{name}: no target 'main'"
    resources = {type(r).__name__ for r in target.resources}
    drivers = {type(d).__name__ for d in target.drivers}
    assert resources == want["resources"], f"{name}: resources {sorted(resources)}"
    assert drivers == want["drivers"], f"{name}: drivers {sorted(drivers)}"

    board = next(r for r in target.resources if type(r).__name__ == "SmarterBoard")
    assert board.name == want["board"]

    strategy = next(d for d in target.drivers if type(d).__name__ == "SmarterStrategy")
    for binding, cls in want["bound"].items():
        bound = getattr(strategy, binding)
        assert type(bound).__name__ == cls, f"{name}: strategy.{binding} is {bound!r}"
    for binding in want["unbound"]:
        assert getattr(strategy, binding) is None, f"{name}: strategy.{binding} should be unbound"

    for kind in want["images"]:
        assert env.config.get_image_path(kind), f"{name}: images.{kind}"
    for tool in ("smarter-flash", "smarter-comms"):
        assert os.path.basename(env.config.get_tool(tool)) == tool, f"{name}: tools.{tool}"


def test_unknown_board_feature_is_refused(tmp_path):
    text = (ENV_DIR / "qemu.yaml").read_text().replace(
        "features: [ab-update, usb-hotplug-monitor]", "features: [ab-update, usb-hotplug-monitr]")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    env = Environment(config_file=str(bad))
    with pytest.raises(Exception, match="usb-hotplug-monitr"):
        env.get_target("main")
