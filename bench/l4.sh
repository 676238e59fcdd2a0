#!/usr/bin/env bash
# Layer-4 proxying, side by side in one run:
#   tcp   iperf3 throughput through sekisho (`tcp` listener; its default relay,
#         user-space buffers, and `tunnel.relay = "splice"`), HAProxy
#         (`mode tcp`, one thread) and NGINX `stream` (one worker), with each
#         relay's CPU time per Gbit moved;
#   udp   dnsperf queries/s through sekisho (`udp` listener, responses = 1,
#         timeout 1s) and NGINX `stream` (`proxy_responses 1; proxy_timeout 1s`)
#         to one dnsmasq;
#   idle  RSS per idle connection: IDLE (5,000) clients each open a TCP
#         connection through the relay, exchange one line with the backend
#         and stay open; RSS with them minus RSS before, divided by IDLE,
#         read once all have exchanged their line and again IDLE_WAIT (5) s
#         later (sekisho parks sessions quiet for 1 s).
#
#   SEKISHO=target/release/sekisho bash bench/l4.sh
#   RUNS=3 SECONDS_PER_RUN=10 IDLE=5000 bash bench/l4.sh
#
# The relays run on PROXY_CPU; iperf3, dnsperf, dnsmasq and the idle clients
# and backend on LOAD_CPU. Everything listens on 127.0.0.1; processes are
# stopped by PID at exit.

