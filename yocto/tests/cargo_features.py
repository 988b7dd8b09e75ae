#!/usr/bin/env python3
"""Check the cargo features the Yocto recipe builds the workspace with.

    yocto/tests/cargo_features.py

The recipe (SMARTER_CARGO_FEATURES in meta-smarter's smarter-rust.inc) turns
the workspace's default features off so that rusqlite links the image's
SQLite instead of its bundled copy, and names every other member's default
feature again. This fails when
  - rusqlite's bundled copy is switched on anywhere but smarter-debug's
    bundled-sqlite feature (then the recipe could not turn it off);
  - a member gains a default feature the recipe does not name (the image
    would silently lose it), or the recipe names one that no longer exists.
"""
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INC = ROOT / "meta-smarter/recipes-smarter/smarter-workspace/smarter-rust.inc"
SYSTEM_SQLITE_OFF = ("smarter-debug", "bundled-sqlite")


def main() -> int:
    errors = []
    root = tomllib.loads((ROOT / "Cargo.toml").read_text())
    if "bundled" in root["workspace"]["dependencies"]["rusqlite"].get("features", []):
        errors.append("Cargo.toml: the workspace's rusqlite dependency enables 'bundled' for every member")
    defaults = set()
    for member in root["workspace"]["members"]:
        manifest = tomllib.loads((ROOT / member / "Cargo.toml").read_text())
        name = manifest["package"]["name"]
        features = manifest.get("features", {})
        dep = manifest.get("dependencies", {}).get("rusqlite")
        if isinstance(dep, dict) and "bundled" in dep.get("features", []):
            errors.append(f"{member}/Cargo.toml: rusqlite with 'bundled' always on")
        for f in features.get("default", []):
            defaults.add((name, f))
        if name == SYSTEM_SQLITE_OFF[0] and features.get(SYSTEM_SQLITE_OFF[1]) != ["rusqlite/bundled"]:
            errors.append(f"{member}/Cargo.toml: no feature {SYSTEM_SQLITE_OFF[1]} = [\"rusqlite/bundled\"]")
    if SYSTEM_SQLITE_OFF not in defaults:
        errors.append(f"{SYSTEM_SQLITE_OFF[0]}: {SYSTEM_SQLITE_OFF[1]} is not a default feature")

    m = re.search(r'^SMARTER_CARGO_FEATURES\s*\??=\s*"([^"]*)"', INC.read_text(), re.M)
    if not m:
        errors.append(f"{INC.name}: no SMARTER_CARGO_FEATURES")
        flags = []
    else:
        flags = m.group(1).split()
    if "--no-default-features" not in flags:
        errors.append(f"{INC.name}: SMARTER_CARGO_FEATURES lacks --no-default-features")
    named = set()
    for i, f in enumerate(flags):
        if f == "--features" and i + 1 < len(flags):
            named |= {tuple(x.split("/", 1)) for x in flags[i + 1].split(",")}
    want = defaults - {SYSTEM_SQLITE_OFF}
    for pkg, f in sorted(want - named):
        errors.append(f"{INC.name}: default feature {pkg}/{f} is not named in SMARTER_CARGO_FEATURES")
    for pkg, f in sorted(named - want):
        errors.append(f"{INC.name}: SMARTER_CARGO_FEATURES names {pkg}/{f}, which is no member's default feature")
    for e in errors:
        print(f"cargo_features.py: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"cargo_features.py: the recipe builds with {' '.join(flags)}: every default feature but "
          f"{'/'.join(SYSTEM_SQLITE_OFF)} (rusqlite links the image's SQLite)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
