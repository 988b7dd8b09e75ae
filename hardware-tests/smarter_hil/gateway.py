"""Helpers the tests share for changing a booted gateway for the length of a test, and for
serving something to it from the test host.

The gateway's root file system is read-only (A/B slots), so a test never edits a config file
in place: `override_config` writes a changed copy under /run (tmpfs), bind-mounts it over the
original and reloads the unit (SIGHUP through `systemctl reload`); on the way out it unmounts
the copy and reloads again, so the gateway is as it was whatever the test did.
"""

import contextlib
import shlex
import socket

RUN_DIR = "/run/smarter-hil"


def free_port(kind=socket.SOCK_STREAM):
    """A port on the test host's loopback that is free now (for a server the test starts)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def override_config(gateway, path, edits, unit, files=None):
    """For the `with` block, `path` on the gateway reads as itself with `edits` applied and
    `unit` has reloaded it.

    `edits` maps a top-level TOML key to the value text that replaces its line (`key = value`);
    a key the file does not set is an error rather than a silent no-op. `files` maps extra
    file names to contents, written under /run/smarter-hil/ first (e.g. a resolv.conf the new
    config names).
    """
    copy = f"{RUN_DIR}/{path.strip('/').replace('/', '_')}"
    script = [f"mkdir -p {RUN_DIR}"]
    for name, content in (files or {}).items():
        script.append(f"printf %s {shlex.quote(content)} > {RUN_DIR}/{name}")
    for key in edits:
        script.append(f"{{ grep -q {shlex.quote(f'^{key} = ')} {path} || "
                      f"{{ echo '{path} sets no {key}' >&2; false; }}; }}")
    sed = " ".join(f"-e {shlex.quote(f's|^{key} = .*|{key} = {value}|')}" for key, value in edits.items())
    script.append(f"sed {sed} {path} > {copy}")
    script.append(f"mount --bind {copy} {path}")
    script.append(f"systemctl reload {unit}")
    gateway.run_check(" && ".join(script))
    try:
        yield copy
    finally:
        gateway.run(f"umount {path}; systemctl reload {unit}")
