#!/usr/bin/env bash
# smarter-dns vs dnsmasq, same machine, same run (never part of the tests).
#
# Both serve the same 1,000 local pods (4 name forms each, TTL 5) and
# forward *.fwd.test to one upstream dnsmasq; both cache forwarded answers.
# Prints, for each: queries/s at saturation (dnsperf, UDP) for local names
# and for cached forwards; latency percentiles at a fixed 5,000 q/s; the
# ratio ours/theirs. Then the record-to-resolvable latency of smarter-dns
# (median and p99 over 200 record writes and 200 removals).
#
# Needs root (a private network namespace), dnsperf, dnsmasq, python3.
# Usage: bench/dns/run.sh [seconds-per-run]   (default 10)
#        SMARTER_DNS_BIN=path/to/release/smarter-dns bench/dns/run.sh   (skip the build)
#        WORKERS=2 bench/dns/run.sh   (smarter-dns worker_threads; dnsmasq is single-threaded)
#        ROUNDS=5 bench/dns/run.sh    (rounds per figure, default 3; the median is reported, so a
#                                      burst of other load in one round does not decide the ratio)
#        AA=1 bench/dns/run.sh        (A/A control: a second, identical dnsmasq takes smarter-dns's
#                                      place, so the ratios show this machine's noise floor)
set -euo pipefail

SECS=${1:-10}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [ -n "${SMARTER_DNS_BIN:-}" ]; then
    BIN=$SMARTER_DNS_BIN   # an already-built release binary
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
    cargo build --release -p smarter-dns --manifest-path "$ROOT/Cargo.toml" >&2
    BIN=$CARGO_TARGET_DIR/release/smarter-dns
fi

NS=smdns-bench-$$
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
# (Background processes are started with `ip netns exec` directly, not via
# this function, so that $! is their pid and cleanup can stop them.)
inns() { ip netns exec "$NS" "$@"; }

# 1,000 pods: records for smarter-dns, a hosts file for dnsmasq.
mkdir -p "$WORK/records"
: >"$WORK/hosts"
: >"$WORK/local.txt"
for i in $(seq 0 999); do
    ip="172.39.$((i / 250)).$((i % 250 + 2))"
    n=$(printf 'pod-%04d' "$i")
    printf '{"version":1,"container_id":"c%04d","ifname":"eth0","network":"smartnet","pod_name":"%s","namespace":"default","ips":["%s"]}' \
        "$i" "$n" "$ip" >"$WORK/records/c${i}_eth0.json"
    echo "$ip $n $n.default.svc.cluster.local $n.svc.cluster.local $n.cluster.local" >>"$WORK/hosts"
    echo "$n.default.svc.cluster.local A" >>"$WORK/local.txt"
    echo "$n A" >>"$WORK/local.txt"
done
: >"$WORK/fwd.txt"
for i in $(seq 0 199); do echo "host$i.fwd.test A" >>"$WORK/fwd.txt"; done

# Upstream for forwarded names.
ip netns exec "$NS" dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --user=root --pid-file= \
    --listen-address=127.0.0.9 --port=53 --address=/fwd.test/10.9.9.9 --local-ttl=3600 \
    --log-facility=- 2>/dev/null &
PIDS+=($!)

# The peer: dnsmasq with the same names, same TTL, caching forwards.
ip netns exec "$NS" dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --user=root --pid-file= \
    --listen-address=127.0.0.3 --port=53 --addn-hosts="$WORK/hosts" --local-ttl=5 \
    --server=127.0.0.9 --cache-size=10000 --log-facility=- 2>/dev/null &
PIDS+=($!)

# Us (or, with AA=1, a second dnsmasq identical to the peer).
OURS=127.0.0.2
OURS_NAME=smarter-dns
if [ "${AA:-0}" = 1 ]; then
    OURS=127.0.0.4
    OURS_NAME=dnsmasq-B
    ip netns exec "$NS" dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --user=root --pid-file= \
        --listen-address=127.0.0.4 --port=53 --addn-hosts="$WORK/hosts" --local-ttl=5 \
        --server=127.0.0.9 --cache-size=10000 --log-facility=- 2>/dev/null &
    PIDS+=($!)
