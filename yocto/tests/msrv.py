#!/usr/bin/env python3
"""Every crate in Cargo.lock must declare a rust-version the Yocto Rust builds.

    yocto/tests/msrv.py [--rust 1.94]

Reads `cargo metadata --locked` (the locked crate list, with each crate's
declared rust-version) and fails if any crate needs a newer Rust than the
oldest toolchain of the release lines: 1.94.0 (meta-rust-bin on scarthgap;
wrynose has 1.94.1). Crates that declare no rust-version are listed: for
them only a real build with that toolchain is proof.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ver(s: str) -> tuple:
    return tuple(int(x) for x in (s.split(".") + ["0", "0"])[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rust", default="1.94.0")
    args = ap.parse_args()
    meta = json.loads(subprocess.run(["cargo", "metadata", "--locked", "--format-version", "1", "--all-features"],
                                     cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    too_new, undeclared = [], []
    for p in meta["packages"]:
        rv = p.get("rust_version")
        if rv is None:
            undeclared.append(f"{p['name']} {p['version']}")
        elif ver(rv) > ver(args.rust):
            too_new.append(f"{p['name']} {p['version']} needs Rust {rv}")
    for t in too_new:
        print(f"msrv.py: {t} (> {args.rust})", file=sys.stderr)
    print(f"msrv.py: {len(meta['packages'])} packages, {len(too_new)} above {args.rust}, "
          f"{len(undeclared)} without a declared rust-version (unproven until a build with {args.rust})")
    return 1 if too_new else 0


if __name__ == "__main__":
    sys.exit(main())
