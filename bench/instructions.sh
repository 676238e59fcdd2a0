#!/usr/bin/env bash
# User-space instructions per request of sekisho as a forward proxy and as an
# HTTP load balancer, counted by valgrind's callgrind: a figure that does not
# drift with the machine's speed, for comparing two builds. See bench/README.md.
#
#   SEKISHO=target/release/sekisho bash bench/instructions.sh
#   SEKISHO=/tmp/old-sekisho MODES=forward bash bench/instructions.sh
#
# Modes: forward (`GET http://127.0.0.1:ORIGIN/small` through a forward
# listener, `squid` log line) and balancer (`GET /small` through an `http`
# listener, `httplog` line), each with `threads = 1`: the single-threaded
# runtime that bench/run.sh and bench/reverse.sh measure on their one core.
# sekisho runs under callgrind with instrumentation off while wrk warms it up,
# on for MEASURE seconds of load, then the count is divided by the access-log
# lines written meanwhile. Everything counted (runtime thread, log writer) is
# user-space work; kernel time is not.
# Everything listens on 127.0.0.1; processes are stopped by PID at exit.

set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
MODES=${MODES:-"forward balancer"}
WARMUP=${WARMUP:-3}
MEASURE=${MEASURE:-6}
CONNECTIONS=${CONNECTIONS:-32}
NAME=instructions
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
need valgrind callgrind_control callgrind_annotate nginx wrk python3
sekisho_binary

mkdir -p "$TMP/www" "$TMP/origin"
head -c 100 /dev/zero | tr '\0' 'x' >"$TMP/www/small"
chmod 755 "$TMP/www"; chmod 644 "$TMP/www/small"
start_origin "" "keepalive_requests 1000000;"

measure() { # measure MODE: prints "MODE requests instructions per-request"
    local mode=$1 d=$TMP/$1 port target host pid out lines0 lines1 total
    mkdir -p "$d"; port=$(free_port)
    case $mode in
    forward)
        target=http://127.0.0.1:$ORIGIN/small host=127.0.0.1:$ORIGIN
        cat >"$d/sekisho.toml" <<EOF
threads = 1
[[listener]]
bind = "127.0.0.1:$port"
mode = "forward"
access = ["allow localhost", "deny all"]
[admin]
enabled = false
[[access_log]]
output = "stdout"
format = "squid"
EOF
        ;;
    balancer)
        target=/small host=
        cat >"$d/sekisho.toml" <<EOF
threads = 1
[pool.origin]
[[pool.origin.server]]
address = "127.0.0.1:$ORIGIN"
[[listener]]
bind = "127.0.0.1:$port"
mode = "http"
default_pool = "origin"
[admin]
enabled = false
[[access_log]]
output = "stdout"
format = "httplog"
EOF
        ;;
    *) die "unknown mode $mode" ;;
    esac
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$d/callgrind.out" \
        "$SEKISHO" run -c "$d/sekisho.toml" >"$d/access.log" 2>"$d/stderr" &
    pid=$!; PIDS+=("$pid")
    wait_port "$port" || die "$mode: sekisho did not start under valgrind"
    load() { env BENCH_TARGET="$target" BENCH_HOST="$host" wrk -t1 -c"$CONNECTIONS" -d"$1s" \
        -s "$HERE/forward.lua" "http://127.0.0.1:$port/" >"$d/wrk.out" 2>&1; }
    load "$WARMUP"
    # the command is taken while the proxy is busy: an idle single-threaded
    # process may not look for it in time, so it is sent until acknowledged
    load "$((MEASURE + 1))" &
    local wrk=$! tries=0 said
    sleep 1
    until said=$(callgrind_control -i on "$pid" 2>&1) && [[ $said == *OK* ]]; do
        ((++tries < 10)) || die "$mode: callgrind did not take the command to count"
        sleep 0.2
    done
    lines0=$(wc -l <"$d/access.log")
    sleep "$MEASURE"
    callgrind_control -i off "$pid" >/dev/null 2>&1
    lines1=$(wc -l <"$d/access.log")
    wait "$wrk" || true
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    out=$(ls "$d"/callgrind.out.* 2>/dev/null | head -n1)
    [[ -n $out ]] || die "$mode: callgrind wrote no dump"
    # awk reads to the end: an early exit would fail the pipeline (SIGPIPE)
    total=$(callgrind_annotate "$out" 2>/dev/null | awk '!n && /PROGRAM TOTALS/ { gsub(",", "", $1); print $1; n = 1 }')
    ((lines1 > lines0)) || die "$mode: no requests logged while measuring"
    ((total > 0)) || die "$mode: callgrind counted nothing"
    echo "$mode $((lines1 - lines0)) $total $((total / (lines1 - lines0)))"
}

printf '| mode | requests counted | instructions | instructions per request |\n| --- | --- | --- | --- |\n'
for mode in $MODES; do
    read -r m n total per < <(measure "$mode")
    printf '| %s | %s | %s | %s |\n' "$m" "$n" "$total" "$per"
done
