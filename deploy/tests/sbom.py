#!/usr/bin/env python3
"""Check the SPDX SBOM inside every image build.py wrote.

    sbom.py [--images out/images] [--self-test]

For each image (service x architecture) in the OCI layout: the SBOM is at
/usr/share/doc/smarter/sbom.spdx.json; it parses and the SPDX project's own validator
(spdx-tools, pinned in requirements.txt) finds nothing wrong; it is SPDX 2.3, created at the
build's SOURCE_DATE_EPOCH, with the documentNamespace derived from its content; it lists exactly
the regular files the image holds, with their real SHA-1/SHA-256, and the image package's
verification code matches them; every shared library is contained in a Debian package with a
pkg:deb/debian purl of the image's architecture, libc.so.6 in libc6 at the version dpkg has
installed on this host; the binary links the crates its service must have (tokio for all, the
service's own key crates), none that belong to another service, no dev-only or proc-macro crate,
and every crates.io crate carries its purl, Cargo.lock's checksum and a declared license.

--self-test breaks one SBOM in memory in ways the check must catch, and fails unless each is caught.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tomllib
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SBOM_PATH = "usr/share/doc/smarter/sbom.spdx.json"
DEB_ARCH = {"amd64": "amd64", "arm64": "arm64", "arm": "armhf"}

# Crates each binary must link (STATIC_LINK), and crates it must not: another service's key
# crates, a dev-only dependency (tempfile), proc-macros (compiled for the build host).
# The release build is one `cargo build --workspace`, so smarter-common is compiled once with the
# union of its features: its netlink client (netlink-packet-route, for smarter-cni and
# smarter-dns) and its Docker client (bollard and hyper, for smarter-dns and the debug agent) are
# in every binary's link, and the SBOMs say so. What stays one service's own is checked below.
COMMON = {"tokio", "libc", "smarter-common", "netlink-packet-route", "bollard"}
MUST_LINK = {
    "smarter-dns": COMMON | {"hickory-proto", "tonic"},
    "smarter-cni": COMMON,
    # Its own HTTP/2 server (smarter-h2), not tonic: tonic is a test-only dependency there.
    "smarter-device-manager": COMMON | {"udev", "smarter-h2", "prost"},
    "smarter-debug-agent": COMMON | {"russh"},
    "smarter-comms": COMMON | {"russh"},
    # The OS update agent: D-Bus to RAUC and logind, HTTPS downloads, the bundle's SHA-256.
    "smarter-update": COMMON | {"zbus", "ureq", "rustls", "sha2"},
}
NEVER_LINKED = {"tempfile", "serde_derive", "syn", "proc-macro2", "windows-sys"}
# Exceptions that cargo tree shows for the target: zvariant (zbus) has a normal dependency on
# zvariant_utils, which has normal dependencies on syn and proc-macro2, so their rlibs are linked.
LINKED_ANYWAY = {"smarter-update": {"syn", "proc-macro2"}}
UPDATE_ONLY = {"zbus", "ureq"}
MUST_NOT_LINK = {
    "smarter-dns": {"udev", "russh", "smarter-h2"} | UPDATE_ONLY,
    "smarter-cni": {"udev", "russh", "hickory-proto", "tonic", "smarter-h2"} | UPDATE_ONLY,
    "smarter-device-manager": {"russh", "hickory-proto", "tonic"} | UPDATE_ONLY,
    "smarter-debug-agent": {"udev", "hickory-proto", "smarter-h2"} | UPDATE_ONLY,
    "smarter-comms": {"udev", "hickory-proto", "smarter-h2"} | UPDATE_ONLY,
    "smarter-update": {"udev", "russh", "hickory-proto", "tonic", "smarter-h2"},
}


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def images(layout: Path):
    """Yield (service, platform, {path: bytes} of regular files, SBOM's layer index)."""
    index = json.loads((layout / "index.json").read_text())
    for top in index["manifests"]:
        service = top["annotations"]["org.opencontainers.image.ref.name"].split(":", 1)[0]
        for m in json.loads(blob(layout, top["digest"]))["manifests"]:
            manifest = json.loads(blob(layout, m["digest"]))
            files, sbom_layer = {}, None
            for i, layer in enumerate(manifest["layers"]):
                with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layout, layer["digest"])))) as tar:
                    for member in tar.getmembers():
                        if member.isfile():
                            files[member.name] = tar.extractfile(member).read()
                            if member.name == SBOM_PATH:
                                sbom_layer = i
            yield service, m["platform"], files, sbom_layer


