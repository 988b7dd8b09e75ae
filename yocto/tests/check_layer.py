#!/usr/bin/env python3
"""The rules of oe-core's yocto-check-layer that need no world build, for
meta-smarter (a distro layer):

  - test_readme: a non-empty README (which here refers to other READMEs, so
    yocto-check-layer skips its maintainer / patch / e-mail checks);
  - test_security: a non-empty SECURITY file in the layer or at the top of
    the repository;
  - test_patches_upstream_status: every .patch has an Upstream-Status;
  - test_layerseries_compat: LAYERSERIES_COMPAT for every collection;
  - test_distro_defines_distros / test_distro_no_set_distros: the layer has
    a distro configuration and its layer.conf sets neither DISTRO nor
    MACHINE;
  - for test_signatures (adding the layer must not change any other
    recipe's task signatures): every statement of every .bbappend only
    takes effect under the "smarter" distro override, i.e. it assigns a
    SMARTER_* variable, assigns with a :smarter override, or inherits a
    class only when DISTROOVERRIDES holds "smarter". The real test compares
    `bitbake -S none world` signatures with and without the layer, which
    needs full world parses of every layer: not run here.

    yocto/tests/check_layer.py [LAYER_DIR]
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def statements(text: str) -> list[str]:
    """Logical lines without comments, continuation lines and shell/python bodies."""
    out, depth, buf = [], 0, ""
    for line in text.splitlines():
        if depth:
            depth += line.count("{") - line.count("}")
            continue
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\")
        if line.endswith("\\"):
            continue
        if re.match(r"^\s*(python\s+)?[\w:${}.-]*\s*\(\)\s*\{", buf):
            out.append(buf.split("(")[0].strip() + "()")
            depth = buf.count("{") - buf.count("}")
        else:
            out.append(buf.strip())
        buf = ""
    return out


def main() -> int:
    layer = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "meta-smarter"
    errors = []
    readmes = sorted(layer.glob("[Rr][Ee][Aa][Dd][Mm][Ee]*"))
    if not readmes or not readmes[0].read_text().strip():
        errors.append("test_readme: no non-empty README in the layer")
    else:
        data = readmes[0].read_text()
        if not re.search("README", data, re.I) and not (
                "maintainer" in data.lower() and "patch" in data.lower() and re.search(r"[^@]+@[^@]+", data)):
            errors.append("test_readme: README lacks maintainer, patch and e-mail information")
    security = [p for d in (layer, ROOT) for p in sorted(d.glob("SECURITY*"))]
    if not security or security[0].stat().st_size == 0:
        errors.append("test_security: no non-empty SECURITY file in the layer or at the top of the repository")
    for patch in sorted(layer.rglob("*.patch")):
        if not re.search(r"^Upstream-Status: (Pending|Submitted|Accepted|Backport|Denied|Inactive-Upstream|"
                         r"Inappropriate)", patch.read_text(errors="replace"), re.M):
            errors.append(f"test_patches_upstream_status: {patch.relative_to(layer)} has no Upstream-Status")
    conf = (layer / "conf/layer.conf").read_text()
    for coll in re.findall(r'^BBFILE_COLLECTIONS\s*\+=\s*"([^"]*)"', conf, re.M):
        for c in coll.split():
            if not re.search(rf'^LAYERSERIES_COMPAT_{re.escape(c)}\s*=\s*"\S', conf, re.M):
                errors.append(f"test_layerseries_compat: no LAYERSERIES_COMPAT_{c}")
    if not list((layer / "conf/distro").glob("*.conf")):
        errors.append("test_distro_defines_distros: no conf/distro/*.conf")
    for var in ("DISTRO", "MACHINE"):
        if re.search(rf"^{var}\s*\??\??[:.+]?=", conf, re.M):
            errors.append(f"test_distro_no_set_distros: layer.conf sets {var}")
    appends = sorted(layer.rglob("*.bbappend"))
    for append in appends:
        for st in statements(append.read_text()):
            name = re.split(r"\s*(\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=)", st, maxsplit=1)[0].strip()
            if st.startswith(("inherit ", "inherit_defer ")):
                ok = "DISTROOVERRIDES" in st and "'smarter'" in st
            elif name.endswith("()"):
                ok = False
            else:
                ok = name.startswith("SMARTER_") or "smarter" in name.split(":")[1:]
            if not ok:
                errors.append(f"test_signatures: {append.relative_to(layer)}: '{st[:70]}' changes the recipe "
                              "without the smarter distro override")
    for e in errors:
        print(f"check_layer.py: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"check_layer.py: {layer.name} passes yocto-check-layer's README, SECURITY, patch, "
          f"LAYERSERIES_COMPAT and distro rules; its {len(appends)} appends act only under the smarter "
          "distro override (the world-signature tests are not run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
