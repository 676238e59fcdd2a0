#!/usr/bin/env bash
# TCP relay throughput: downloads of one large file through sekisho `tcp`
# listeners relaying with splice(2) and with user-space buffers
# (`tunnel.relay`), and through HAProxy (`mode tcp`, one thread), in one run.
#
#   SEKISHO=target/release/sekisho bash bench/tcp.sh
#   RUNS=3 SIZE=1G bash bench/tcp.sh
#
# The relays run on PROXY_CPU, the origin (nginx) and curl on LOAD_CPU.
# Everything listens on 127.0.0.1; processes are stopped by PID at exit.

set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RUNS=${RUNS:-3}
SIZE=${SIZE:-1G}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NAME=tcp
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
need nginx haproxy curl taskset python3
sekisho_binary

mkdir -p "$TMP/www" "$TMP/origin"
fallocate -l "$SIZE" "$TMP/www/big" 2>/dev/null || truncate -s "$SIZE" "$TMP/www/big"
chmod 755 "$TMP/www"; chmod 644 "$TMP/www/big"
start_origin "$LOAD_CPU" "sendfile on;"
taskset -c "$LOAD_CPU" cat "$TMP/www/big" >/dev/null

declare -A PORT=() PID=()
for relay in splice copy; do
    p=$(free_port)
    cat >"$TMP/sekisho-$relay.toml" <<EOF
[pool.origin]
[[pool.origin.server]]
address = "127.0.0.1:$ORIGIN"
[[listener]]
name = "tcp"
bind = "127.0.0.1:$p"
mode = "tcp"
default_pool = "origin"
[tunnel]
relay = "$relay"
[admin]
enabled = false
EOF
    taskset -c "$PROXY_CPU" "$SEKISHO" run -c "$TMP/sekisho-$relay.toml" >/dev/null 2>"$TMP/sekisho-$relay.err" &
    PID[sekisho-$relay]=$!; PIDS+=($!); PORT[sekisho-$relay]=$p
    wait_port "$p" || die "sekisho ($relay) did not start"
done
p=$(free_port)
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
defaults
    mode tcp
    timeout connect 10s
    timeout client 60s
    timeout server 60s
listen tcp
    bind 127.0.0.1:$p
    server o1 127.0.0.1:$ORIGIN
EOF
taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.cfg" >/dev/null 2>"$TMP/haproxy.err" &
PID[haproxy]=$!; PIDS+=($!); PORT[haproxy]=$p
wait_port "$p" || die "haproxy did not start"

TARGETS="sekisho-splice sekisho-copy haproxy"
RESULTS=$TMP/results
: >"$RESULTS"
for t in $TARGETS; do # warm-up
    taskset -c "$LOAD_CPU" curl -s -o /dev/null "http://127.0.0.1:${PORT[$t]}/big" || true
done
for ((run = 1; run <= RUNS; run++)); do
    for t in $TARGETS; do
        c0=$(ticks "${PID[$t]}"); t0=$(date +%s.%N)
        out=$(taskset -c "$LOAD_CPU" curl -s -o /dev/null -w '%{speed_download} %{size_download}' "http://127.0.0.1:${PORT[$t]}/big")
        t1=$(date +%s.%N); c1=$(ticks "${PID[$t]}")
        read -r speed size <<<"$out"
        cpu=$(awk -v d=$((c1 - c0)) -v a="$t0" -v b="$t1" -v hz="$HZ" 'BEGIN { printf "%.1f", 100 * d / hz / (b - a) }')
        printf '%s\t%s\t%s\t%s\n' "$t" "$speed" "$size" "$cpu" >>"$RESULTS"
        log "$t run $run: $(awk -v s="$speed" 'BEGIN{printf "%.0f", s/1e6}') MB/s, $size bytes, relay cpu $cpu%"
    done
done
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t, speed, size, cpu = line.split("\t")
    rows.setdefault(t, []).append((float(speed), int(size), float(cpu)))
print("| relay | MB/s (median) | relay CPU % | bytes |")
print("| --- | --- | --- | --- |")
for t, rs in rows.items():
    print(f"| {t} | {statistics.median(r[0] for r in rs) / 1e6:.0f} | {statistics.median(r[2] for r in rs):.0f} | {rs[0][1]} |")
EOF
