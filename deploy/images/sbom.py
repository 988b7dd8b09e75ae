"""SPDX 2.3 (JSON) software bills of materials for the images build.py writes.

Each image gets one document, stored in the image at SBOM_PATH. It names:
  - the image itself (the described package, purpose CONTAINER),
  - every regular file in the image with its SHA-1 and SHA-256 (the SBOM itself excepted),
  - the Debian binary package each shared library and the loader came from (dpkg's database on
    the build host: name, version, architecture, source package, purl pkg:deb/debian/...),
  - the workspace package the binary was built from, and the crates (with their declared
    licenses, from `cargo metadata`) of its dependency graph for
    the image's target, from `cargo tree --workspace` (the release build, cross/build-release.sh,
    builds the whole workspace, so features are unified as there): crates linked into the binary
    (STATIC_LINK from the binary) apart from those only run on the build host (build scripts'
    dependencies and proc-macros, BUILD_DEPENDENCY_OF the workspace package); crates.io crates
    carry the purl pkg:cargo/NAME@VERSION and Cargo.lock's SHA-256 of the .crate file.

Determinism: the only time is SOURCE_DATE_EPOCH; packages, files and relationships are sorted;
the documentNamespace ends in the SHA-256 of the document without it, so it changes exactly when
the content does. Nothing from the build host but dpkg's package data enters the document (no
paths, no host name, no user).

Only the Python standard library is used.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import datetime
import hashlib
import json
import re
import subprocess
import tomllib
import urllib.parse
from pathlib import Path

SBOM_PATH = "/usr/share/doc/smarter/sbom.spdx.json"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"
TOOL = "smarter-deploy-images-build.py"

_TREE_LINE = re.compile(r"^(\d+)(\S+) v(\S+)(.*)$")


# ---------------------------------------------------------------------------------------------
# Crates


@dataclasses.dataclass(frozen=True)
class Crate:
    name: str
    version: str
    source: str | None  # Cargo.lock's source; None for workspace (path) crates
    checksum: str | None  # Cargo.lock's sha256 of the .crate file
    license: str | None  # the crate's declared license as an SPDX expression
    linked: bool  # compiled for the target and linked into the binary (else: build host only)


def _cargo_tree(repo_root: Path, triple: str, edges: str) -> dict[str, set[tuple[str, str, bool]]]:
    """{workspace package: {(crate, version, reached through a proc-macro)}} for one target."""
    cmd = ["cargo", "tree", "--workspace", "-e", edges, "--target", triple, "--prefix", "depth",
           "--no-dedupe", "--locked", "--offline", "--charset", "ascii", "--color", "never"]
    try:
        out = subprocess.run(cmd, cwd=repo_root, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise SystemExit("sbom: cargo not found (needed to list the crates in each binary)") from None
    except subprocess.CalledProcessError as e:
        raise SystemExit(
            f"sbom: {' '.join(cmd)} failed (run `cargo fetch --locked` once if crates are missing):\n{e.stderr}"
        ) from None
    roots: dict[str, set[tuple[str, str, bool]]] = {}
    stack: list[bool] = []
    root = None
    for line in out.splitlines():
        m = _TREE_LINE.match(line)
        if not m:
            continue
        depth, name, version, rest = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        del stack[depth:]
        host_only = (stack[-1] if stack else False) or "(proc-macro)" in rest
        stack.append(host_only)
        if depth == 0:
            root = name
            roots.setdefault(root, set())
            continue
        roots[root].add((name, version, host_only))
    if not roots:
        raise SystemExit(f"sbom: {' '.join(cmd)} printed no workspace packages")
    return roots


@functools.cache
def crate_licenses(repo_root: Path) -> dict[tuple[str, str], str]:
    """{(crate, version): declared license} from `cargo metadata` (Cargo.toml's license field).

    The old "MIT/Apache-2.0" spelling becomes the SPDX expression "MIT OR Apache-2.0".
    """
    cmd = ["cargo", "metadata", "--format-version", "1", "--locked", "--offline", "--color", "never"]
    try:
        out = subprocess.run(cmd, cwd=repo_root, check=True, capture_output=True, text=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"sbom: {' '.join(cmd)} failed: {getattr(e, 'stderr', e)}") from None
    licenses = {}
    for pkg in json.loads(out)["packages"]:
        if pkg.get("license"):
            licenses[(pkg["name"], pkg["version"])] = re.sub(r"\s*/\s*", " OR ", pkg["license"].strip())
    return licenses


def crate_graph(repo_root: Path, triple: str) -> dict[str, list[Crate]]:
    """{workspace package: its crates (linked or build-only)} for one target triple."""
    lock = tomllib.loads((repo_root / "Cargo.lock").read_text())
    by_id = {(p["name"], p["version"]): p for p in lock["package"]}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        normal_f = pool.submit(_cargo_tree, repo_root, triple, "normal")
        with_build_f = pool.submit(_cargo_tree, repo_root, triple, "normal,build")
        normal, with_build = normal_f.result(), with_build_f.result()
    licenses = crate_licenses(repo_root)
    graph = {}
    for pkg, entries in with_build.items():
        linked = {(n, v) for n, v, host_only in normal.get(pkg, ()) if not host_only}
        crates = []
        for n, v in sorted({(n, v) for n, v, _ in entries}):
            locked = by_id.get((n, v))
            if locked is None:
                raise SystemExit(f"sbom: {n} {v} from cargo tree is not in Cargo.lock")
            source = locked.get("source")
            if source is not None and source != CRATES_IO:
                raise SystemExit(f"sbom: {n} {v} comes from {source}; only crates.io and path crates are handled")
            crates.append(Crate(n, v, source, locked.get("checksum"), licenses.get((n, v)), (n, v) in linked))
        graph[pkg] = crates
    return graph


# ---------------------------------------------------------------------------------------------
# Debian packages


@dataclasses.dataclass(frozen=True)
class DebPackage:
    name: str
    arch: str
    version: str
    source: str
    source_version: str


def _os_release() -> dict[str, str]:
    values = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value.strip().strip('"')
    return values


def distro() -> str:
    """The purl distro qualifier, e.g. debian-12."""
    rel = _os_release()
    if rel.get("ID") != "debian":
        raise SystemExit(f"sbom: the libraries come from dpkg's database; this host is {rel.get('ID')}, not Debian")
    return f"debian-{rel.get('VERSION_ID', 'unknown')}"


def _dpkg(*args: str) -> str:
    try:
        r = subprocess.run(["dpkg-query", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise SystemExit("sbom: dpkg-query not found (the libraries are taken from a Debian host)") from None
    return r.stdout


def debian_packages(files: list[Path]) -> dict[Path, DebPackage]:
    """The Debian package owning each host file, from dpkg's database.

    dpkg records a file under the path its package shipped it at; with merged /usr that may be
    /lib/... for a file found as /usr/lib/... (or the other way round), so both are asked.
    """
    candidates: dict[str, Path] = {}
    for f in files:
        s = str(f)
        candidates[s] = f
        if s.startswith("/usr/lib/"):
            candidates[s[len("/usr"):]] = f
        elif s.startswith("/lib/"):
            candidates["/usr" + s] = f
    owner: dict[Path, set[str]] = {}
    for line in _dpkg("-S", *sorted(candidates)).splitlines():
        if line.startswith("diversion ") or ": " not in line:
            continue
        pkgs, path = line.rsplit(": ", 1)
        if path in candidates:
            owner.setdefault(candidates[path], set()).update(p.strip() for p in pkgs.split(","))
    missing = [str(f) for f in files if f not in owner]
    if missing:
        raise SystemExit(f"sbom: no Debian package owns {', '.join(missing)}")
    names = sorted({p for ps in owner.values() for p in ps})
    fmt = "${binary:Package}\t${Package}\t${Architecture}\t${Version}\t${source:Package}\t${source:Version}\n"
    info = {}
    for line in _dpkg("-W", "-f", fmt, *names).splitlines():
        qualified, name, arch, version, source, source_version = line.split("\t")
        pkg = DebPackage(name, arch, version, source, source_version)
        info[qualified] = info[name] = pkg
    result = {}
    for f, pkgs in owner.items():
        # More than one owner happens only for shared directories; take a stable choice.
        chosen = sorted(pkgs)[0]
        if chosen not in info:
            raise SystemExit(f"sbom: dpkg-query knows no package {chosen} (owner of {f})")
        result[f] = info[chosen]
    return result


# ---------------------------------------------------------------------------------------------
# The document


def _id(kind: str, *parts: str) -> str:
    return "SPDXRef-" + kind + "-" + re.sub(r"[^A-Za-z0-9.-]", "-", "-".join(parts))


def deb_purl(pkg: DebPackage, distro_qualifier: str) -> str:
    version = urllib.parse.quote(pkg.version, safe="")
    return f"pkg:deb/debian/{pkg.name}@{version}?arch={pkg.arch}&distro={distro_qualifier}"


def cargo_purl(crate: Crate) -> str:
    return f"pkg:cargo/{crate.name}@{urllib.parse.quote(crate.version, safe='')}"


def _purl_ref(purl: str) -> list[dict]:
    return [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}]


@dataclasses.dataclass(frozen=True)
class ImageFile:
    path: str  # absolute path in the image
    data: bytes
    deb: DebPackage | None  # the Debian package it came from, if any


def document(
    *,
    image: str,
    binary: str,
    package: str,
    arch_name: str,
    platform: dict,
    files: list[ImageFile],
    crates: list[Crate],
    meta: dict,
    distro_qualifier: str,
) -> bytes:
    """The SPDX 2.3 JSON document for one image, as canonical bytes."""
    version = meta["version"]
    created = datetime.datetime.fromtimestamp(meta["epoch"], datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    image_id = "SPDXRef-Image"
    pkg_id = _id("Package", package)
    binary_path = f"/usr/bin/{binary}"
    qualifiers = {"arch": platform["architecture"], "repository_url": image, "tag": version}
    if "variant" in platform:
        qualifiers["variant"] = platform["variant"]
    image_purl = f"pkg:oci/{binary}?" + "&".join(f"{k}={v}" for k, v in sorted(qualifiers.items()))
    packages = [
        {
            "SPDXID": image_id,
            "name": image,
            "versionInfo": version,
            "primaryPackagePurpose": "CONTAINER",
            "supplier": "Organization: SMARTER project",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": True,
            "licenseDeclared": meta["license"],
            "externalRefs": _purl_ref(image_purl),
        },
        {
            "SPDXID": pkg_id,
            "name": package,
            "versionInfo": version,
            "primaryPackagePurpose": "APPLICATION",
            "supplier": "Organization: SMARTER project",
            "downloadLocation": f"git+{meta['source']}@{meta['revision']}",
            "filesAnalyzed": False,
            "licenseDeclared": meta["license"],
        },
    ]
    relationships = [("SPDXRef-DOCUMENT", "DESCRIBES", image_id), (image_id, "CONTAINS", pkg_id)]
    spdx_files = []
    binary_id = None
    debs: dict[str, DebPackage] = {}
    sha1s: dict[str, list[str]] = {image_id: []}
    for f in sorted(files, key=lambda f: f.path):
        fid = _id("File", f.path.strip("/"))
        is_elf = f.data[:4] == b"\x7fELF"
        spdx_files.append({
            "SPDXID": fid,
            "fileName": "." + f.path,
            "fileTypes": ["BINARY"] if is_elf else ["TEXT"],
            "checksums": [
                {"algorithm": "SHA1", "checksumValue": hashlib.sha1(f.data).hexdigest()},
                {"algorithm": "SHA256", "checksumValue": hashlib.sha256(f.data).hexdigest()},
            ],
        })
        relationships.append((image_id, "CONTAINS", fid))
        sha1s[image_id].append(spdx_files[-1]["checksums"][0]["checksumValue"])
        if f.path == binary_path:
            binary_id = fid
            relationships.append((fid, "GENERATED_FROM", pkg_id))
        if f.deb is not None:
            did = _id("Deb", f.deb.name, f.deb.arch)
            debs[did] = f.deb
            relationships.append((did, "CONTAINS", fid))
            sha1s.setdefault(did, []).append(spdx_files[-1]["checksums"][0]["checksumValue"])
    if binary_id is None:
        raise SystemExit(f"sbom: {binary_path} is not among the image's files")
    for did, deb in sorted(debs.items()):
        packages.append({
            "SPDXID": did,
            "name": deb.name,
            "versionInfo": deb.version,
            "primaryPackagePurpose": "LIBRARY",
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "sourceInfo": f"built package from: {deb.source} {deb.source_version}",
            # Analysed: the files of this package that the image holds, not the whole package.
            "filesAnalyzed": True,
            "packageVerificationCode": {"packageVerificationCodeValue": verification_code(sha1s[did])},
            "comment": "Only the files of this package that the image contains are listed.",
            "externalRefs": _purl_ref(deb_purl(deb, distro_qualifier)),
        })
        relationships.append((image_id, "CONTAINS", did))
        relationships.append((binary_id, "DYNAMIC_LINK", did))
    for crate in crates:
        cid = _id("Crate", crate.name, crate.version)
        entry = {
            "SPDXID": cid,
            "name": crate.name,
            "versionInfo": crate.version,
            "primaryPackagePurpose": "LIBRARY",
            "filesAnalyzed": False,
            "licenseDeclared": crate.license or "NOASSERTION",
        }
        if crate.source == CRATES_IO:
            entry["downloadLocation"] = f"https://crates.io/api/v1/crates/{crate.name}/{crate.version}/download"
            entry["externalRefs"] = _purl_ref(cargo_purl(crate))
            if crate.checksum:
                entry["checksums"] = [{"algorithm": "SHA256", "checksumValue": crate.checksum}]
        else:
            # A crate of this workspace (a path dependency), built from the same revision.
            entry["downloadLocation"] = f"git+{meta['source']}@{meta['revision']}"
            entry["supplier"] = "Organization: SMARTER project"
        packages.append(entry)
        if crate.linked:
            relationships.append((binary_id, "STATIC_LINK", cid))
        else:
            relationships.append((cid, "BUILD_DEPENDENCY_OF", pkg_id))
    packages[0]["packageVerificationCode"] = {
        "packageVerificationCodeValue": verification_code(sha1s[image_id]),
        # The SBOM is in the image but cannot list itself.
        "packageVerificationCodeExcludedFiles": ["." + SBOM_PATH],
    }
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{image}:{version} linux/{arch_name}",
        "creationInfo": {
            "created": created,
            "creators": ["Organization: SMARTER project", f"Tool: {TOOL}-{version}"],
        },
        "packages": sorted(packages, key=lambda p: p["SPDXID"]),
        "files": spdx_files,
        "relationships": [
            {"spdxElementId": a, "relationshipType": t, "relatedSpdxElement": b}
            for a, t, b in sorted(set(relationships))
        ],
    }
    doc["documentNamespace"] = namespace(doc, meta["source"], binary, version, arch_name)
    return canonical(doc)


def verification_code(sha1s: list[str]) -> str:
    """SPDX 2.3 clause 7.9: SHA-1 of the files' sorted SHA-1 hex digests, concatenated."""
    return hashlib.sha1("".join(sorted(sha1s)).encode()).hexdigest()


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def namespace(doc: dict, source: str, binary: str, version: str, arch_name: str) -> str:
    """documentNamespace: unique per content, derived from the document without it."""
    body = {k: v for k, v in doc.items() if k != "documentNamespace"}
    digest = hashlib.sha256(canonical(body)).hexdigest()
    return f"{source}/spdx/{binary}-{version}-{arch_name}-{digest}"
