#!/bin/sh
# Test variant "services": the gateway's root file system with every byte of the four SMARTER
# services' binaries (device manager, CNI, DNS, debug agent) changed, each XORed with 0xA5: the
# worst case of a release that rebuilt only the services. The sizes stay, but runs of zeros,
# which mkfs.ext4 -d leaves as holes, become data, so later files move. The emulated suite
# streams it with RAUC's adaptive update to count the bytes that cross the link; it is never
# booted (the binaries do not run).
set -eu
echo "VARIANT=services" > "$1/etc/smarter-variant"
for b in device-manager cni dns debug-agent; do
    f=$1/usr/bin/smarter-$b
    [ -f "$f" ] || { echo "services.sh: $f missing" >&2; exit 1; }
    python3 - "$f" <<'PY'
import sys
path = sys.argv[1]
data = open(path, "rb").read()
open(path, "wb").write(data.translate(bytes(b ^ 0xA5 for b in range(256))))
PY
done
