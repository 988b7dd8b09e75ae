#!/usr/bin/env python3
"""Build SMARTER's container images bit-for-bit reproducibly, without pulling anything.

For every service binary and architecture it writes a minimal image: the binary, the shared
libraries it really links (read from the ELF DT_NEEDED entries, resolved recursively in the
Debian sysroot of that architecture), the ELF interpreter, and /etc/passwd + /etc/group. No
shell, no package manager.

Two layers per image:
  1. base:    glibc and the libraries every binary of this architecture links, plus passwd/group
              and empty mount points. Byte-identical across the services of one architecture, so
              a gateway stores and downloads it once.
  2. service: the binary, any library only it links (e.g. libudev for the device manager) and
              the image's SPDX 2.3 software bill of materials at /usr/share/doc/smarter/sbom.spdx.json
              (every file, the Debian packages the libraries came from, the crates in the binary;
              see sbom.py).

Outputs (under --out, default out/images):
  oci/                          one OCI image layout; index.json holds one multi-arch image index
                                per service, annotated org.opencontainers.image.ref.name=<name>:<version>
  <arch>/<name>.docker.tar      a docker-archive per service and architecture (`docker load`)
  airgap/smarter-images-<arch>.tar
                                one docker-archive per architecture with every gateway image, for
                                k3s to import at first boot (/var/lib/rancher/k3s/agent/images/)
  images.json                   names, digests and sizes (what the tests and docs read)

Determinism: entries sorted, mtime = SOURCE_DATE_EPOCH, uid/gid 0 with empty user/group names,
fixed modes, gzip without name or timestamp, JSON with sorted keys. Nothing from the build host
(paths, times, users) enters an image; the SBOM names the Debian packages (from dpkg's database)
and crates (from Cargo.lock and `cargo tree`) the files came from.

Only the Python standard library is used (plus sbom.py beside this file).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import sbom

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Arch:
    """One target architecture: the Rust triple, the OCI platform and the Debian multiarch dirs."""

    name: str  # short name used in file names: amd64, arm64, armv7
    triple: str
    oci_arch: str
    variant: str | None
    multiarch: str
    elf_machine: int
    elf_class: int  # 1 = 32-bit, 2 = 64-bit

    def lib_search_path(self) -> list[Path]:
        """Where the libraries of this architecture live on a Debian build host.

        Debian multiarch (libc6:<arch>, libudev1:<arch>) first, then the cross toolchain sysroot.
        """
        return [
            Path("/lib") / self.multiarch,
            Path("/usr/lib") / self.multiarch,
            Path("/usr") / self.multiarch / "lib",
        ]


ARCHES = {
    a.name: a
    for a in [
        Arch("amd64", "x86_64-unknown-linux-gnu", "amd64", None, "x86_64-linux-gnu", 62, 2),
        Arch("arm64", "aarch64-unknown-linux-gnu", "arm64", "v8", "aarch64-linux-gnu", 183, 2),
        Arch("armv7", "armv7-unknown-linux-gnueabihf", "arm", "v7", "arm-linux-gnueabihf", 40, 1),
    ]
}


@dataclasses.dataclass(frozen=True)
class Service:
    binary: str
    description: str
    user: str  # numeric uid:gid the image runs as by default
    gateway: bool  # shipped in the gateway air-gap bundle
    package: str = ""  # the workspace package the binary is built from, if not named like it

    @property
    def crate(self) -> str:
        return self.package or self.binary


# Users: the gateway services run as uid 0 with every capability dropped (device-manager, cni) or
# only the few they need (dns); they must own root-owned host directories (the kubelet plugin dir,
# /opt/cni/bin). The OS update agent (smarter-update agent) runs as uid 0 with every capability
# dropped: RAUC's and logind's D-Bus policies admit root on the host's system bus socket, and its
# hostPath data directory is root-owned. smarter-comms runs in the cloud as an unprivileged user.
# See docs/decisions/0051-image-users-and-capabilities.md.
SERVICES = [
    Service("smarter-device-manager", "Kubelet device plugin exposing host devices", "0:0", True),
    Service("smarter-cni", "CNI plugin and its installer", "0:0", True),
    Service("smarter-dns", "Local event-driven DNS for a gateway's apps", "0:0", True),
    Service("smarter-debug-agent", "Remote debug agent (gateway side)", "0:0", True, package="smarter-debug"),
    Service("smarter-update", "OS update agent: RAUC bundles over D-Bus, rollout by DaemonSet", "0:0", True),
    Service("smarter-comms", "Remote debug rendezvous (cloud side)", "65532:65532", False, package="smarter-debug"),
]

NONROOT_UID = 65532


# ---------------------------------------------------------------------------------------------
# ELF: just enough to read PT_INTERP, DT_NEEDED and the machine, for any of our architectures.


@dataclasses.dataclass
class ElfInfo:
    machine: int
    elf_class: int
    interp: str | None
    needed: list[str]


def read_elf(path: Path) -> ElfInfo:
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        raise SystemExit(f"{path}: not an ELF file")
    ei_class, ei_data = data[4], data[5]
    end = "<" if ei_data == 1 else ">"
    if ei_class == 2:
        (e_machine,) = struct.unpack_from(end + "H", data, 18)
        e_phoff, e_shoff = struct.unpack_from(end + "QQ", data, 32)
        e_phentsize, e_phnum = struct.unpack_from(end + "HH", data, 54)
        ph_fmt, dyn_fmt = end + "IIQQQQQQ", end + "qQ"
    else:
        (e_machine,) = struct.unpack_from(end + "H", data, 18)
        e_phoff, e_shoff = struct.unpack_from(end + "II", data, 28)
        e_phentsize, e_phnum = struct.unpack_from(end + "HH", data, 42)
        ph_fmt, dyn_fmt = end + "IIIIIIII", end + "iI"

    segments = []
    for i in range(e_phnum):
        fields = struct.unpack_from(ph_fmt, data, e_phoff + i * e_phentsize)
        if ei_class == 2:
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = fields
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _flags, _align = fields
        segments.append((p_type, p_offset, p_vaddr, p_filesz))

    interp = None
    dynamic = None
    loads = []
    for p_type, p_offset, p_vaddr, p_filesz in segments:
        if p_type == 3:  # PT_INTERP
            interp = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
        elif p_type == 1:  # PT_LOAD
            loads.append((p_offset, p_vaddr, p_filesz))

    def vaddr_to_offset(addr: int) -> int:
        for off, vaddr, size in loads:
            if vaddr <= addr < vaddr + size:
                return off + (addr - vaddr)
        raise SystemExit(f"{path}: address {addr:#x} outside every PT_LOAD segment")

    needed_offsets: list[int] = []
    strtab = None
    if dynamic is not None:
        off, size = dynamic
        entsize = struct.calcsize(dyn_fmt)
        for i in range(size // entsize):
            tag, val = struct.unpack_from(dyn_fmt, data, off + i * entsize)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                needed_offsets.append(val)
            elif tag == 5:  # DT_STRTAB
                strtab = vaddr_to_offset(val)
    needed = []
    if needed_offsets:
        if strtab is None:
            raise SystemExit(f"{path}: DT_NEEDED without DT_STRTAB")
        for n in needed_offsets:
            start = strtab + n
            needed.append(data[start : data.index(b"\0", start)].decode())
    return ElfInfo(e_machine, ei_class, interp, needed)


def resolve_libraries(binary: Path, arch: Arch) -> tuple[str | None, dict[str, Path]]:
    """Return the binary's interpreter and {soname: host file} for every library it needs."""
    info = read_elf(binary)
    if info.machine != arch.elf_machine or info.elf_class != arch.elf_class:
        raise SystemExit(f"{binary}: ELF machine {info.machine} is not {arch.name}")
    found: dict[str, Path] = {}
    queue = list(info.needed)
    while queue:
        soname = queue.pop(0)
        if soname in found:
            continue
        for directory in arch.lib_search_path():
            candidate = directory / soname
            if candidate.exists():
                real = candidate.resolve()
                lib = read_elf(real)
                if lib.machine != arch.elf_machine or lib.elf_class != arch.elf_class:
                    continue
                found[soname] = real
                queue.extend(lib.needed)
                break
        else:
            raise SystemExit(
                f"{binary}: library {soname} not found for {arch.name} in "
                + ", ".join(str(d) for d in arch.lib_search_path())
            )
    return info.interp, found


