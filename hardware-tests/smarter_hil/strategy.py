"""SmarterStrategy: off -> flashed -> (U-Boot) -> shell, for every board.

One strategy serves the emulated gateway and the real boards; what differs
is which drivers an environment file binds:

* power and console: QEMUDriver (emulated) or a power driver + SerialDriver;
* flashing, one of: an SD mux (USBSDMuxDriver or USBSDWireDriver) whose
  disk `smarter-flash` writes; a USB recovery loader (UUUDriver, Coral eMMC)
  or a flash script (FlashScriptDriver, Xavier tegraflash) fed an image that
  `smarter-flash --image-only` provisioned first; for QEMU, a provisioned
  copy of the image file that QEMUDriver then boots;
* UBootDriver where the board boots through U-Boot (not on Xavier: UEFI);
* ShellDriver on the serial console.

Images and the provisioning file come from the environment's `images:`
section (`gateway`, `provisioning`); tools from `tools:` (`smarter-flash`).
"""

import atexit
import enum
import os
import shutil
import subprocess
import tempfile

import attr
from labgrid.factory import target_factory
from labgrid.strategy.common import Strategy, StrategyError, never_retry


class Status(enum.Enum):
    unknown = 0
    off = 1
    flashed = 2
    uboot = 3
    shell = 4


