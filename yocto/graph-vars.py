#!/usr/bin/env python3
"""Print what yocto/check needs from the parsed recipes, through one tinfoil
connection (run inside `kas shell`, i.e. with bitbake's environment):

    PACKAGES=<PACKAGES of smarter-workspace>
    IMAGE_INSTALL=<IMAGE_INSTALL of smarter-gateway-image>
    APPENDS=<meta-smarter's appends that took effect: kernel-fragment
             k3s-agent-enabled rauc-conf>
"""
import os
import sys

sys.path.insert(0, os.path.join(os.environ["BITBAKEDIR"] if "BITBAKEDIR" in os.environ else
                                os.path.dirname(os.path.dirname(os.path.realpath(
                                    __import__("shutil").which("bitbake")))), "lib"))
import bb.tinfoil  # noqa: E402

with bb.tinfoil.Tinfoil() as tinfoil:
    tinfoil.prepare(config_only=False, quiet=2)
    for recipe, var in (("smarter-workspace", "PACKAGES"), ("smarter-gateway-image", "IMAGE_INSTALL")):
        d = tinfoil.parse_recipe(recipe)
        print(f"{var}={' '.join((d.getVar(var) or '').split())}")
    # The appends act only under the "smarter" distro override: check that
    # they do in the configuration being checked.
    took = []
    kernel = tinfoil.config_data.getVar("PREFERRED_PROVIDER_virtual/kernel")
    if kernel and "file://smarter-k3s.cfg" in (tinfoil.parse_recipe(kernel).getVar("SRC_URI") or "").split():
        took.append("kernel-fragment")
    if (tinfoil.parse_recipe("k3s").getVar("SYSTEMD_AUTO_ENABLE:k3s-agent") or "") == "enable":
        took.append("k3s-agent-enabled")
    if tinfoil.parse_recipe("rauc-conf").getVar("SMARTER_RAUC_DEVKEYS"):  # set by smarter_rauc_conf.bbclass
        took.append("rauc-conf")
    print(f"APPENDS={' '.join(took)}")
