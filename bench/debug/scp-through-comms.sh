#!/usr/bin/env bash
# Benchmark: copy a file with scp through smarter-comms + smarter-debug-agent and, in the
# same run, directly to an OpenSSH sshd on loopback, in both directions (upload: developer
# to gateway; download: gateway to developer); print the throughputs and the ratio per
# direction (target >= 0.8 each). Also time `ssh` start to the remote command's output
# through the tunnel (target < 1 s). Everything runs on 127.0.0.1; nothing is left behind.
#
#   bench/debug/scp-through-comms.sh [SIZE_MB]      (default 200, in MiB)
#
# COMMS_AES_GCM_ONLY=true|false sets comms' `aes_gcm_only` (default: comms' own default, true:
# developers' clients are offered only AES-GCM where the CPU has AES instructions).
#
# Uses release binaries from $BIN_DIR (default: builds them with cargo --release).
# Needs: openssh-client, openssh-server (/usr/sbin/sshd), curl. sshd runs as the caller
# (root in CI) with its own config and keys in a temp dir.
set -euo pipefail

SIZE_MB=${1:-200}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [[ -z "${BIN_DIR:-}" ]]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
    cargo build --release -p smarter-debug --manifest-path "$ROOT/Cargo.toml" >&2
    BIN_DIR=$CARGO_TARGET_DIR/release
fi

T=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SSH_PORT=$(free_port); API_PORT=$(free_port); SSHD_PORT=$(free_port)
TOKEN=bench-token
HASH=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)

cat > "$T/comms.toml" <<EOF
ssh_listen = "127.0.0.1:$SSH_PORT"
api_listen = "127.0.0.1:$API_PORT"
state_dir = "$T/comms"
admin_token_sha256 = "$HASH"
EOF
case "${COMMS_AES_GCM_ONLY:-}" in
    '') ;;
    true | false) echo "aes_gcm_only = $COMMS_AES_GCM_ONLY" >> "$T/comms.toml" ;;
    *) echo "COMMS_AES_GCM_ONLY: '$COMMS_AES_GCM_ONLY' is neither true nor false" >&2; exit 2 ;;
esac
"$BIN_DIR/smarter-comms" --config "$T/comms.toml" --log-level warn 2>"$T/comms.log" &
COMMS_PID=$!
PIDS+=($!)
for _ in $(seq 100); do [[ -f "$T/comms/host_key.pub" ]] && curl -s "127.0.0.1:$API_PORT/healthz" >/dev/null && break; sleep 0.1; done

cat > "$T/agent.toml" <<EOF
comms_address = "127.0.0.1:$SSH_PORT"
comms_host_key = "$(cat "$T/comms/host_key.pub")"
gateway_name = "bench-gw"
state_dir = "$T/agent"
# The agent runs on this host, not in a hostPID pod: sessions stay in its namespaces.
host_namespaces_pid = 0
EOF
"$BIN_DIR/smarter-debug-agent" --config "$T/agent.toml" --log-level warn 2>"$T/agent.log" &
AGENT_PID=$!
PIDS+=($!)
for _ in $(seq 100); do [[ -f "$T/agent/agent_key.pub" ]] && break; sleep 0.1; done

api() { curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }
ssh-keygen -q -t ed25519 -N '' -f "$T/dev" -C dev
api -d "{\"name\":\"bench-gw\",\"public_key\":\"$(cat "$T/agent/agent_key.pub")\"}" "127.0.0.1:$API_PORT/v1/gateways" >/dev/null
api -d '{"name":"dev"}' "127.0.0.1:$API_PORT/v1/developers" >/dev/null
api -d "{\"public_key\":\"$(cat "$T/dev.pub")\"}" "127.0.0.1:$API_PORT/v1/developers/dev/keys" >/dev/null
api -d '{"developer":"dev","gateway":"bench-gw"}' "127.0.0.1:$API_PORT/v1/grants" >/dev/null
api "127.0.0.1:$API_PORT/v1/gateways/bench-gw/known_hosts" > "$T/known_hosts"
echo "[127.0.0.1]:$SSH_PORT $(cat "$T/comms/host_key.pub")" >> "$T/known_hosts"
for _ in $(seq 100); do api "127.0.0.1:$API_PORT/v1/gateways/bench-gw" | grep -q '"connected":true' && break; sleep 0.1; done

# The peer: OpenSSH's own sshd on loopback.
ssh-keygen -q -t ed25519 -N '' -f "$T/sshd_host_key"
cp "$T/dev.pub" "$T/authorized_keys"; chmod 600 "$T/authorized_keys"
cat > "$T/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $T/sshd_host_key
AuthorizedKeysFile $T/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PidFile $T/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
# sshd insists on its privilege separation directory (Debian creates it in the service unit).
[[ -d /run/sshd ]] || mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$T/sshd_config" 2>"$T/sshd.log" &
PIDS+=($!)
echo "[127.0.0.1]:$SSHD_PORT $(cat "$T/sshd_host_key.pub")" >> "$T/known_hosts"
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$SSHD_PORT") 2>/dev/null && break; sleep 0.1; done

