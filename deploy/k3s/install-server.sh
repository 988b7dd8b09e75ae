#!/bin/sh
# Prepare the cloud master: write the k3s server config and put SMARTER's manifests where k3s
# applies them by itself (its auto-deploy directory). Idempotent.
#
#   sudo deploy/k3s/install-server.sh --tls-san k3s.example.com [--comms] [--root /]
#
# --comms also deploys smarter-comms (remote debugging). Then install or restart k3s as a server.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
manifests="$here/../kubernetes"
san= comms=no root=/
die() { echo "install-server: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --tls-san) san=${2:?}; shift 2 ;;
        --comms) comms=yes; shift ;;
        --root) root=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$san" in ''|*[!A-Za-z0-9.:-]*) die "--tls-san NAME_OR_IP is required" ;; esac

etc="$root/etc/rancher/k3s"
auto="$root/var/lib/rancher/k3s/server/manifests"
mkdir -p "$etc" "$auto"

put() {
    tmp="$2.smarter.$$"
    cat > "$tmp"
    chmod "$1" "$tmp"
    if [ -f "$2" ] && cmp -s "$tmp" "$2"; then rm -f "$tmp"; echo "unchanged $2"; else mv -f "$tmp" "$2"; echo "wrote     $2"; fi
}

sed -e "s|^  - k3s.example.com$|  - $san|" "$here/server/config.yaml" | put 0600 "$etc/config.yaml"
# k3s retries until the namespace exists; the smarter- prefix keeps our files together.
put 0644 "$auto/smarter-00-namespace.yaml" < "$manifests/namespace.yaml"
for f in device-manager cni dns debug-agent; do
    put 0644 "$auto/smarter-10-$f.yaml" < "$manifests/gateway/$f.yaml"
done
for f in rpi4 coral xavier; do
    put 0644 "$auto/smarter-20-device-rules-$f.yaml" < "$manifests/device-rules/$f.yaml"
done
if [ "$comms" = yes ]; then
    put 0644 "$auto/smarter-30-comms.yaml" < "$manifests/cloud/comms.yaml"
fi
if command -v k3s >/dev/null 2>&1 && [ "$root" = / ]; then
    echo "next: systemctl restart k3s"
else
    echo "next: install k3s as a server, e.g. with the k3s install script (it reads $etc/config.yaml)"
fi