fi
echo "nameserver 127.0.0.9" >"$WORK/resolv.conf"
cat >"$WORK/dns.toml" <<TOML
records_dir = "$WORK/records"
resolv_conf = "$WORK/resolv.conf"
listen = ["127.0.0.2"]
dummy_interface = ""
ttl = 5
worker_threads = ${WORKERS:-1}
TOML
ip netns exec "$NS" "$BIN" --config "$WORK/dns.toml" --log-level warn &
PIDS+=($!)

for s in "$OURS" 127.0.0.3; do
    for _ in $(seq 100); do
        if inns dig +short +tries=1 +time=1 @"$s" pod-0001 | grep -q 172; then break; fi
        sleep 0.05
    done
done
# Warm both caches.
for s in "$OURS" 127.0.0.3; do inns dnsperf -s "$s" -d "$WORK/fwd.txt" -n 1 >/dev/null 2>&1; done

qps() { # server datafile
    inns dnsperf -s "$1" -d "$2" -l "$SECS" -c 4 -q 200 2>/dev/null |
        awk '/Queries per second/ {print $4}'
}
lat() { # server datafile -> "p50 p99" in microseconds at 5,000 q/s
    inns dnsperf -s "$1" -d "$2" -l "$SECS" -Q 5000 -v 2>/dev/null |
        awk '$1 == ">" {print $NF * 1e6}' | sort -n |
        awk '{a[NR]=$1} END {if (NR==0) {print "n/a n/a"; exit}
             p50=a[int(NR*0.50)+1]; p99=a[int(NR*0.99)]; if (p99=="") p99=a[NR];
             printf "%.0f %.0f\n", p50, p99}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

ROUNDS=${ROUNDS:-3}
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else print a[int((NR+1)/2)]}'; }

echo "dnsperf, UDP; each figure is the median of $ROUNDS rounds (ours and dnsmasq's measured"
echo "alternately in every round); ratio = $OURS_NAME / dnsmasq"
printf '%-22s %14s %14s %8s\n' "workload" "$OURS_NAME" "dnsmasq" "ratio"
for w in local fwd; do
    f="$WORK/$w.txt"
    oq=(); tq=(); o5=(); t5=(); o9=(); t9=()
    for _ in $(seq "$ROUNDS"); do
        oq+=("$(qps "$OURS" "$f")"); tq+=("$(qps 127.0.0.3 "$f")")
        read -r a b < <(lat "$OURS" "$f"); o5+=("$a"); o9+=("$b")
        read -r a b < <(lat 127.0.0.3 "$f"); t5+=("$a"); t9+=("$b")
    done
    ours=$(printf '%s\n' "${oq[@]}" | median); theirs=$(printf '%s\n' "${tq[@]}" | median)
    printf '%-22s %14.0f %14.0f %8s   rounds: %s | %s\n' "$w qps" "$ours" "$theirs" "$(ratio "$ours" "$theirs")" \
        "$(printf '%.0f ' "${oq[@]}")" "$(printf '%.0f ' "${tq[@]}")"
    ours=$(printf '%s\n' "${o5[@]}" | median); theirs=$(printf '%s\n' "${t5[@]}" | median)
    printf '%-22s %14s %14s %8s\n' "$w p50 us @5k q/s" "$ours" "$theirs" "$(ratio "$ours" "$theirs")"
    ours=$(printf '%s\n' "${o9[@]}" | median); theirs=$(printf '%s\n' "${t9[@]}" | median)
    printf '%-22s %14s %14s %8s   rounds: %s| %s\n' "$w p99 us @5k q/s" "$ours" "$theirs" "$(ratio "$ours" "$theirs")" \
        "$(printf '%s ' "${o9[@]}")" "$(printf '%s ' "${t9[@]}")"
done

echo
echo "record-to-resolvable latency, smarter-dns (dnsmasq has no equivalent: it re-reads hosts only on SIGHUP):"
inns python3 "$HERE/update_latency.py" "$WORK/records" 127.0.0.2 200