cat > "$T/ssh_config" <<EOF
Host comms
  HostName 127.0.0.1
  Port $SSH_PORT
  User dev
Host direct
  HostName 127.0.0.1
  Port $SSHD_PORT
  User $(id -un)
Host *
  IdentityFile $T/dev
  IdentitiesOnly yes
  UserKnownHostsFile $T/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
EOF

head -c "${SIZE_MB}M" /dev/urandom > "$T/payload"

secs() { python3 -c 'import sys,time; print(time.monotonic())'; }
timed_scp() { # dest...
    local a b
    a=$(secs); scp -q -F "$T/ssh_config" "$@"; b=$(secs)
    python3 -c "print($b-$a)"
}

# Warm-up so neither side pays first-connection costs in the measurement.
ssh -F "$T/ssh_config" -J comms bench-gw true
ssh -F "$T/ssh_config" direct true

# CPU time (user + system, all threads, in clock ticks) comms and the agent have used so
# far: the tunnel's cost per MiB, which a loaded machine does not blur as it does throughput.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
tunnel_cpu() { echo "$(cpu_ticks "$COMMS_PID") $(cpu_ticks "$AGENT_PID")"; }

# One direction: through comms, then direct, back to back, so both see the same load; each copy
# must arrive byte-identical. Prints "<through-comms secs> <direct secs> <tunnel CPU before> <after>".
#   one_way up|down
one_way() {
    local dir=$1 src_ours dst_ours src_peer dst_peer cpu0 cpu1 ours peer
    if [[ $dir == up ]]; then
        src_ours=$T/payload dst_ours=bench-gw:$T/up-through-comms src_peer=$T/payload dst_peer=direct:$T/up-direct
    else
        src_ours=bench-gw:$T/payload dst_ours=$T/down-through-comms src_peer=direct:$T/payload dst_peer=$T/down-direct
    fi
    cpu0=$(tunnel_cpu)
    ours=$(timed_scp -J comms "$src_ours" "$dst_ours")
    cpu1=$(tunnel_cpu)
    peer=$(timed_scp "$src_peer" "$dst_peer")
    cmp -s "$T/payload" "$T/$dir-through-comms" || { echo "$dir through comms differs" >&2; exit 1; }
    cmp -s "$T/payload" "$T/$dir-direct" || { echo "$dir direct differs" >&2; exit 1; }
    rm -f "$T/$dir-through-comms" "$T/$dir-direct"
    echo "$ours $peer $cpu0 $cpu1"
}
read -r up_ours up_peer up_cpu0_c up_cpu0_a up_cpu1_c up_cpu1_a < <(one_way up)
read -r down_ours down_peer down_cpu0_c down_cpu0_a down_cpu1_c down_cpu1_a < <(one_way down)
up_cpu0="$up_cpu0_c $up_cpu0_a" up_cpu1="$up_cpu1_c $up_cpu1_a"
down_cpu0="$down_cpu0_c $down_cpu0_a" down_cpu1="$down_cpu1_c $down_cpu1_a"

# Time from ssh start to the remote command's output through the tunnel.
a=$(secs); out=$(ssh -F "$T/ssh_config" -J comms bench-gw echo ready); b=$(secs)
[[ "$out" == ready ]] || { echo "unexpected output $out" >&2; exit 1; }

python3 - "$SIZE_MB" "$up_ours" "$up_peer" "$down_ours" "$down_peer" "$a" "$b" "$(getconf CLK_TCK)" \
    $up_cpu0 $up_cpu1 $down_cpu0 $down_cpu1 <<'EOF'
import os, sys
size = float(sys.argv[1])
up_ours, up_peer, down_ours, down_peer, a, b, hz = map(float, sys.argv[2:9])
c = [float(x) for x in sys.argv[9:]]
cpu = {"upload  ": (c[2] - c[0], c[3] - c[1]), "download": (c[6] - c[4], c[7] - c[5])}
for name, ours, peer in (("upload  ", up_ours, up_peer), ("download", down_ours, down_peer)):
    o, p = size / ours, size / peer
    print(f"{name} {size:.0f} MiB through smarter-comms+agent: {o:7.1f} MiB/s ({ours:.2f} s)"
          f" | direct to OpenSSH sshd: {p:7.1f} MiB/s ({peer:.2f} s) | ratio {o / p:.2f} (target >= 0.80)")
    comms, agent = (t / hz * 1000 / size for t in cpu[name])
    print(f"{name} CPU per MiB: comms {comms:.1f} ms, agent {agent:.1f} ms")
print(f"ssh start to command output through the tunnel: {(b - a) * 1000:.0f} ms (target < 1000 ms)")
print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
EOF
