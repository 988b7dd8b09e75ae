#!/usr/bin/env python3
"""Write yocto/include/mask-<line>.yml: BBMASK for every upstream recipe the
images of a release line do not use, so that yocto/check parses a few hundred
recipe files per machine instead of several thousand.

    yocto/check --unmasked --machines M1,M2 --write-graph DIR   # unmasked graphs
    yocto/mask.py --line wrynose --graphs DIR                   # write the mask

A recipe file (.bb) is kept when any machine's unmasked task graph of
smarter-gateway-image and smarter-gateway-bundle (task-depends.dot) names it;
a .bbappend is kept when it applies to a kept recipe, so no append that
changes a used recipe is lost. Everything else in the upstream layers is
masked. The mask cannot hide a missing dependency: a recipe that becomes
needed but is masked makes `bitbake -g` fail with "Nothing PROVIDES" (then
re-run the two commands above). meta-smarter itself is never masked.
"""
import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABEL = re.compile(r'^"[^"]+\.do_[a-z_]+" \[label="[^"]*\\n([^"\\]+\.bb)"')


def needed_files(graphs: list[Path]) -> set[str]:
    files = set()
    for g in graphs:
        with g.open() as f:
            for line in f:
                m = LABEL.match(line)
                if m:
                    files.add(str(Path(m.group(1)).resolve()))
    return files


def recipe_name(f: Path) -> str:
    return f.name.removesuffix(".bbappend").removesuffix(".bb").split("_")[0]


def append_matches(append: Path, recipe_names: set[str]) -> bool:
    stem = append.name.removesuffix(".bbappend")
    pat = re.compile("^" + re.escape(stem).replace("%", ".*") + "$")
    return any(pat.match(r) for r in recipe_names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line", required=True, choices=["wrynose", "scarthgap"])
    ap.add_argument("--graphs", type=Path, required=True, help="directory of <machine>.task-depends.dot")
    ap.add_argument("--cache", type=Path, default=Path("/var/cache/smarter/yocto"))
    ap.add_argument("--keep-name", action="append", default=[],
                    help="also keep recipe files of this name (the part before '_'); repeatable")
    ap.add_argument("--names-from", type=Path, action="append", default=[],
                    help="also keep recipe files whose name is used in these graphs (another release line)")
    ap.add_argument("--keep-repo", action="append", default=[],
                    help="do not mask this repository at all (while deriving a mask for a board layer)")
    args = ap.parse_args()

    graphs = sorted(args.graphs.glob("*.task-depends.dot"))
    if not graphs:
        print(f"mask.py: no *.task-depends.dot in {args.graphs}", file=sys.stderr)
        return 2
    need = needed_files(graphs)
    work = (args.cache / f"work-{args.line}").resolve()
    if not work.is_dir():
        print(f"mask.py: {work} does not exist (run yocto/check first)", file=sys.stderr)
        return 2
    seed = set(args.keep_name)
    for g in args.names_from:
        seed |= {recipe_name(Path(f)) for f in needed_files(sorted(g.glob("*.task-depends.dot")))}
    kept_names = set()

    dir_masks: dict[str, list[str]] = {}
    file_masks: dict[str, list[str]] = {}
    kept = masked = 0
    repos = {}
    for repo in sorted(p for p in work.iterdir() if p.is_dir() and p.name != "bitbake"):
        by_dir: dict[Path, list[Path]] = {}
        for f in sorted(list(repo.rglob("*.bb")) + list(repo.rglob("*.bbappend"))):
            if ".git" not in f.relative_to(repo).parts:
                by_dir.setdefault(f.parent, []).append(f)
        repos[repo] = by_dir
    # Recipes kept (file stems such as busybox_1.37.0), over all layers, so
    # that appends in one layer to recipes of another are judged correctly.
    for repo, by_dir in repos.items():
        for files in by_dir.values():
            for f in files:
                if f.suffix == ".bb" and (repo.name in args.keep_repo or str(f.resolve()) in need
                                          or recipe_name(f) in seed):
                    kept_names.add(f.name.removesuffix(".bb"))
    for repo, by_dir in repos.items():
        for d, files in by_dir.items():
            entries = []
            for f in files:
                if repo.name in args.keep_repo and f.suffix == ".bb":
                    keep = True
                elif f.suffix == ".bb":
                    keep = f.name.removesuffix(".bb") in kept_names
                else:
                    keep = append_matches(f, kept_names)
                kept += keep
                masked += not keep
                entries.append((f, keep))
            rel = d.relative_to(repo).as_posix()
            if not any(k for _, k in entries):
                dir_masks.setdefault(repo.name, []).append("" if rel == "." else re.escape(rel))
            else:
                for f, k in entries:
                    if not k:
                        file_masks.setdefault(repo.name, []).append(re.escape(f.relative_to(repo).as_posix()))

    out = [
        "# Generated by: yocto/mask.py " + " ".join(a if a.startswith("--") else a for a in sys.argv[1:]),
        f"# Do not edit. Masks every upstream",
        f"# recipe file that no {args.line} machine's smarter-gateway-image or",
        "# smarter-gateway-bundle graph uses (kept: %d recipe and append files; masked: %d)." % (kept, masked),
        "# Used by yocto/check only; builds with the machine kas files parse everything.",
        "header:",
        "  version: 14",
        "local_conf_header:",
        "  zz-mask: |",
    ]
    for repo in sorted(set(dir_masks) | set(file_masks)):
        dirs = sorted(d for d in dir_masks.get(repo, []) if d)
        if dirs:
            out.append(f'    BBMASK += "/{re.escape(repo)}/(?:{"|".join(dirs)})/[^/]+\\.bb(?:append)?$"')
        if "" in dir_masks.get(repo, []):
            out.append(f'    BBMASK += "/{re.escape(repo)}/[^/]+\\.bb(?:append)?$"')
        files = sorted(file_masks.get(repo, []))
        if files:
            out.append(f'    BBMASK += "/{re.escape(repo)}/(?:{"|".join(files)})$"')
    target = HERE / "include" / f"mask-{args.line}.yml"
    target.write_text("\n".join(out) + "\n")
    print(f"mask.py: wrote {target.relative_to(HERE.parent)}: {kept} kept, {masked} masked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
