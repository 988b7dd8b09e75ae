# Sourced by cross/setup-debian.sh and yocto/setup.sh: install the Debian packages dpkg does not
# list as installed, with one `apt-get update` and one `apt-get install` (noninteractive, no
# recommends), and nothing at all when every package is present, so the callers stay idempotent
# and quick.
#
#   smarter_apt_ensure LABEL PACKAGE...
#
# LABEL starts the "LABEL: installing ..." line. SMARTER_APT_LOCK_TIMEOUT: seconds apt-get waits
# for dpkg's lock held by another apt (default 0, apt's own default: fail at once).
# Needs root.

smarter_apt_ensure() {
    local label=$1 p
    shift
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    echo "$label: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local lock=(-o "DPkg::Lock::Timeout=${SMARTER_APT_LOCK_TIMEOUT:-0}")
    apt-get "${lock[@]}" update -q
    apt-get "${lock[@]}" install -y -q --no-install-recommends "${missing[@]}"
}
