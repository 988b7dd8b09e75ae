#!/usr/bin/env python3
"""Print every recipe file bitbake's task data needs for the given targets
(run inside `kas shell`, i.e. with bitbake's environment), one per line:

    python3 yocto/closure.py OUTPUT [TARGET...]   (default targets:
                                                smarter-gateway-image smarter-gateway-bundle)

This is more than the task graph that `bitbake -g` writes: bitbake resolves
the providers of every task of every recipe it pulls in (e.g. the image's
SDK tasks and their nativesdk dependencies) before it prunes the run queue
to what the targets' build tasks reach, and fails on a missing provider for
any of them. yocto/mask.py keeps exactly these files (and their appends).
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(shutil.which("bitbake")))),
                                "lib"))
import bb.event  # noqa: E402
import bb.tinfoil  # noqa: E402

output = sys.argv[1]
targets = sys.argv[2:] or ["smarter-gateway-image", "smarter-gateway-bundle"]
with bb.tinfoil.Tinfoil() as tinfoil:
    tinfoil.prepare(config_only=False, quiet=2)
    tinfoil.set_event_mask(["bb.event.TargetsTreeGenerated", "bb.command.CommandCompleted",
                            "bb.command.CommandFailed", "bb.command.CommandExit"])
    # The same task data `bitbake -g` builds (every task of every recipe,
    # incomplete providers allowed), before the run queue prunes it.
    tinfoil.run_command("generateTargetsTree", None, targets)
    tree = None
    while True:
        ev = tinfoil.wait_event(1)
        if ev is None:
            continue
        if isinstance(ev, bb.event.TargetsTreeGenerated):
            tree = ev._model
        elif isinstance(ev, (bb.command.CommandCompleted, bb.command.CommandFailed, bb.command.CommandExit)):
            break
    if tree is None:
        sys.exit("closure.py: bitbake sent no dependency tree")
    files = set()
    for info in tree["pn"].values():
        # virtual:native:/path/x.bb, mc:name:/path/x.bb -> /path/x.bb
        files.add(info["filename"][info["filename"].index("/"):])
    with open(output, "w") as f:
        f.write("".join(f"{x}\n" for x in sorted(files)))
