#!/usr/bin/env python3
"""Print the image size table (markdown) from build.py's images.json.

    sizes.py out/images/images.json

Download = the gzip-compressed layers a node pulls; the base layer (glibc, passwd) is shared by
every image of one architecture, so the gateway total counts it once. Disk = uncompressed.
"""

import json
import sys

ORIGINALS = {
    # Image the original SMARTER deployed for the same job (tag from its manifests). Their sizes
    # are not recorded here: no registry is reachable from the build machines to measure them.
    "smarter-device-manager": "ghcr.io/smarter-project/smarter-device-manager:v1.20.12",
    "smarter-cni": "ghcr.io/smarter-project/smarter-cni:v1.34.4",
    "smarter-dns": "ghcr.io/smarter-project/smarter-dns:v1.3.11",
    "smarter-debug-agent": "(none: new)",
    "smarter-comms": "(none: new)",
    "smarter-update": "(none: new; the OS update agent)",
}


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def main() -> int:
    data = json.load(open(sys.argv[1]))
    arches = ["amd64", "arm64", "armv7"]
    print(f"Images {data['version']} (revision {data['revision'][:12]}), download / on disk:\n")
    print("| image | " + " | ".join(arches) + " | original |")
    print("|---|" + "---|" * len(arches) + "---|")
    for name, entry in sorted(data["images"].items()):
        cells = []
        for a in arches:
            s = entry["arches"].get(a)
            cells.append(f"{mib(s['compressed_bytes'])} / {mib(s['uncompressed_bytes'])}" if s else "-")
        print(f"| {name} | " + " | ".join(cells) + f" | {ORIGINALS.get(name, '')} |")
    # Gateway total with the shared base layer counted once (what a new gateway downloads).
    totals = []
    for a in arches:
        gw = [e["arches"][a] for e in data["images"].values() if e["gateway"] and a in e["arches"]]
        if not gw:
            totals.append("-")
            continue
        bases = {s["base_layer_digest"]: s["base_layer_bytes"] for s in gw}
        totals.append(mib(sum(bases.values()) + sum(s["service_layer_bytes"] for s in gw)))
    print("| all gateway images (shared base once) | " + " | ".join(totals) + " | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