set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
IDLE=${IDLE:-5000}
IDLE_WAIT=${IDLE_WAIT:-5} # seconds between the two idle RSS readings
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NAME=l4
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
need nginx haproxy iperf3 dnsperf dnsmasq taskset python3
sekisho_binary
ulimit -n "$(ulimit -Hn)" # as many descriptors as allowed (5,000 idle relays need about 10,000)
STREAM_MODULE=${STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
[[ -f $STREAM_MODULE ]] || die "missing $STREAM_MODULE (Debian package libnginx-mod-stream)"

# backends: iperf3, dnsmasq, and a holder of idle connections
IPERF=$(free_port)
taskset -c "$LOAD_CPU" iperf3 -s -p "$IPERF" >/dev/null 2>&1 &
PIDS+=($!)
DNS=$(free_port)
taskset -c "$LOAD_CPU" dnsmasq --keep-in-foreground --no-resolv --no-hosts --port="$DNS" \
    --listen-address=127.0.0.1 --bind-interfaces --address=/#/192.0.2.1 --cache-size=0 \
    --pid-file="$TMP/dnsmasq.pid" --user=root 2>"$TMP/dnsmasq.err" &
PIDS+=($!)
HOLD=$(free_port)
cat >"$TMP/hold.py" <<'EOF'
import asyncio, sys
async def serve(r, w):
    try:
        line = await r.readline()
        w.write(line)
        await w.drain()
        await r.read()  # until the client closes
    except Exception:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await s.serve_forever()
asyncio.run(main())
EOF
taskset -c "$LOAD_CPU" python3 "$TMP/hold.py" "$HOLD" &
PIDS+=($!)
wait_port "$IPERF" || die "iperf3 did not start"
wait_port "$HOLD" || die "the idle backend did not start"

declare -A PID=() TCP=() UDP=() HOLDP=()
# sekisho
TCP[sekisho]=$(free_port); UDP[sekisho]=$(free_port); HOLDP[sekisho]=$(free_port)
cat >"$TMP/sekisho.toml" <<EOF
maxconn = 9000
[pool.iperf]
[[pool.iperf.server]]
address = "127.0.0.1:$IPERF"
[pool.dns]
[[pool.dns.server]]
address = "127.0.0.1:$DNS"
[pool.hold]
[[pool.hold.server]]
address = "127.0.0.1:$HOLD"
[[listener]]
name = "tcp"
bind = "127.0.0.1:${TCP[sekisho]}"
mode = "tcp"
default_pool = "iperf"
[[listener]]
name = "dns"
bind = "127.0.0.1:${UDP[sekisho]}"
mode = "udp"
default_pool = "dns"
responses = 1
timeout = "1s"
max_sessions = 100000
[[listener]]
name = "hold"
bind = "127.0.0.1:${HOLDP[sekisho]}"
mode = "tcp"
default_pool = "hold"
[timeouts]
tunnel_idle = "1h"
[admin]
enabled = false
EOF
taskset -c "$PROXY_CPU" "$SEKISHO" run -c "$TMP/sekisho.toml" >/dev/null 2>"$TMP/sekisho.err" &
PID[sekisho]=$!; PIDS+=($!)
wait_port "${TCP[sekisho]}" || die "sekisho did not start: $(cat "$TMP/sekisho.err")"
# a second sekisho relaying with splice(2), for the TCP measurement only
TCP[sekisho-splice]=$(free_port)
cat >"$TMP/sekisho-splice.toml" <<EOF
[pool.iperf]
[[pool.iperf.server]]
address = "127.0.0.1:$IPERF"
[[listener]]
name = "tcp"
bind = "127.0.0.1:${TCP[sekisho-splice]}"
mode = "tcp"
default_pool = "iperf"
[tunnel]
relay = "splice"
[admin]
enabled = false
EOF
taskset -c "$PROXY_CPU" "$SEKISHO" run -c "$TMP/sekisho-splice.toml" >/dev/null 2>"$TMP/sekisho-splice.err" &
PID[sekisho-splice]=$!; PIDS+=($!)
wait_port "${TCP[sekisho-splice]}" || die "sekisho (splice) did not start: $(cat "$TMP/sekisho-splice.err")"

# HAProxy (no UDP)
TCP[haproxy]=$(free_port); HOLDP[haproxy]=$(free_port)
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9000
defaults
    mode tcp
    maxconn 9000
    timeout connect 10s
    timeout client 1h
    timeout server 1h
listen tcp
    bind 127.0.0.1:${TCP[haproxy]}
    server s1 127.0.0.1:$IPERF
listen hold
    bind 127.0.0.1:${HOLDP[haproxy]}
    server s1 127.0.0.1:$HOLD
EOF
taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.cfg" >/dev/null 2>"$TMP/haproxy.err" &
PID[haproxy]=$!; PIDS+=($!)
wait_port "${TCP[haproxy]}" || die "haproxy did not start: $(cat "$TMP/haproxy.err")"

# NGINX stream, one worker (its master is counted too)
TCP[nginx]=$(free_port); UDP[nginx]=$(free_port); HOLDP[nginx]=$(free_port)
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
load_module $STREAM_MODULE;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log error;
events { worker_connections 19000; }
stream {
    proxy_timeout 1h;
    server { listen 127.0.0.1:${TCP[nginx]}; proxy_pass 127.0.0.1:$IPERF; }
    server { listen 127.0.0.1:${HOLDP[nginx]}; proxy_pass 127.0.0.1:$HOLD; }
    server {
        listen 127.0.0.1:${UDP[nginx]} udp;
        proxy_pass 127.0.0.1:$DNS;
        proxy_responses 1;
        proxy_timeout 1s;
    }
}
EOF
taskset -c "$PROXY_CPU" nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" &
PID[nginx]=$!; PIDS+=($!)
wait_port "${TCP[nginx]}" || die "nginx did not start: $(cat "$TMP/nginx/error.log")"
sleep 0.5
nginx_pids() { echo "${PID[nginx]}" $(pgrep -P "${PID[nginx]}" || true); }
pids_of() { if [[ $1 == nginx ]]; then nginx_pids; else echo "${PID[$1]}"; fi; }
rss_kib() { # summed RSS of PIDS
    local t=0 p v
    for p in "$@"; do
        v=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null) || true
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

RESULTS=$TMP/results
: >"$RESULTS"

# idle first: each relay's "before" is its fresh process, untouched by the
# heap the throughput runs leave behind
log "idle: $IDLE connections per relay"
cat >"$TMP/idle.py" <<'EOF'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"ping\n")
    socks.append(s)
for s in socks:
    s.settimeout(10)
    assert s.recv(16) == b"ping\n"
print("open", flush=True)
sys.stdin.readline()  # hold until told
EOF
for t in sekisho haproxy nginx; do
    read -ra ps <<<"$(pids_of "$t")"
    before=$(rss_kib "${ps[@]}")
    coproc IDLERS { taskset -c "$LOAD_CPU" python3 "$TMP/idle.py" "${HOLDP[$t]}" "$IDLE"; }
    read -r ready <&"${IDLERS[0]}" || die "idle clients failed for $t"
    at_once=$(rss_kib "${ps[@]}")
    sleep "$IDLE_WAIT"
    after=$(rss_kib "${ps[@]}")
    echo done >&"${IDLERS[1]}"
    wait "$IDLERS_PID" 2>/dev/null || true
    printf 'idle\t%s\t%s\t%s\t%s\n' "$t" "$before" "$after" "$at_once" >>"$RESULTS"
    log "idle $t: RSS $before KiB -> $at_once KiB at once, $after KiB after ${IDLE_WAIT}s ($ready)"
    sleep 1
