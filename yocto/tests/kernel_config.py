#!/usr/bin/env python3
"""Compare meta-smarter's kernel fragment with the options k3s's
contrib/util/check-config.sh lists as "Generally Necessary".

    yocto/tests/kernel_config.py [--reference FILE | --check-config SCRIPT] [--fragment FILE]
    yocto/tests/kernel_config.py --write-reference K3S_CHECKOUT

Every option of the reference must be set to y or m in
meta-smarter/recipes-kernel/linux/files/smarter-k3s.cfg; the options the
fragment sets beyond it are printed (what it deliberately adds). Also checks
that the Raspberry Pi command line switches the memory cgroup on.

The reference is the committed list yocto/tests/k3s-check-config.txt (option
names and the k3s commit they were read from): the k3s source is fetched at
build time and is not available offline, so the list is data in this
repository. --write-reference regenerates it from a k3s checkout (the
section between 'Generally Necessary' and 'Optional Features', without the
checks for kernels older than 4.8). --check-config compares with a
check-config.sh directly (k3s's, or moby's from Debian's docker.io package).
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAGMENT = ROOT / "meta-smarter/recipes-kernel/linux/files/smarter-k3s.cfg"
CMDLINE = ROOT / "meta-smarter/dynamic-layers/raspberrypi/recipes-bsp/bootfiles/rpi-cmdline.bbappend"
REFERENCE = ROOT / "yocto/tests/k3s-check-config.txt"
K3S_SCRIPT = "contrib/util/check-config.sh"


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
    # flags=( ... ) arrays (moby), flags="..." strings (k3s) and check_flags
    # calls not guarded by an old-kernel test
    for m in re.finditer(r"flags=(?:\((.*?)\)|\"(.*?)\")\s*\n[^\n]*check_flags", section, re.S):
        body = "\n".join(l.split("#", 1)[0] for l in (m.group(1) or m.group(2)).splitlines())
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


def read_reference(path: Path) -> list[str]:
    return [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]


def write_reference(checkout: Path) -> int:
    script = checkout / K3S_SCRIPT
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    flags = necessary_flags(script.read_text())
    REFERENCE.write_text(
        "# Kernel options k3s's contrib/util/check-config.sh lists as \"Generally\n"
        "# Necessary\" (kernels >= 4.8), without the CONFIG_ prefix; compared with\n"
        "# meta-smarter's kernel fragment by yocto/tests/kernel_config.py.\n"
        "# Regenerate from a k3s checkout: yocto/tests/kernel_config.py --write-reference DIR\n"
        "# source: https://github.com/k3s-io/k3s " + K3S_SCRIPT + "\n"
        f"# commit: {commit}\n" + "".join(f"{f}\n" for f in flags))
    print(f"kernel_config.py: wrote {REFERENCE.relative_to(ROOT)}: {len(flags)} options from k3s {commit}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, default=REFERENCE, help="list of option names (default: %(default)s)")
    ap.add_argument("--check-config", type=Path, help="compare with this check-config.sh instead")
    ap.add_argument("--fragment", type=Path, default=FRAGMENT)
    ap.add_argument("--write-reference", type=Path, metavar="K3S_CHECKOUT",
                    help="regenerate the reference list from a k3s git checkout")
    args = ap.parse_args()
    if args.write_reference:
        return write_reference(args.write_reference)
    if args.check_config:
        source = str(args.check_config)
        flags = necessary_flags(args.check_config.read_text())
    else:
        source = str(args.reference.relative_to(ROOT) if args.reference.is_relative_to(ROOT) else args.reference)
        commit = re.search(r"^# commit: (\S+)", args.reference.read_text(), re.M)
        source += f" (k3s {commit.group(1)[:12]})" if commit else ""
        flags = read_reference(args.reference)
    if len(flags) < 10:
        print(f"kernel_config.py: only {len(flags)} flags read from {source}: {flags}", file=sys.stderr)
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
    extra = [o.removeprefix("CONFIG_") for o, v in opts.items() if v in ("y", "m") and o.removeprefix("CONFIG_") not in flags]
    print(f"kernel_config.py: all {len(flags)} generally necessary options of {source} are in "
          f"{args.fragment.name}: {' '.join(flags)}")
    print(f"kernel_config.py: the fragment also sets: {' '.join(extra)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