@target_factory.reg_driver
@attr.s(eq=False)
class SmarterStrategy(Strategy):
    """Take a SMARTER gateway from off to flashed to booted to a shell."""

    bindings = {
        "power": "PowerProtocol",
        "console": "ConsoleProtocol",
        "shell": "ShellDriver",
        "uboot": {"UBootDriver", None},
        "sdmux": {"USBSDMuxDriver", "USBSDWireDriver", None},
        "loader": {"UUUDriver", None},
        "flashscript": {"FlashScriptDriver", None},
        "recovery": {"DigitalOutputProtocol", None},
    }

    status = attr.ib(default=Status.unknown)
    # The command a booted gateway must pass before it counts as a shell
    # (every unit started, none failed; the SMARTER checks are the tests').
    ready_command = attr.ib(
        default="systemctl is-system-running --wait || true",
        validator=attr.validators.instance_of(str),
    )

    # What the console shows once per boot: the kernel's banner (every board's kernel logs to
    # the serial console; the command line must not silence it).
    kernel_banner = attr.ib(default=r"Linux version \d", validator=attr.validators.instance_of(str))

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self._workdir = None

    # -- what the environment names ----------------------------------------

    def _image(self, kind):
        path = self.target.env.config.get_image_path(kind)
        if not os.path.exists(path):
            raise StrategyError(f"images.{kind}: {path} does not exist")
        return path

    def _flash_tool(self):
        return self.target.env.config.get_tool("smarter-flash")

    def _provision_image(self, image):
        """A copy of `image` with the provisioning file on its boot partition
        (smarter-flash --image-only: the same validation as every flash)."""
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="smarter-hil-")
            # The copy is a whole disk image (GBs apparent): gone when the run ends, whatever
            # way it ends, or every run would leave one behind.
            atexit.register(shutil.rmtree, self._workdir, ignore_errors=True)
        copy = os.path.join(self._workdir, os.path.basename(image))
        # Images are sparse (a few hundred MB of data in GBs): keep them so.
        subprocess.run(["cp", "--sparse=always", image, copy], check=True)
        subprocess.run(
            [self._flash_tool(), "--image-only", "--image", copy,
             "--provision", self._image("provisioning")],
            check=True,
        )
        return copy

    # -- transitions -------------------------------------------------------

    def _flash(self):
        image = self._image("gateway")
        if self.sdmux is not None:
            self.target.activate(self.sdmux)
            self.sdmux.set_mode("host")
            disk = self.sdmux.mux.path
            subprocess.run(
                [self._flash_tool(), "--image", image, "--device", disk,
                 "--provision", self._image("provisioning")],
                check=True,
            )
            self.sdmux.set_mode("dut")
        elif self.loader is not None or self.flashscript is not None:
            # USB recovery: the board must be powered into its ROM's
            # download mode (recovery pin held while powering on).
            if self.recovery is not None:
                self.target.activate(self.recovery)
                self.recovery.set(True)
            self.power.cycle()
            if self.loader is not None:
                self.target.activate(self.loader)
                self.loader.load(self._provision_image(image))
            else:
                # images/flash/tegraflash.sh provisions the bundle's boot
                # image itself (with smarter-flash --image-only).
                self.target.activate(self.flashscript)
                self.flashscript.flash(args=[image, self._image("provisioning")])
            if self.recovery is not None:
                self.recovery.set(False)
            self.power.off()
        elif type(self.power).__name__ == "QEMUDriver":
            # QEMUDriver boots `disk` from the images section: point it at a
            # provisioned copy, so the pristine image stays as built.
            # The command line is built on activation: rebuild it.
            provisioned = self._provision_image(image)
            self.target.deactivate(self.power)
            self.target.env.config.data.setdefault("images", {})[
                "gateway-provisioned"] = provisioned
            self.power.disk = "gateway-provisioned"
            self.target.activate(self.power)
        else:
            raise StrategyError(
                "no flashing driver bound: an environment needs an SD mux, a USB "
                "loader, a flash script, or QEMUDriver")

    @never_retry
    def transition(self, status):
        if not isinstance(status, Status):
            status = Status[status]
        if status == Status.unknown:
            raise StrategyError(f"can not transition to {status}")
        if status == self.status:
            return
        if status == Status.off:
            self.target.deactivate(self.console)
            self.target.activate(self.power)
            self.power.off()
        elif status == Status.flashed:
            self.transition(Status.off)
            self._flash()
        elif status == Status.uboot:
            if self.uboot is None:
                raise StrategyError("this board does not boot through U-Boot")
            if self.status != Status.flashed:
                self.transition(Status.flashed)
            self.target.activate(self.console)
            self.power.cycle()
            self.target.activate(self.uboot)
        elif status == Status.shell:
            if self.uboot is not None:
                self.transition(Status.uboot)
                self.uboot.boot("")
                self.uboot.await_boot()
            else:
                if self.status != Status.flashed:
                    self.transition(Status.flashed)
                self.target.activate(self.console)
                self.power.cycle()
            self.target.activate(self.shell)
            self.shell.run(self.ready_command, timeout=300)
        else:
            raise StrategyError(f"no transition from {self.status} to {status}")
        self.status = status

    # -- a booted gateway that reboots -------------------------------------

    def _boot_to_shell(self, ready, timeout, boots=1):
        """From a board that is starting (power on, or a reboot under way) to a logged-in
        shell; the disk as it is. The boot loader boots by itself, as in the field: stopping
        its countdown races it on a loaded machine. Each boot is known by the kernel's banner;
        after the last, the shell driver logs in (and, with `ready`, waits for the boot to
        finish: the ready_command)."""
        for _ in range(boots):
            self.console.expect(self.kernel_banner, timeout=timeout)
        self.target.activate(self.shell)
        self.status = Status.shell
        if ready:
            self.shell.run(self.ready_command, timeout=300)

    def _drop_shell(self):
        self.target.deactivate(self.shell)
        if self.uboot is not None:
            self.target.deactivate(self.uboot)

    @never_retry
    def reboot(self, ready=True, timeout=900, boots=1):
        """Reboot from the shell (`systemctl reboot`) and log in again once it is back;
        `ready` also waits for the boot to finish (the strategy's ready_command). `boots` > 1
        lets the gateway boot by itself that many times before the one logged into (a health
        gate rejecting the new slot reboots into the old one: boots=2)."""
        self.transition(Status.shell)
        self.console.sendline("systemctl reboot")
        self.await_reboot(ready, timeout, boots)

    @never_retry
    def await_reboot(self, ready=True, timeout=900, boots=1):
        """The gateway is rebooting or about to reboot by itself: wait for it to come back
        (after `boots` boots) and log in again."""
        self._drop_shell()
        self._boot_to_shell(ready, timeout, boots)

    @never_retry
    def power_cut(self, ready=True, timeout=900):
        """Cut the power (QEMU: the process quits without telling the guest) and power on
        again, then log in: the disk as the cut left it, no flashing."""
        self._drop_shell()
        self.power.off()
        self.power.on()
        self._boot_to_shell(ready, timeout)

    @never_retry
    def force(self, status):
        """Take the state as given (a gateway already booted, say)."""
        if not isinstance(status, Status):
            status = Status[status]
        if status == Status.off:
            self.target.activate(self.power)
        elif status == Status.uboot and self.uboot is not None:
            self.target.activate(self.uboot)
        elif status == Status.shell:
            self.target.activate(self.shell)
        else:
            raise StrategyError(f"can not force state {status}")
        self.status = status
