#!/usr/bin/env python3
"""Print two variables for yocto/check through one tinfoil connection (run
inside `kas shell`, i.e. with bitbake's environment):

    PACKAGES=<PACKAGES of smarter-workspace>
    IMAGE_INSTALL=<IMAGE_INSTALL of smarter-gateway-image>
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
