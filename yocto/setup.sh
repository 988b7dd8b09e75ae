#!/usr/bin/env bash
# Host setup for yocto/check (Debian 12, as root): the packages bitbake's
# sanity checks want, the en_US.UTF-8 locale, an unprivileged user to run
# bitbake as (bitbake refuses root), git's safe.directory for repositories
# owned by someone else, and a venv (outside the checkout) with the pinned
# kas and oelint-adv from yocto/requirements.txt. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"

: "${SMARTER_YOCTO_CACHE:=/var/cache/smarter/yocto}"
: "${SMARTER_YOCTO_USER:=smarter-ci}"

if [ "$(id -u)" -ne 0 ]; then
    echo "yocto/setup.sh: must run as root (apt-get, useradd)" >&2
    exit 1
fi

APT_PACKAGES=(gawk wget git rsync diffstat unzip texinfo gcc build-essential chrpath socat cpio
    python3 python3-pip python3-venv python3-pexpect xz-utils debianutils iputils-ping
    python3-git python3-jinja2 python3-subunit zstd lz4 file locales libacl1)
# If another apt holds dpkg's lock, wait for it (up to 15 minutes) rather than fail.
# shellcheck source=../cross/apt.sh
. ../cross/apt.sh
SMARTER_APT_LOCK_TIMEOUT=900 smarter_apt_ensure "yocto setup" "${APT_PACKAGES[@]}"

if ! locale -a | grep -qi '^en_US\.utf-\?8$'; then
    sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen
    grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >>/etc/locale.gen
    locale-gen
fi

# Layer repositories and caches belong to root or another user: let every
# git on the machine read them (kas sets its own HOME, so only the system
# config counts).
for g in /etc/gitconfig /usr/local/etc/gitconfig; do
    if [ "$g" = /usr/local/etc/gitconfig ] && [ ! -x /usr/local/bin/git ]; then continue; fi
    mkdir -p "$(dirname "$g")"
    git config --file "$g" --get-all safe.directory 2>/dev/null | grep -qx '\*' ||
        git config --file "$g" --add safe.directory '*'
done

if ! id "$SMARTER_YOCTO_USER" >/dev/null 2>&1; then
    useradd --system --create-home --home-dir "$SMARTER_YOCTO_CACHE/home" \
        --shell /bin/bash "$SMARTER_YOCTO_USER"
fi
mkdir -p "$SMARTER_YOCTO_CACHE"
chown "$SMARTER_YOCTO_USER:" "$SMARTER_YOCTO_CACHE"

# The venv is keyed by the requirements file so a changed pin makes a new one.
req_hash=$(sha256sum requirements.txt | cut -c1-16)
venv="$SMARTER_YOCTO_CACHE/venv-$req_hash"
if [ ! -x "$venv/bin/kas" ] || [ ! -x "$venv/bin/oelint-adv" ]; then
    rm -rf "$venv"
    runuser -u "$SMARTER_YOCTO_USER" -- /usr/bin/python3 -m venv "$venv"
    runuser -u "$SMARTER_YOCTO_USER" -- "$venv/bin/pip" install -q --disable-pip-version-check \
        -r requirements.txt
fi
ln -sfn "$venv" "$SMARTER_YOCTO_CACHE/venv"
