#!/bin/sh
# Prepare a gateway to join a SMARTER k3s cluster: write the k3s agent config, the join token
# and SMARTER's air-gap images (imported by k3s at its next start, so the gateway never pulls
# SMARTER over its uplink). Idempotent: running it again changes nothing that is already right.
#
#   sudo deploy/k3s/install-gateway.sh --server https://k3s.example.com:6443 \
#        --token-file ./node-token [--images out/images/airgap] [--device-rules rpi4] \
#        [--model rpi4] [--debug] [--arch arm64] [--root /]
#
# Then install or restart k3s as an agent (the script prints the exact command).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
server= token_file= images="$here/../../out/images/airgap" rules=enabled model=unknown debug=no
arch= root=/

die() { echo "install-gateway: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --server) server=${2:?}; shift 2 ;;
        --token-file) token_file=${2:?}; shift 2 ;;
        --images) images=${2:?}; shift 2 ;;
        --device-rules) rules=${2:?}; shift 2 ;;
        --model) model=${2:?}; shift 2 ;;
        --debug) debug=yes; shift ;;
        --arch) arch=${2:?}; shift 2 ;;
        --root) root=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$server" in https://*) ;; *) die "--server https://HOST:PORT is required" ;; esac
[ -r "$token_file" ] || die "--token-file must name a readable file (the server's node-token)"
case "$rules" in enabled|rpi4|coral|xavier) ;; *) die "--device-rules must be enabled, rpi4, coral or xavier" ;; esac
case "$model" in *[!A-Za-z0-9._-]*|'') die "--model must be a label value" ;; esac
if [ -z "$arch" ]; then
    case "$(uname -m)" in
        aarch64|arm64) arch=arm64 ;;
        armv7l|armv8l) arch=armv7 ;;
        x86_64|amd64) arch=amd64 ;;
        *) die "unsupported machine $(uname -m); pass --arch" ;;
    esac
fi

etc="$root/etc/rancher/k3s"
image_dir="$root/var/lib/rancher/k3s/agent/images"
mkdir -p "$etc" "$image_dir"
chmod 0755 "$etc" "$image_dir"

# Write $2 from stdin only if it differs, atomically, with mode $1.
put() {
    tmp="$2.smarter.$$"
    cat > "$tmp"
    chmod "$1" "$tmp"
    if [ -f "$2" ] && cmp -s "$tmp" "$2"; then rm -f "$tmp"; echo "unchanged $2"; else mv -f "$tmp" "$2"; echo "wrote     $2"; fi
}

put 0600 "$etc/smarter-token" < "$token_file"

debug_line='  # - smarter.debug=enabled'
[ "$debug" = yes ] && debug_line='  - smarter.debug=enabled'
sed -e "s|^server: .*|server: $server|" \
    -e "s|^  - smarter.nodemodel=.*|  - smarter.nodemodel=$model|" \
    -e "s|^  - smarter-device-manager=.*|  - smarter-device-manager=$rules|" \
    -e "s|^  # - smarter.debug=enabled.*|$debug_line|" \
    "$here/agent/config.yaml" | put 0600 "$etc/config.yaml"

bundle="$images/smarter-images-$arch.tar"
[ -f "$bundle" ] || die "no air-gap bundle $bundle (build it with deploy/images/build.py)"
put 0644 "$image_dir/smarter-images-$arch.tar" < "$bundle"

if command -v k3s >/dev/null 2>&1 && [ "$root" = / ]; then
    echo "next: systemctl restart k3s-agent"
else
    echo "next: install k3s as an agent, e.g. with the k3s install script: INSTALL_K3S_EXEC=agent (it reads $etc/config.yaml)"
fi
