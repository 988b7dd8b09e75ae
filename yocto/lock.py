#!/usr/bin/env python3
"""Write or check the kas lock files (<machine>.lock.yml) of yocto/.

Every repository a machine's kas file uses is pinned to one commit, given in a
tab-separated manifest with the columns line, name, upstream_url, branch,
commit (the format the pinned layer snapshots come with):

    yocto/lock.py --manifest MANIFEST.tsv          # rewrite the lock files
    yocto/lock.py --manifest MANIFEST.tsv --check  # fail if one differs

Without --manifest, --check verifies that each lock file pins every repository
its kas file names (with a 40-hex commit) and that the URL and branch in the
kas files agree between machines of one release line.
"""
import argparse
import csv
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MACHINES = {
    "raspberrypi4-64": "wrynose",
    "raspberrypi4": "wrynose",
    "qemuarm64": "wrynose",
    "jetson-xavier-nx-devkit": "scarthgap",
    "jetson-agx-xavier-devkit": "scarthgap",
    "coral-dev": "scarthgap",
}


def repos_of(kas_file: Path, seen=None) -> dict:
    """name -> (url, branch) for every repo with a url in kas_file and its includes.

    A small reader for the subset of YAML our kas files use (no PyYAML needed
    outside the venv)."""
    import yaml  # kas depends on PyYAML, so the venv has it

    seen = seen if seen is not None else set()
    out = {}
    data = yaml.safe_load(kas_file.read_text())
    for inc in data.get("header", {}).get("includes", []) or []:
        path = HERE.parent / inc
        if path not in seen:
            seen.add(path)
            out.update(repos_of(path, seen))
    for name, spec in (data.get("repos") or {}).items():
        if spec and spec.get("url"):
            out[name] = (spec["url"], str(spec.get("branch", "")))
    return out


def render(machine: str, pins: dict) -> str:
    lines = [
        f"# kas lock file for {machine}.yml: every layer repository at one commit.",
        "# Regenerate with yocto/lock.py --manifest FILE (see yocto/README.md).",
        "header:",
        "  version: 14",
        "overrides:",
        "  repos:",
    ]
    for name in sorted(pins):
        lines += [f"    {name}:", f"      commit: {pins[name]}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    manifest = {}
    if args.manifest:
        if not args.manifest.is_file():
            print(f"lock.py: manifest {args.manifest} not found", file=sys.stderr)
            return 2
        with args.manifest.open() as f:
            for row in csv.DictReader(f, delimiter="\t"):
                manifest[(row["line"], row["name"])] = row
    errors = []
    for machine, line in MACHINES.items():
        kas = HERE / f"{machine}.yml"
        lock = HERE / f"{machine}.lock.yml"
        repos = repos_of(kas)
        if manifest:
            pins = {}
            for name, (url, branch) in repos.items():
                row = manifest.get((line, name))
                if row is None:
                    errors.append(f"{kas.name}: repo {name} is not in the manifest for {line}")
                    continue
                if row["branch"] != branch:
                    errors.append(f"{kas.name}: repo {name} branch {branch!r}, manifest says {row['branch']!r}")
                if row["upstream_url"].rstrip("/").removesuffix(".git") != url.rstrip("/").removesuffix(".git"):
                    errors.append(f"{kas.name}: repo {name} url {url}, manifest says {row['upstream_url']}")
                pins[name] = row["commit"]
            text = render(machine, pins)
            if args.check:
                if not lock.is_file() or lock.read_text() != text:
                    errors.append(f"{lock.name}: differs from the manifest (run yocto/lock.py --manifest FILE)")
            else:
                lock.write_text(text)
        else:
            if not lock.is_file():
                errors.append(f"{lock.name}: missing")
                continue
            text = lock.read_text()
            pinned = dict(re.findall(r"^    (\S+):\n      commit: ([0-9a-f]{40})$", text, re.M))
            for name in repos:
                if name not in pinned:
                    errors.append(f"{lock.name}: repo {name} has no 40-hex commit")
            for name in pinned:
                if name not in repos:
                    errors.append(f"{lock.name}: pins {name}, which {kas.name} does not use")
    for e in errors:
        print(f"lock.py: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
