#!/usr/bin/env python3
"""Compare meta-smarter's kernel fragment with a container check-config.sh.

    yocto/tests/kernel_config.py [--check-config FILE] [--fragment FILE]

Every option check-config.sh lists as "Generally Necessary" (the flags
passed to check_flags in that section, for kernels >= 5.3) must be set to
y or m in meta-smarter/recipes-kernel/linux/files/smarter-k3s.cfg. Also
checks that the Raspberry Pi command line switches the memory cgroup on.

The reference is k3s's contrib/util/check-config.sh when given; the pinned
k3s source is fetched from the network at build time, so offline the
default is the moby (Docker) check-config.sh that Debian's docker.io package
installs, the script k3s's is derived from (see yocto/README.md for what that
leaves unproven). With CI or SMARTER_REQUIRE_PEERS set, a missing reference
is a failure, not a skip.
"""
import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAGMENT = ROOT / "meta-smarter/recipes-kernel/linux/files/smarter-k3s.cfg"
CMDLINE = ROOT / "meta-smarter/dynamic-layers/raspberrypi/recipes-bsp/bootfiles/rpi-cmdline.bbappend"
DEFAULT_REF = Path("/usr/share/docker.io/contrib/check-config.sh")


def expand_braces(word: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", word)
    if not m:
        return [word]
    out = []
    for alt in m.group(1).split(","):
        out += expand_braces(word[: m.start()] + alt + word[m.end():])
    return out


def necessary_flags(script: str) -> list[str]:
    """The flags check_flags is called with between 'Generally Necessary' and 'Optional Features'."""
    start = script.find("Generally Necessary")
    end = script.find("Optional Features", start)
    if start < 0 or end < 0:
        raise SystemExit("kernel_config.py: no 'Generally Necessary' section in the reference script")
    section = script[start:end]
    flags = []
    # flags=( ... ) arrays and check_flags calls not guarded by an old-kernel test
    for m in re.finditer(r"flags=\((.*?)\)\s*\n\s*check_flags", section, re.S):
        body = "\n".join(l.split("#", 1)[0] for l in m.group(1).splitlines())
        for w in body.split():
            flags += expand_braces(w)
    for line in section.splitlines():
        s = line.strip()
        if s.startswith("check_flags ") and "${" not in s:
            flags += [w for part in s.split()[1:] for w in expand_braces(part)]
    # check_flags lines inside 'if [ kernelMajor -lt ... ]' apply to old kernels only
    old = set()
    for m in re.finditer(r"if \[ \"\$kernelMajor\" -lt[^\n]*\n\s*check_flags ([^\n]+)", section):
        old.update(m.group(1).split())
    return [f for f in dict.fromkeys(flags) if f not in old]


def fragment_options(text: str) -> dict[str, str]:
    opts = {}
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_[A-Z0-9_]+)=(.*)$", line.strip())
        if m:
            opts[m.group(1)] = m.group(2)
    return opts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-config", type=Path, default=DEFAULT_REF)
    ap.add_argument("--fragment", type=Path, default=FRAGMENT)
    args = ap.parse_args()
    strict = bool(os.environ.get("CI") or os.environ.get("SMARTER_REQUIRE_PEERS"))
    if not args.check_config.is_file():
        msg = f"kernel_config.py: reference {args.check_config} not found (Debian package docker.io)"
        if strict:
            print(msg, file=sys.stderr)
            return 1
        print("SKIP: " + msg)
        return 0
    flags = necessary_flags(args.check_config.read_text())
    if len(flags) < 10:
        print(f"kernel_config.py: only {len(flags)} flags parsed from {args.check_config}: {flags}", file=sys.stderr)
        return 1
    opts = fragment_options(args.fragment.read_text())
    missing = [f for f in flags if opts.get(f"CONFIG_{f}") not in ("y", "m")]
    errors = [f"CONFIG_{f} is not =y or =m in {args.fragment.name}" for f in missing]
    cmdline = CMDLINE.read_text()
    for switch in ("cgroup_enable=memory", "cgroup_memory=1"):
        if switch not in cmdline:
            errors.append(f"{CMDLINE.name} does not add {switch} to the Pi's command line")
    for e in errors:
        print(f"kernel_config.py: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"kernel_config.py: all {len(flags)} generally necessary options of {args.check_config} are in "
          f"{args.fragment.relative_to(ROOT)}: {' '.join(flags)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