# ---------------------------------------------------------------------------------------------
# Deterministic layers.


@dataclasses.dataclass(frozen=True)
class Entry:
    path: str  # absolute path inside the image
    kind: str  # "dir", "file", "symlink"
    mode: int = 0o755
    data: bytes = b""
    target: str = ""


def parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def layer_tar(entries: list[Entry], mtime: int) -> bytes:
    """An uncompressed tar of entries, parents included, sorted by path, with fixed metadata."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        for p in parents(e.path):
            by_path.setdefault(p, Entry(p, "dir", 0o755))
        if e.path in by_path and by_path[e.path] != e:
            raise SystemExit(f"conflicting entries for {e.path}")
        by_path[e.path] = e
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(by_path):
            e = by_path[path]
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = e.mode
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.target
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Images.


@dataclasses.dataclass
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: object) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        d.update(extra)
        return d


@dataclasses.dataclass
class Image:
    service: Service
    arch: Arch
    config: Blob
    manifest: Blob
    layers_tar: list[bytes]  # uncompressed, for docker-archive
    layers_gz: list[Blob]


def passwd_entries() -> list[Entry]:
    passwd = f"root:x:0:0:root:/:/sbin/nologin\nnonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/:/sbin/nologin\n"
    group = f"root:x:0:\nnonroot:x:{NONROOT_UID}:\n"
    return [
        Entry("/etc/passwd", "file", 0o644, passwd.encode()),
        Entry("/etc/group", "file", 0o644, group.encode()),
        # Mount points that exist even on a read-only root filesystem.
        Entry("/etc/smarter", "dir", 0o755),
        Entry("/run", "dir", 0o755),
        Entry("/tmp", "dir", 0o1777),
        Entry("/var/lib/smarter", "dir", 0o755),
        # As on the host (FHS): clients that use the /var/run spelling find /run's sockets, e.g.
        # zbus's default system bus address unix:path=/var/run/dbus/system_bus_socket.
        Entry("/var/run", "symlink", 0o777, target="../run"),
    ]


def lib_entries(arch: Arch, interp: str | None, libs: dict[str, Path]) -> list[Entry]:
    entries = []
    libdir = f"/lib/{arch.multiarch}"
    for soname, host in sorted(libs.items()):
        entries.append(Entry(f"{libdir}/{soname}", "file", 0o755, host.read_bytes()))
    if interp:
        name = Path(interp).name
        if f"{libdir}/{name}" != interp:
            # Relative, so it resolves inside the image wherever its rootfs is unpacked.
            target = os.path.relpath(f"{libdir}/{name}", os.path.dirname(interp))
            entries.append(Entry(interp, "symlink", 0o777, target=target))
    return entries


def interp_host_path(arch: Arch, interp: str) -> Path:
    for directory in arch.lib_search_path():
        candidate = directory / Path(interp).name
        if candidate.exists():
            return candidate.resolve()
    raise SystemExit(f"interpreter {interp} for {arch.name} not found")


def build_arch(
    arch: Arch, bin_dir: Path, services: list[Service], meta: dict, epoch: int, repo: str, distro: str
) -> list[Image]:
    resolved = {}
    for svc in services:
        binary = bin_dir / arch.triple / svc.binary
        if not binary.is_file():
            raise SystemExit(f"missing binary {binary} (build release binaries first)")
        interp, libs = resolve_libraries(binary, arch)
        if interp:
            libs = dict(libs)
            libs[Path(interp).name] = interp_host_path(arch, interp)
        resolved[svc.binary] = (binary, interp, libs)

    # The base layer: libraries every service of this arch needs.
    common = set.intersection(*(set(libs) for _, _, libs in resolved.values()))
    interps = {interp for _, interp, _ in resolved.values()}
    if len(interps) != 1:
        raise SystemExit(f"{arch.name}: binaries disagree on the ELF interpreter: {interps}")
    (interp,) = interps
    any_libs = next(iter(resolved.values()))[2]
    base_libs = {s: any_libs[s] for s in common}
    base_entries = passwd_entries() + lib_entries(arch, interp, base_libs)
    base_tar = layer_tar(base_entries, epoch)
    base_gz = Blob("application/vnd.oci.image.layer.v1.tar+gzip", gzip_bytes(base_tar))

    created = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # Where each library in an image came from: its Debian package (for the SBOM).
    libdir = f"/lib/{arch.multiarch}"
    host_of = {f"{libdir}/{s}": p for _, _, libs in resolved.values() for s, p in libs.items()}
    debs = sbom.debian_packages(sorted(set(host_of.values())))
    crates = sbom.crate_graph(REPO_ROOT, arch.triple)
    images = []
    for svc in services:
        binary, _, libs = resolved[svc.binary]
        own_libs = {s: p for s, p in libs.items() if s not in common}
        entries = [Entry(f"/usr/bin/{svc.binary}", "file", 0o755, binary.read_bytes())]
        entries += lib_entries(arch, None, own_libs)
        if svc.crate not in crates:
            raise SystemExit(f"sbom: cargo tree shows no workspace package {svc.crate}")
        files = [
            sbom.ImageFile(e.path, e.data, debs[host_of[e.path]] if e.path in host_of else None)
            for e in base_entries + entries
            if e.kind == "file"
        ]
        platform = {"architecture": arch.oci_arch, "os": "linux"}
        if arch.variant:
            platform["variant"] = arch.variant
        doc = sbom.document(
            image=f"{repo}/{svc.binary}", binary=svc.binary, package=svc.crate, arch_name=arch.name,
            platform=platform, files=files, crates=crates[svc.crate], meta=meta, distro_qualifier=distro,
        )
        entries.append(Entry(sbom.SBOM_PATH, "file", 0o644, doc))
        svc_tar = layer_tar(entries, epoch)
        svc_gz = Blob("application/vnd.oci.image.layer.v1.tar+gzip", gzip_bytes(svc_tar))
        labels = {
            "org.opencontainers.image.title": svc.binary,
            "org.opencontainers.image.description": svc.description,
            "org.opencontainers.image.source": meta["source"],
            "org.opencontainers.image.revision": meta["revision"],
            "org.opencontainers.image.version": meta["version"],
            "org.opencontainers.image.created": created,
            "org.opencontainers.image.licenses": meta["license"],
        }
        config = {
            **platform,
            "created": created,
            "config": {
                "User": svc.user,
                "Entrypoint": [f"/usr/bin/{svc.binary}"],
                "Env": ["PATH=/usr/bin"],
                "WorkingDir": "/",
                "Labels": labels,
            },
            "rootfs": {"type": "layers", "diff_ids": [sha256(base_tar), sha256(svc_tar)]},
            "history": [
                {"created": created, "created_by": "smarter deploy/images/build.py: base"},
                {"created": created, "created_by": f"smarter deploy/images/build.py: {svc.binary}"},
            ],
        }
        config_blob = Blob("application/vnd.oci.image.config.v1+json", canonical_json(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_blob.descriptor(),
            "layers": [base_gz.descriptor(), svc_gz.descriptor()],
            "annotations": labels,
        }
        manifest_blob = Blob("application/vnd.oci.image.manifest.v1+json", canonical_json(manifest))
        images.append(Image(svc, arch, config_blob, manifest_blob, [base_tar, svc_tar], [base_gz, svc_gz]))
    return images


# ---------------------------------------------------------------------------------------------
# Writers.


def write_blob(layout: Path, blob: Blob | bytes) -> None:
    data = blob.data if isinstance(blob, Blob) else blob
    path = layout / "blobs" / "sha256" / sha256(data).split(":", 1)[1]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_oci_layout(layout: Path, images: list[Image], meta: dict) -> dict[str, str]:
    """Write one OCI layout; return {image name: digest of its multi-arch index}."""
    if layout.exists():
        shutil.rmtree(layout)
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    top = []
    digests = {}
    for svc in sorted({i.service.binary for i in images}):
        per_arch = [i for i in images if i.service.binary == svc]
        manifests = []
        for img in per_arch:
            write_blob(layout, img.config)
            write_blob(layout, img.manifest)
            for layer in img.layers_gz:
                write_blob(layout, layer)
            platform = {"architecture": img.arch.oci_arch, "os": "linux"}
            if img.arch.variant:
                platform["variant"] = img.arch.variant
            manifests.append(img.manifest.descriptor(platform=platform))
        ref = f"{svc}:{meta['version']}"
        index = Blob(
            "application/vnd.oci.image.index.v1+json",
            canonical_json(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": manifests,
                    "annotations": {"org.opencontainers.image.ref.name": ref},
                }
            ),
        )
        write_blob(layout, index)
        digests[svc] = index.digest
        top.append(index.descriptor(annotations={"org.opencontainers.image.ref.name": ref}))
    (layout / "index.json").write_bytes(
        canonical_json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": top})
    )
    return digests


def write_docker_archive(path: Path, images: list[Image], repo: str, version: str, epoch: int) -> None:
    """A docker-archive (the `docker save` format: manifest.json + config + uncompressed layers)."""
    files: dict[str, bytes] = {}
    manifest = []
    for img in images:
        cfg_name = f"blobs/sha256/{img.config.digest.split(':', 1)[1]}"
        files[cfg_name] = img.config.data
        layers = []
        for tar in img.layers_tar:
            name = f"blobs/sha256/{hashlib.sha256(tar).hexdigest()}"
            files[name] = tar
            layers.append(name)
        manifest.append(
            {"Config": cfg_name, "RepoTags": [f"{repo}/{img.service.binary}:{version}"], "Layers": layers}
        )
    files["manifest.json"] = json.dumps(manifest, separators=(",", ":")).encode()
    entries = [Entry("/" + name, "file", 0o644, data) for name, data in files.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(layer_tar(entries, epoch))
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def metadata() -> dict:
    ws = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())["workspace"]["package"]
    revision = os.environ.get("SMARTER_REVISION") or git("rev-parse", "HEAD")
    epoch = os.environ.get("SOURCE_DATE_EPOCH") or git("log", "-1", "--format=%ct")
    return {
        "version": ws["version"],
        "source": ws["repository"],
        "license": ws["license"],
        "revision": revision,
        "epoch": int(epoch),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.environ.get("SMARTER_BIN_DIR", str(REPO_ROOT / "out/release")),
                    help="release binaries as <dir>/<triple>/<binary> (env SMARTER_BIN_DIR; default out/release)")
    ap.add_argument("--out", default=os.environ.get("SMARTER_IMAGES_DIR", str(REPO_ROOT / "out/images")))
    ap.add_argument("--arch", action="append", choices=sorted(ARCHES), help="repeatable; default: all")
    ap.add_argument("--repo", default=os.environ.get("SMARTER_IMAGE_REPO", "ghcr.io/smarter-project"),
                    help="image name prefix used in docker-archives and the manifests")
    args = ap.parse_args()

    meta = metadata()
    bin_dir = Path(args.bin_dir).resolve()
    out = Path(args.out).resolve()
    arches = [ARCHES[a] for a in (args.arch or ["amd64", "arm64", "armv7"])]

    images: list[Image] = []
    for arch in arches:
        images += build_arch(arch, bin_dir, SERVICES, meta, meta["epoch"], args.repo, sbom.distro())

    out.mkdir(parents=True, exist_ok=True)
    index_digests = write_oci_layout(out / "oci", images, meta)
    summary = {
        "version": meta["version"],
        "revision": meta["revision"],
        "source_date_epoch": meta["epoch"],
        "repo": args.repo,
        "images": {},
    }
    for svc in SERVICES:
        entry = {"index_digest": index_digests[svc.binary], "user": svc.user, "gateway": svc.gateway, "arches": {}}
        for img in (i for i in images if i.service == svc):
            archive = out / img.arch.name / f"{svc.binary}.docker.tar"
            write_docker_archive(archive, [img], args.repo, meta["version"], meta["epoch"])
            entry["arches"][img.arch.name] = {
                "manifest_digest": img.manifest.digest,
                "config_digest": img.config.digest,
                "compressed_bytes": sum(len(layer.data) for layer in img.layers_gz),
                "base_layer_digest": img.layers_gz[0].digest,
                "base_layer_bytes": len(img.layers_gz[0].data),
                "service_layer_bytes": len(img.layers_gz[1].data),
                "uncompressed_bytes": sum(len(t) for t in img.layers_tar),
                "binary_bytes": len((bin_dir / img.arch.triple / svc.binary).read_bytes()),
                "docker_archive": str(archive.relative_to(out)),
            }
        summary["images"][svc.binary] = entry
    for arch in arches:
        gateway = [i for i in images if i.arch == arch and i.service.gateway]
        write_docker_archive(out / "airgap" / f"smarter-images-{arch.name}.tar", gateway, args.repo,
                             meta["version"], meta["epoch"])
    (out / "images.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    for svc, entry in summary["images"].items():
        print(f"{svc}:{meta['version']} {entry['index_digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