def dpkg_version(package: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def check(doc: dict, service: str, platform: dict, files: dict[str, bytes], epoch: int,
          lock: dict[tuple[str, str], dict]) -> list[str]:
    errors: list[str] = []
    err = errors.append
    if doc.get("spdxVersion") != "SPDX-2.3":
        err(f"spdxVersion is {doc.get('spdxVersion')}, not SPDX-2.3")
    want_created = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if doc.get("creationInfo", {}).get("created") != want_created:
        err(f"created {doc.get('creationInfo', {}).get('created')} is not SOURCE_DATE_EPOCH ({want_created})")
    digest = content_digest(doc)
    ns = str(doc.get("documentNamespace", ""))
    if f"/{service}-" not in ns or not ns.endswith(f"-{_arch_name(platform)}-{digest}"):
        err(f"documentNamespace {doc.get('documentNamespace')} is not derived from the content ({digest})")

    packages = {p["SPDXID"]: p for p in doc.get("packages", [])}
    spdx_files = {f["SPDXID"]: f for f in doc.get("files", [])}
    rels = [(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in doc.get("relationships", [])]

    # Files: exactly the image's regular files, with their real checksums.
    listed = {f["fileName"].removeprefix("./"): f for f in spdx_files.values()}
    actual = {p: d for p, d in files.items() if p != SBOM_PATH}
    for p in sorted(set(actual) - set(listed)):
        err(f"file {p} in the image is not in the SBOM")
    for p in sorted(set(listed) - set(actual)):
        err(f"SBOM lists {p}, which is not in the image")
    for p in sorted(set(actual) & set(listed)):
        sums = {c["algorithm"]: c["checksumValue"] for c in listed[p].get("checksums", [])}
        if sums.get("SHA256") != hashlib.sha256(actual[p]).hexdigest() or sums.get("SHA1") != hashlib.sha1(
                actual[p]).hexdigest():
            err(f"checksums of {p} do not match the image's file")
    image = packages.get("SPDXRef-Image", {})
    code = hashlib.sha1("".join(sorted(hashlib.sha1(d).hexdigest() for d in actual.values())).encode()).hexdigest()
    if image.get("packageVerificationCode", {}).get("packageVerificationCodeValue") != code:
        err("the image package's verification code does not match the image's files")
    if ("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image") not in rels:
        err("the document does not DESCRIBE the image")

    # Libraries: each from a Debian package of this architecture; libc from libc6 as installed.
    deb_arch = DEB_ARCH[platform["architecture"]]
    container_of = {b: a for a, t, b in rels if t == "CONTAINS" and a.startswith("SPDXRef-Deb-")}
    file_id = {f["fileName"].removeprefix("./"): i for i, f in spdx_files.items()}
    for p, data in sorted(actual.items()):
        if not p.startswith("lib/"):
            continue
        deb = packages.get(container_of.get(file_id.get(p, "")), None)
        if deb is None:
            err(f"{p}: no Debian package contains it")
            continue
        purl = next((r["referenceLocator"] for r in deb.get("externalRefs", []) if r["referenceType"] == "purl"), "")
        want = (f"pkg:deb/debian/{deb['name']}@{urllib.parse.quote(deb.get('versionInfo', ''), safe='')}"
                f"?arch={deb_arch}&distro=")
        if not purl.startswith(want):
            err(f"{p}: package purl {purl!r} is not {want}...")
        if p.endswith("/libc.so.6"):
            if deb["name"] != "libc6":
                err(f"{p}: from {deb['name']}, expected libc6")
            elif deb.get("versionInfo") != dpkg_version(f"libc6:{deb_arch}"):
                err(f"{p}: libc6 {deb.get('versionInfo')} but dpkg has {dpkg_version(f'libc6:{deb_arch}')!r}")
    if f"lib/{_multiarch(platform)}/libc.so.6" not in actual:
        err("the image ships no glibc (libc.so.6)")

    # Crates.
    binary_id = file_id.get(f"usr/bin/{service}")
    linked = {packages[b]["name"]: packages[b] for a, t, b in rels if a == binary_id and t == "STATIC_LINK"
              and b in packages}
    # A service added to build.py but not here still gets every other check.
    for name in sorted(MUST_LINK.get(service, set()) - set(linked)):
        err(f"crate {name} is not listed as linked into {service}")
    never = (MUST_NOT_LINK.get(service, set()) | NEVER_LINKED) - LINKED_ANYWAY.get(service, set())
    for name in sorted(never & set(linked)):
        err(f"crate {name} is listed as linked into {service} but is not in its graph for the target")
    for pkg in packages.values():
        if not pkg["SPDXID"].startswith("SPDXRef-Crate-"):
            continue
        locked = lock.get((pkg["name"], pkg.get("versionInfo")))
        if locked is None:
            err(f"crate {pkg['name']} {pkg.get('versionInfo')} is not in Cargo.lock")
            continue
        if locked.get("source") is None:
            continue  # a workspace crate
        purl = next((r["referenceLocator"] for r in pkg.get("externalRefs", []) if r["referenceType"] == "purl"), "")
        if purl != f"pkg:cargo/{pkg['name']}@{urllib.parse.quote(pkg['versionInfo'], safe='')}":
            err(f"crate {pkg['name']}: purl {purl!r}")
        if pkg.get("licenseDeclared") in (None, "", "NOASSERTION"):
            err(f"crate {pkg['name']} {pkg['versionInfo']}: no declared license")
        sums = {c["algorithm"]: c["checksumValue"] for c in pkg.get("checksums", [])}
        if sums.get("SHA256") != locked.get("checksum"):
            err(f"crate {pkg['name']} {pkg['versionInfo']}: checksum is not Cargo.lock's")
    return errors


def content_digest(doc: dict) -> str:
    """SHA-256 of the document without its namespace, serialised as build.py does."""
    body = {k: v for k, v in doc.items() if k != "documentNamespace"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode() + b"\n").hexdigest()


def _arch_name(platform: dict) -> str:
    return {"amd64": "amd64", "arm64": "arm64", "arm": "armv7"}[platform["architecture"]]


def _multiarch(platform: dict) -> str:
    return {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu", "arm": "arm-linux-gnueabihf"}[
        platform["architecture"]]


def validate_spdx(data: bytes) -> list[str]:
    """The SPDX project's validator (spdx-tools); a missing validator is a failure, not a skip."""
    try:
        from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
        from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    except ImportError as e:
        return [f"spdx-tools is not installed ({e}); deploy/test.sh installs deploy/tests/requirements.txt"]
    try:
        document = JsonLikeDictParser().parse(json.loads(data))
    except Exception as e:  # the parser raises its own SPDXParsingError
        return [f"spdx-tools cannot parse it: {e}"]
    return [m.validation_message for m in validate_full_spdx_document(document, "SPDX-2.3")]


def _drop_crate(doc: dict, name: str) -> None:
    ids = {p["SPDXID"] for p in doc["packages"] if p["name"] == name}
    doc["packages"] = [p for p in doc["packages"] if p["SPDXID"] not in ids]
    doc["relationships"] = [r for r in doc["relationships"] if r["relatedSpdxElement"] not in ids]


def _libc6(doc: dict) -> dict:
    return next(p for p in doc["packages"] if p["name"] == "libc6")


def _link(doc: dict, name: str) -> None:
    binary = next(f["SPDXID"] for f in doc["files"] if f["fileName"].startswith("./usr/bin/"))
    doc["packages"].append({"SPDXID": f"SPDXRef-Crate-{name}-0", "name": name, "versionInfo": "0"})
    doc["relationships"].append({"spdxElementId": binary, "relationshipType": "STATIC_LINK",
                                 "relatedSpdxElement": f"SPDXRef-Crate-{name}-0"})


MUTATIONS = {
    "tokio missing": lambda d: _drop_crate(d, "tokio"),
    "libc6 version not what dpkg has": lambda d: (_libc6(d).update(versionInfo="2.0-1"), _libc6(d)[
        "externalRefs"][0].update(referenceLocator="pkg:deb/debian/libc6@2.0-1?arch=arm64&distro=debian-12")),
    "libc6 purl of another arch": lambda d: _libc6(d)["externalRefs"][0].update(
        referenceLocator="pkg:deb/debian/libc6@2.0?arch=s390x"),
    "library without package": lambda d: d.update(relationships=[
        r for r in d["relationships"] if not r["spdxElementId"].startswith("SPDXRef-Deb-")]),
    "file missing": lambda d: d.update(files=d["files"][1:]),
    "file checksum wrong": lambda d: d["files"][0]["checksums"][1].update(checksumValue="0" * 64),
    "created is not SOURCE_DATE_EPOCH": lambda d: d["creationInfo"].update(created="2030-01-01T00:00:00Z"),
    "namespace not from content": lambda d: d["packages"][0].update(comment="changed after hashing"),
    "proc-macro listed as linked": lambda d: _link(d, "serde_derive"),
    "another service's crate linked": lambda d: _link(d, "russh"),
    "crate without license": lambda d: next(p for p in d["packages"] if p["name"] == "tokio").update(
        licenseDeclared="NOASSERTION"),
    "crate checksum not Cargo.lock's": lambda d: next(
        p for p in d["packages"] if p["name"] == "tokio")["checksums"][0].update(checksumValue="1" * 64),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(ROOT / "out" / "images"))
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    out = Path(args.images)
    summary = json.loads((out / "images.json").read_text())
    epoch = summary["source_date_epoch"]
    lock = {(p["name"], p["version"]): p for p in tomllib.loads((ROOT / "Cargo.lock").read_text())["package"]}
    failed = passed = 0
    seen = set()
    sample = None
    for service, platform, files, sbom_layer in images(out / "oci"):
        where = f"{service} {_arch_name(platform)}"
        seen.add((service, _arch_name(platform)))
        if SBOM_PATH not in files:
            print(f"FAIL  {where}: no /{SBOM_PATH} in the image")
            failed += 1
            continue
        try:
            doc = json.loads(files[SBOM_PATH])
        except json.JSONDecodeError as e:
            print(f"FAIL  {where}: SBOM is not JSON: {e}")
            failed += 1
            continue
        errors = validate_spdx(files[SBOM_PATH]) + check(doc, service, platform, files, epoch, lock)
        if sbom_layer != 1:
            errors.append("the SBOM must be in the service layer (the base layer is shared)")
        if errors:
            failed += 1
            for e in errors:
                print(f"FAIL  {where}: {e}")
        else:
            passed += 1
            n_crates = sum(1 for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-Crate-"))
            debs = sorted(f"{p['name']} {p['versionInfo']}" for p in doc["packages"] if p["SPDXID"].startswith(
                "SPDXRef-Deb-"))
            print(f"PASS  {where}: SPDX 2.3 valid, {len(doc['files'])} files, {n_crates} crates, "
                  f"Debian: {', '.join(debs)}")
        if service == "smarter-dns" and platform["architecture"] == "arm64":
            sample = (doc, service, platform, files)
    want = {(s, a) for s in summary["images"] for a in summary["images"][s]["arches"]}
    for s, a in sorted(want - seen):
        print(f"FAIL  {s} {a}: image not found in the OCI layout")
        failed += 1
    print(f"sbom: {passed} passed, {failed} failed")
    if args.self_test:
        if sample is None:
            print("FAIL  self-test: no smarter-dns arm64 image to mutate")
            return 1
        for what, mutate in MUTATIONS.items():
            broken = copy.deepcopy(sample[0])
            mutate(broken)
            if what != "namespace not from content":
                # Re-derive the namespace so the check aimed at the mutation must catch it.
                prefix = broken["documentNamespace"].rsplit("-", 1)[0]
                broken["documentNamespace"] = f"{prefix}-{content_digest(broken)}"
            found = check(broken, *sample[1:], epoch, lock)
            print(f"{'ok' if found else 'MISSED'}: {what}" + (f" -> {found[0]}" if found else ""))
            failed += not found
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