done

log "tcp: iperf3 for ${SECONDS_PER_RUN}s per run"
for ((run = 1; run <= RUNS; run++)); do
    for t in sekisho sekisho-splice haproxy nginx; do
        read -ra ps <<<"$(pids_of "$t")"
        c0=$(ticks "${ps[@]}")
        out=$(taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "${TCP[$t]}" -t "$SECONDS_PER_RUN" -J)
        c1=$(ticks "${ps[@]}")
        read -r bps bytes <<<"$(python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; print(e["bits_per_second"], e["bytes"])' <<<"$out")"
        printf 'tcp\t%s\t%s\t%s\t%s\n' "$t" "$bps" "$bytes" $((c1 - c0)) >>"$RESULTS"
        log "tcp $t run $run: $(awk -v b="$bps" 'BEGIN{printf "%.2f", b/1e9}') Gbit/s, relay ticks $((c1 - c0))"
    done
done

log "udp: dnsperf for ${SECONDS_PER_RUN}s per run"
python3 -c 'import sys; [print(f"host{i}.example A") for i in range(1000)]' >"$TMP/queries"
for ((run = 1; run <= RUNS; run++)); do
    for t in sekisho nginx; do
        out=$(taskset -c "$LOAD_CPU" dnsperf -s 127.0.0.1 -p "${UDP[$t]}" -d "$TMP/queries" -l "$SECONDS_PER_RUN" -c 20 -q 200 -t 2 2>&1)
        qps=$(awk '/Queries per second/ {print $4}' <<<"$out")
        lost=$(awk '/Queries lost/ {print $3}' <<<"$out")
        printf 'udp\t%s\t%s\t%s\t0\n' "$t" "${qps:-0}" "${lost:-?}" >>"$RESULTS"
        log "udp $t run $run: ${qps:-?} qps, lost ${lost:-?}"
    done
done

python3 - "$RESULTS" "$IDLE" "$IDLE_WAIT" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
idle = int(sys.argv[2])
wait = sys.argv[3]
tcp = {}
for kind, t, a, b, c in rows:
    if kind == "tcp":
        tcp.setdefault(t, []).append((float(a), int(b), int(c)))
print("TCP (iperf3), medians:\n")
print("| relay | Gbit/s | relay CPU s per Gbit moved | vs HAProxy Gbit/s | vs HAProxy CPU/Gbit |")
print("| --- | --- | --- | --- | --- |")
med = {}
for t, rs in tcp.items():
    gbps = statistics.median(r[0] for r in rs) / 1e9
    cpu = statistics.median(r[2] / 100 / (r[1] * 8 / 1e9) for r in rs)
    med[t] = (gbps, cpu)
for t, (g, c) in med.items():
    h = med.get("haproxy", (g, c))
    print(f"| {t} | {g:.2f} | {c:.3f} | {g / h[0]:.2f}x | {c / h[1]:.2f}x |")
udp = {}
for kind, t, a, b, c in rows:
    if kind == "udp":
        udp.setdefault(t, []).append((float(a), b))
print("\nUDP DNS (dnsperf), medians:\n")
print("| relay | queries/s | lost (last run) | vs NGINX |")
print("| --- | --- | --- | --- |")
q = {t: statistics.median(r[0] for r in rs) for t, rs in udp.items()}
for t, rs in udp.items():
    print(f"| {t} | {q[t]:.0f} | {rs[-1][1]} | {q[t] / q.get('nginx', q[t]):.2f}x |")
print(f"\nIdle connections ({idle}; RSS when the last one has exchanged its line, and {wait} s later):\n")
print("| relay | RSS before KiB | RSS with clients KiB, at once / later | KiB per connection, at once | KiB per connection, later |")
print("| --- | --- | --- | --- | --- |")
for kind, t, a, b, c in rows:
    if kind == "idle":
        print(f"| {t} | {a} | {c} / {b} | {(int(c) - int(a)) / idle:.2f} | {(int(b) - int(a)) / idle:.2f} |")
EOF
