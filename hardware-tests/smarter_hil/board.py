"""SmarterBoard: what a test needs to know about the board under test.

A plain resource (always available) naming the board and the features it
has, so a test that needs hardware a board lacks skips with that reason
instead of failing, and the results name the board.

Features: `usb-hotplug` (a USB serial adapter can be switched on and off,
or plugged by hand), `usb-hotplug-monitor` (QEMU: `device_add` through the
monitor), `ab-update` (RAUC A/B slots), `k3s` (a k3s agent joins a master;
without it, apps run under Docker as on the emulated gateway).

`test_host` is the address at which the gateway reaches the machine running
the suite (QEMU's user network: 10.0.2.2; a rig: the test host's address on
the rig's network). Tests that serve something to the gateway from the test
host (a DNS upstream, smarter-comms, update bundles) skip with that reason when
it is unset.
"""

import attr
from labgrid.factory import target_factory
from labgrid.resource.common import Resource

FEATURES = {"usb-hotplug", "usb-hotplug-monitor", "ab-update", "k3s"}


def _known_features(instance, attribute, value):
    unknown = set(value) - FEATURES
    if unknown:
        raise ValueError(
            f"SmarterBoard.features: unknown {sorted(unknown)}; known: {sorted(FEATURES)}")


@target_factory.reg_resource
@attr.s(eq=False)
class SmarterBoard(Resource):
    name = attr.ib(validator=attr.validators.instance_of(str))
    features = attr.ib(
        default=attr.Factory(list),
        validator=[attr.validators.instance_of(list), _known_features],
    )
    # Power-on to a shell with every unit started. Real boards boot in well
    # under a minute; QEMU's software emulation of the emulated gateway needs
    # minutes on a busy 2-core CI machine.
    boot_deadline_s = attr.ib(default=300, validator=attr.validators.instance_of(int))
    test_host = attr.ib(default=None, validator=attr.validators.optional(attr.validators.instance_of(str)))
    # Where the update tests put a bundle on the gateway before `rauc install`: a directory
    # on a file system with room for one bundle.
    scratch_dir = attr.ib(default="/data/smarter-hil", validator=attr.validators.instance_of(str))

    def has(self, feature):
        return feature in self.features
