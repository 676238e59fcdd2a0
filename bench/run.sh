#!/usr/bin/env bash
# Side-by-side benchmark of sekisho, Squid and tinyproxy as forward proxies,
# on one machine, in one run. See bench/README.md.
#
#   bash bench/run.sh                      # build sekisho (release) and run everything
#   SEKISHO=/path/to/sekisho bash bench/run.sh
#   DURATION=5 RUNS=1 bash bench/run.sh    # quick smoke run
#
# Everything listens on 127.0.0.1 only; all files live in a temporary directory
# that is removed at exit (KEEP_TMP=1 keeps it). Every process started here is
# recorded by PID and stopped by PID on exit.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

DURATION=${DURATION:-10}        # seconds per measured wrk run
WARMUP=${WARMUP:-2}             # seconds of unmeasured wrk load per target, and one unmeasured
                                # download per target, before the runs (0 = no warm-up)
CONNECTIONS=${CONNECTIONS:-32}  # wrk -c
THREADS=${THREADS:-1}           # wrk -t
RUNS=${RUNS:-3}                 # repetitions of each measurement; the median is reported
BIG_SIZE=${BIG_SIZE:-1G}        # size of the CONNECT download (fallocate/truncate syntax)
SMALL_BYTES=${SMALL_BYTES:-100} # size of the keep-alive response body
PROXY_CPU=${PROXY_CPU:-0}       # CPU the proxies are pinned to
LOAD_CPU=${LOAD_CPU:-1}         # CPU wrk, curl and nginx are pinned to
TARGETS=${TARGETS:-"sekisho-log sekisho-nolog sekisho-digest squid tinyproxy"}
MODES=${MODES:-"forward connect"} # which measurements to make
KEEP_TMP=${KEEP_TMP:-0}         # 1 = keep the temporary directory
OUT_DIR=${OUT_DIR:-}            # if set: report.md and raw outputs are copied there
QUIET_PCT=${QUIET_PCT:-10}      # before each run, wait until the machine uses at most this % of a CPU
QUIET_MAX=${QUIET_MAX:-600}     # ... but wait at most this many seconds (then measure and note it)
FOREIGN_MAX=${FOREIGN_MAX:-15}  # a run during which other processes used more than this % of a CPU
RETRIES=${RETRIES:-2}           # ... is discarded and repeated up to this many times

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- processes

PIDS=()        # started processes, stopped in reverse order on exit
LATE_PIDS=()   # nginx workers: stopped after their master
TMP=""

proc_state() { # prints the state letter of a process, or "gone"
    local s
    s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || true
    echo "${s:-gone}"
}

stop_pid() { # SIGTERM, wait up to 10 s, then SIGKILL; reaps our own children
    local pid=$1 i state
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        state=$(proc_state "$pid")
        [[ $state == gone || $state == Z ]] && break
        sleep 0.1
    done
    state=$(proc_state "$pid")
    if [[ $state != gone && $state != Z ]]; then
        log "pid $pid did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    for i in "${LATE_PIDS[@]}"; do
        if [[ $(proc_state "$i") != gone ]]; then kill -TERM "$i" 2>/dev/null || true; fi
    done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # wait_port PORT PID NAME ERRFILE: until 127.0.0.1:PORT accepts
    local port=$1 pid=$2 name=$3 errfile=$4 i
    for ((i = 0; i < 200; i++)); do
        local state
        state=$(proc_state "$pid")
        if [[ $state == gone || $state == Z ]]; then
            log "$name exited during startup; last lines of $errfile:"
            tail -n 20 "$errfile" >&2 || true
            return 1
        fi
        if (: <>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "$name did not accept on 127.0.0.1:$port within 20 s"
    return 1
}

cpu_ticks() { # user+system clock ticks of a whole process (all threads); 0 when gone
    local t
    t=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}') || true
    echo "${t:-0}"
}
CLK_TCK=$(getconf CLK_TCK)

sys_busy() { # user+nice+system+irq+softirq ticks of the whole machine (per-process times include
    # the softirq work done in a process's context, which /proc/stat counts as softirq)
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat
}

sys_steal() { # steal ticks of the whole machine (a VM waiting for its host)
    awk '/^cpu / { print $9; exit }' /proc/stat
}

nginx_ticks() { # CPU ticks of the nginx master and workers (0 before nginx runs)
    local t=0 p
    for p in ${NGINX_PID:-} "${LATE_PIDS[@]}"; do t=$((t + $(cpu_ticks "$p"))); done
    echo "$t"
}

# user+system ticks of this shell's reaped children (the load generator). `times` must run
# in the main shell (a $(...) subshell has no children of its own), so call it as
#   times >"$TMP/times"; x=$(child_ticks)
child_ticks() {
    tail -n 1 "$TMP/times" | awk -v hz="$CLK_TCK" '{
        s = 0
        for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); s += a[1] * 60 + a[2] }
        printf "%d", s * hz }'
}

wait_quiet() { # wait (up to QUIET_MAX s) until the machine is idle: the proxies are pinned to
    # one core and the load to the other, so a compile running elsewhere would skew the numbers
    local waited=0 b0 b1 pct
    while :; do
        b0=$(sys_busy)
        sleep 1
        b1=$(sys_busy)
        pct=$(((b1 - b0) * 100 / CLK_TCK))
        if ((pct <= QUIET_PCT)); then
            ((waited == 0)) || log "machine quiet again after ${waited}s"
            return 0
        fi
        if ((waited >= QUIET_MAX)); then
            log "machine still busy (${pct}% of a CPU) after ${waited}s; measuring anyway"
            note quiet "measured on a busy machine (${pct}% of a CPU in use) after waiting ${waited}s"
            return 0
        fi
        ((waited == 0)) && log "machine busy (${pct}% of a CPU used by other processes); waiting"
        sleep 4
        waited=$((waited + 5))
    done
}

# ---------------------------------------------------------------- tools

install_missing() {
    local missing=() pair cmd pkg
    for pair in nginx:nginx squid:squid tinyproxy:tinyproxy wrk:wrk curl:curl \
        taskset:util-linux fallocate:util-linux python3:python3; do
        cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing: ${missing[*]}"
    local sudo=()
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]} and not root (no sudo)"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y "${missing[@]}" ||
        { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y "${missing[@]}"; } ||
        die "apt-get install ${missing[*]} failed"
}

install_missing
ncpu=$(nproc)
((ncpu > PROXY_CPU && ncpu > LOAD_CPU)) || die "need CPUs $PROXY_CPU and $LOAD_CPU (nproc=$ncpu)"
[[ $PROXY_CPU != "$LOAD_CPU" ]] || log "warning: PROXY_CPU == LOAD_CPU"

if [[ -z ${SEKISHO:-} ]]; then
    target_dir=${CARGO_TARGET_DIR:-$REPO/target}
    [[ $target_dir == /* ]] || target_dir=$REPO/$target_dir
    log "building sekisho: cargo build --release (target dir $target_dir)"
    (cd "$REPO" && nice -n 10 cargo build --release) || die "cargo build failed"
    SEKISHO=$target_dir/release/sekisho
fi
[[ -x $SEKISHO ]] || die "sekisho binary not found: $SEKISHO"
SEKISHO=$(cd "$(dirname "$SEKISHO")" && pwd)/$(basename "$SEKISHO")

TMP=$(mktemp -d /tmp/sekisho-bench.XXXXXX)
chmod 711 "$TMP" # nginx workers and Squid run as unprivileged users when started as root
RESULTS=$TMP/results.tsv
META=$TMP/meta.tsv
: >"$RESULTS"
: >"$META"
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }
record_cmd() { # once per key
    grep -q "^cmd_$1	" "$META" || meta "cmd_$1" "$2"
}
note() { printf 'note\t%s\t%s\n' "$1" "$2" >>"$RESULTS"; log "note ($1): $2"; }

# ---------------------------------------------------------------- origin (nginx)

mkdir -p "$TMP/www" "$TMP/nginx"
head -c "$SMALL_BYTES" /dev/zero | tr '\0' 'x' >"$TMP/www/small"
fallocate -l "$BIG_SIZE" "$TMP/www/big" 2>/dev/null || truncate -s "$BIG_SIZE" "$TMP/www/big"
chmod 755 "$TMP/www"
chmod 644 "$TMP/www/small" "$TMP/www/big"
BIG_BYTES=$(stat -c %s "$TMP/www/big")

ORIGIN=$(free_port)
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 65s;
    default_type application/octet-stream;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server {
        listen 127.0.0.1:$ORIGIN;
        root $TMP/www;
        location / { }
    }
}
EOF
nginx_cmd=(taskset -c "$LOAD_CPU" nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf")
record_cmd nginx "${nginx_cmd[*]}"
"${nginx_cmd[@]}" >"$TMP/nginx/stdout" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$ORIGIN" "$NGINX_PID" nginx "$TMP/nginx/error.log" || die "nginx did not start"
for ((i = 0; i < 50; i++)); do # the worker is forked after the socket is bound
    mapfile -t LATE_PIDS < <(pgrep -P "$NGINX_PID" || true)
    ((${#LATE_PIDS[@]})) && break
    sleep 0.1
done
log "nginx (pid $NGINX_PID) on 127.0.0.1:$ORIGIN, big file $BIG_BYTES bytes"
taskset -c "$LOAD_CPU" cat "$TMP/www/big" >/dev/null # into the page cache

# ---------------------------------------------------------------- measurements

# measure PID OUTFILE CMD...: runs CMD in the foreground (stdout+stderr to OUTFILE) after
# waiting for the machine to be quiet, and sets
#   M_RC       exit status of CMD
#   M_PROXY    CPU used by process PID during CMD, % of one CPU ("" when PID is empty)
#   M_FOREIGN  CPU used by everything else on the machine (not the proxy, nginx, or CMD),
#              % of one CPU; other engineers' builds show up here
#   M_STEAL    CPU time the hypervisor gave to other guests, % of one CPU
measure() {
    local pid=$1 out=$2 b0 b1 p0=0 p1=0 n0 n1 c0 c1 s0 s1 t0 t1
    shift 2
    wait_quiet
    times >"$TMP/times"
    b0=$(sys_busy); n0=$(nginx_ticks); c0=$(child_ticks); s0=$(sys_steal)
    [[ -n $pid ]] && p0=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    M_RC=0
    "$@" >"$out" 2>&1 || M_RC=$?
    t1=$(date +%s.%N)
    [[ -n $pid ]] && p1=$(cpu_ticks "$pid")
    times >"$TMP/times"
    b1=$(sys_busy); n1=$(nginx_ticks); c1=$(child_ticks); s1=$(sys_steal)
    M_PROXY=""
    [[ -n $pid ]] && M_PROXY=$(awk -v d=$((p1 - p0)) -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.1f", 100 * d / hz / (t1 - t0) }')
    M_FOREIGN=$(awk -v d=$(((b1 - b0) - (p1 - p0) - (n1 - n0) - (c1 - c0))) -v t0="$t0" -v t1="$t1" \
        -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", 100 * d / hz / (t1 - t0) }')
    M_STEAL=$(awk -v d=$((s1 - s0)) -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.1f", 100 * d / hz / (t1 - t0) }')
}

noisy() { # noisy FOREIGN_PCT: true when other processes used more than FOREIGN_MAX
    awk -v f="$1" -v m="$FOREIGN_MAX" 'BEGIN { exit !(f > m) }'
}

# Targets: "direct" (nginx itself) and the proxies. For each: T_PORT (where wrk/curl
# connect), T_PID (the proxy process; empty for direct).
declare -A T_PORT=() T_PID=()
AUTH_SEQ=0

wrk_cmd() { # wrk_cmd NAME SECONDS: sets CMD to the wrk command line for a target
    local name=$1 secs=$2 target host
    if [[ $name == direct ]]; then
        target=/small host=""
    else
        target=http://127.0.0.1:$ORIGIN/small host=127.0.0.1:$ORIGIN
    fi
    local auth=""
    if [[ $name == sekisho-digest ]]; then
        # a fresh nonce per wrk thread for every wrk run, and the Digest
        # responses for counts 1..N precomputed (wrk's Lua has no hash functions)
        AUTH_SEQ=$((AUTH_SEQ + 1))
        auth=$TMP/digest-auth-$AUTH_SEQ
        python3 "$HERE/digest_auth.py" "http://127.0.0.1:${T_PORT[$name]}" "$target" "$THREADS" \
            $((secs * 60000)) "$auth" || die "could not prepare Digest responses"
    fi
    CMD=(env BENCH_TARGET="$target" BENCH_HOST="$host" BENCH_AUTH="$auth" taskset -c "$LOAD_CPU" wrk -t"$THREADS"
        -c"$CONNECTIONS" -d"${secs}s" --latency -s "$HERE/forward.lua" "http://127.0.0.1:${T_PORT[$name]}/")
}

wrk_warmup() { # wrk_warmup NAME
    ((WARMUP > 0)) || return 0
    wrk_cmd "$1" "$WARMUP"
    "${CMD[@]}" >"$TMP/wrk-$1-warmup.out" 2>&1 || true
}

wrk_once() { # wrk_once NAME RUN: one measured wrk run, appended to $RESULTS
    local name=$1 run=$2 pid=${T_PID[$1]} out=$TMP/wrk-$1-$2.out line attempt
    wrk_cmd "$name" "$DURATION"
    record_cmd "wrk_$name" "${CMD[*]}"
    for ((attempt = 0; ; attempt++)); do
        measure "$pid" "$out" "${CMD[@]}"
        if noisy "$M_FOREIGN" && ((attempt < RETRIES)); then
            note "$name" "wrk run $run discarded and repeated: other processes used ${M_FOREIGN}% of a CPU"
            continue
        fi
        break
    done
    if ((M_RC != 0)); then
        note "$name" "wrk run $run exited with status $M_RC: $(tail -n 3 "$out" | tr '\n' ' ')"
        return 0
    fi
    line=$(grep '^BENCH_RESULT' "$out" || true)
    if [[ -z $line ]]; then
        note "$name" "wrk run $run printed no result: $(tail -n 3 "$out" | tr '\n' ' ')"
        return 0
    fi
    kv() { grep -o " $1=[^ ]*" <<<"$line" | cut -d= -f2; }
    printf 'fwd\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$run" \
        "$(kv rps)" "$(kv p50_us)" "$(kv p99_us)" "$(kv requests)" "$(kv err_connect)" \
        "$(kv err_read)" "$(kv err_write)" "$(kv err_status)" "$(kv err_timeout)" \
        "$M_PROXY" "$M_FOREIGN" >>"$RESULTS"
    log "$name wrk run $run: $(kv rps) req/s, p50 $(kv p50_us) us, p99 $(kv p99_us) us," \
        "proxy cpu ${M_PROXY:--}%, other processes ${M_FOREIGN}%, steal ${M_STEAL}%"
    if grep -q 'Non-2xx' "$out"; then
        note "$name" "wrk run $run: $(grep 'Non-2xx' "$out" | sed 's/^ *//')"
    fi
    if grep -q 'Socket errors' "$out"; then
        note "$name" "wrk run $run: $(grep 'Socket errors' "$out" | sed 's/^ *//')"
    fi
    if noisy "$M_FOREIGN"; then
        note "$name" "wrk run $run kept although other processes used ${M_FOREIGN}% of a CPU"
    fi
    if noisy "$M_STEAL"; then
        note "$name" "wrk run $run: the hypervisor stole ${M_STEAL}% of a CPU"
    fi
}

connect_cmd() { # connect_cmd NAME: sets CMD to the curl command line for a target
    CMD=(taskset -c "$LOAD_CPU" curl -s)
    [[ $1 == direct ]] || CMD+=(-p -x "http://127.0.0.1:${T_PORT[$1]}")
    CMD+=("http://127.0.0.1:$ORIGIN/big" -o /dev/null --max-time 600
        -w '%{speed_download} %{size_download} %{http_code} %{http_connect}')
}

connect_once() { # connect_once NAME RUN: one download of the big file, appended to $RESULTS
    local name=$1 run=$2 pid=${T_PID[$1]} out=$TMP/curl-$1-$2.out attempt speed size code ccode cmd
    connect_cmd "$name"
    cmd=("${CMD[@]}")
    record_cmd "curl_$name" "${cmd[*]}"
    for ((attempt = 0; ; attempt++)); do
        measure "$pid" "$out" "${cmd[@]}"
        if noisy "$M_FOREIGN" && ((attempt < RETRIES)); then
            note "$name" "CONNECT run $run discarded and repeated: other processes used ${M_FOREIGN}% of a CPU"
            continue
        fi
        break
    done
    speed=0 size=0 code=000 ccode=000
    read -r speed size code ccode <"$out" || true
    printf 'connect\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n' "$name" "$run" "${speed:-0}" \
        "${size:-0}" "${code:-000}" "${ccode:-000}" "$M_RC" "$M_PROXY" "$M_FOREIGN" >>"$RESULTS"
    log "$name CONNECT run $run: $(awk -v s="${speed:-0}" 'BEGIN{printf "%.0f", s/1e6}') MB/s," \
        "$size bytes, HTTP $code, CONNECT $ccode, curl rc $M_RC, proxy cpu ${M_PROXY:--}%," \
        "other processes ${M_FOREIGN}%, steal ${M_STEAL}%"
    if noisy "$M_FOREIGN"; then
        note "$name" "CONNECT run $run kept although other processes used ${M_FOREIGN}% of a CPU"
    fi
    if noisy "$M_STEAL"; then
        note "$name" "CONNECT run $run: the hypervisor stole ${M_STEAL}% of a CPU"
    fi
}

sanity() { # sanity NAME PORT: one request through the proxy, plain and tunnelled
    local name=$1 port=$2 body login=()
    [[ $name == sekisho-digest ]] && login=(--proxy-digest -U bench:bench)
    body=$(taskset -c "$LOAD_CPU" curl -s --max-time 10 "${login[@]}" -x "http://127.0.0.1:$port" \
        "http://127.0.0.1:$ORIGIN/small" || true)
    if [[ $body != "$(cat "$TMP/www/small")" ]]; then
        note "$name" "sanity check failed: forward GET did not return the file"
        return 1
    fi
    body=$(taskset -c "$LOAD_CPU" curl -s --max-time 10 "${login[@]}" -p -x "http://127.0.0.1:$port" \
        "http://127.0.0.1:$ORIGIN/small" || true)
    if [[ $body != "$(cat "$TMP/www/small")" ]]; then
        note "$name" "sanity check failed: GET through a CONNECT tunnel did not return the file"
        return 1
    fi
}

# start_* NAME: start a proxy on a free port, setting PROXY_PID and PROXY_PORT
start_sekisho() { # start_sekisho NAME on|off [digest]
    local name=$1 logging=$2 auth=${3:-} dir=$TMP/$1 access='["allow localhost", "deny all"]'
    mkdir -p "$dir"
    PROXY_PORT=$(free_port)
    if [[ $auth == digest ]]; then
        # user "bench", password "bench", realm "bench"
        printf 'bench:bench:%s\n' "$(printf 'bench:bench:bench' | sha256sum | cut -d' ' -f1)" >"$dir/htdigest"
        access='["allow authed", "deny all"]'
    fi
    cat >"$dir/sekisho.toml" <<EOF
[acl]
all_ports = { port = ["1-65535"] }
CONNECT = { method = ["CONNECT"] }
authed = { proxy_auth = "REQUIRED" }

[[listener]]
name = "forward"
bind = "127.0.0.1:$PROXY_PORT"
mode = "forward"
access = $access

[admin]
enabled = false
EOF
    if [[ $auth == digest ]]; then
        # nonces reused for the whole run (the responses are precomputed), and
        # the counts of one nonce arrive out of order over many connections
        cat >>"$dir/sekisho.toml" <<EOF

[auth]
realm = "bench"

[auth.digest]
file = "$dir/htdigest"
algorithms = ["SHA-256"]
nonce_max_duration = "1h"
nonce_max_count = 0
nonce_count_window = 127
EOF
    fi
    if [[ $logging == on ]]; then
        cat >>"$dir/sekisho.toml" <<EOF

[[access_log]]
output = "stdout"
format = "squid"
EOF
    fi
    "$SEKISHO" check -c "$dir/sekisho.toml" >"$dir/check.out" 2>&1 ||
        { note "$name" "sekisho check failed: $(tr '\n' ' ' <"$dir/check.out")"; return 1; }
    local cmd=(taskset -c "$PROXY_CPU" "$SEKISHO" run -c "$dir/sekisho.toml")
    record_cmd "$name" "${cmd[*]} >$dir/access.log 2>$dir/stderr"
    "${cmd[@]}" >"$dir/access.log" 2>"$dir/stderr" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$PROXY_PORT" "$PROXY_PID" "$name" "$dir/stderr" || { note "$name" "did not start"; return 1; }
    local i
    for ((i = 0; i < 50; i++)); do grep -q 'ready:' "$dir/stderr" && break; sleep 0.1; done
    grep -q 'ready:' "$dir/stderr" || log "warning: $name printed no ready: line"
}

start_squid() {
    local name=$1 dir=$TMP/$1
    mkdir -p "$dir"
    PROXY_PORT=$(free_port)
    {
        echo "http_port 127.0.0.1:$PROXY_PORT"
        echo "workers 1"
        echo "cache deny all"
        echo "cache_mem 0 MB"
        echo "http_access allow localhost"
        echo "http_access deny all"
        echo "access_log stdio:$dir/access.log squid"
        echo "cache_log $dir/cache.log"
        echo "pid_filename $dir/squid.pid"
        echo "coredump_dir $dir"
        echo "pinger_enable off"
        echo "shutdown_lifetime 1 seconds"
        if [[ $EUID -eq 0 ]]; then echo "cache_effective_user proxy"; fi
    } >"$dir/squid.conf"
    if [[ $EUID -eq 0 ]]; then chown -R proxy: "$dir"; fi
    squid -k parse -f "$dir/squid.conf" >"$dir/parse.out" 2>&1 ||
        { note "$name" "squid -k parse failed: $(tail -n 3 "$dir/parse.out" | tr '\n' ' ')"; return 1; }
    local cmd=(taskset -c "$PROXY_CPU" squid -N -f "$dir/squid.conf")
    record_cmd "$name" "${cmd[*]}"
    "${cmd[@]}" >"$dir/stdout" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$PROXY_PORT" "$PROXY_PID" "$name" "$dir/cache.log" || { note "$name" "did not start"; return 1; }
}

start_tinyproxy() {
    local name=$1 dir=$TMP/$1
    mkdir -p "$dir"
    PROXY_PORT=$(free_port)
    cat >"$dir/tinyproxy.conf" <<EOF
Port $PROXY_PORT
Listen 127.0.0.1
Timeout 600
MaxClients 100
Allow 127.0.0.1
LogLevel Critical
EOF
    # No ConnectPort line: tinyproxy then allows CONNECT to every port.
    local cmd=(taskset -c "$PROXY_CPU" tinyproxy -d -c "$dir/tinyproxy.conf")
    record_cmd "$name" "${cmd[*]}"
    "${cmd[@]}" >"$dir/stdout" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$PROXY_PORT" "$PROXY_PID" "$name" "$dir/stdout" || { note "$name" "did not start"; return 1; }
}

# ---------------------------------------------------------------- metadata

cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
meta date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
meta machine "nproc=$ncpu; CPU: $cpu_model; kernel $(uname -sr); $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
src_state() { # the commit the sources are at, and whether they differ from it
    local rev dirty
    rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null) || { echo "not a git checkout"; return; }
    dirty=$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock build.rs 2>/dev/null)
    if [[ -n $dirty ]]; then echo "$rev + uncommitted changes in src/"; else echo "$rev, src/ clean"; fi
}
meta sekisho "$SEKISHO ($("$SEKISHO" --version 2>/dev/null | head -n1 || echo '?'); $(stat -c 'built %y' "$SEKISHO" | cut -d. -f1); repo $(src_state))"
meta rustc "$(rustc --version 2>/dev/null || echo '?')"
meta squid "$(squid -v | head -n1)"
meta tinyproxy "$(tinyproxy -v 2>&1 | head -n1)"
meta nginx "$(nginx -v 2>&1 | head -n1)"
meta wrk "$(wrk -v 2>&1 | head -n1)"
meta curl "$(curl --version | head -n1)"
meta parameters "MODES=$MODES; RUNS=$RUNS DURATION=${DURATION}s WARMUP=${WARMUP}s CONNECTIONS=$CONNECTIONS THREADS=$THREADS; proxies on CPU $PROXY_CPU, wrk/curl/nginx on CPU $LOAD_CPU; QUIET_PCT=$QUIET_PCT QUIET_MAX=${QUIET_MAX}s FOREIGN_MAX=$FOREIGN_MAX RETRIES=$RETRIES"
meta small_file_bytes "$SMALL_BYTES"
meta big_file_bytes "$BIG_BYTES"
meta "squid logging" "access_log to a file (stdio)"
meta "tinyproxy logging" "LogLevel Critical (no per-request log)"
meta "sekisho logging" "log on: [[access_log]] output=stdout format=squid, stdout redirected to a file; log off: no [[access_log]]"

# ---------------------------------------------------------------- run

want() { [[ " $MODES " == *" $1 "* ]]; }

# Start every proxy first (each idles while another is measured), then measure in
# rounds: run 1 of every target, run 2 of every target, ... so that a slow drift of
# the machine (the direct transfer alone moved by ~15 % within minutes in testing)
# shifts all targets alike instead of favouring whichever was measured first.
T_PORT[direct]=$ORIGIN
T_PID[direct]=""
LIST=(direct)
for name in $TARGETS; do
    log "starting $name"
    PROXY_PID="" PROXY_PORT=""
    ok=0
    case $name in
    sekisho-log) start_sekisho "$name" on && ok=1 ;;
    sekisho-nolog) start_sekisho "$name" off && ok=1 ;;
    sekisho-digest) start_sekisho "$name" on digest && ok=1 ;;
    squid) start_squid "$name" && ok=1 ;;
    tinyproxy) start_tinyproxy "$name" && ok=1 ;;
    *) die "unknown target $name" ;;
    esac
    if ((ok)) && sanity "$name" "$PROXY_PORT"; then
        log "$name (pid $PROXY_PID) on 127.0.0.1:$PROXY_PORT"
        T_PORT[$name]=$PROXY_PORT
        T_PID[$name]=$PROXY_PID
        LIST+=("$name")
    elif [[ -n $PROXY_PID ]]; then
        stop_pid "$PROXY_PID"
    fi
done

if want forward; then
    log "forward: warm-up (${WARMUP}s per target), then $RUNS rounds of ${DURATION}s per target"
    for name in "${LIST[@]}"; do wrk_warmup "$name"; done
    for ((run = 1; run <= RUNS; run++)); do
        for name in "${LIST[@]}"; do wrk_once "$name" "$run"; done
    done
fi
if want connect; then
    log "CONNECT: warm-up download per target, then $RUNS rounds of one $BIG_BYTES-byte download per target"
    if ((WARMUP > 0)); then
        # in testing, the first big transfer after the wrk phase was often ~40 % slower
        for name in "${LIST[@]}"; do
            [[ $name == sekisho-digest ]] && continue
            connect_cmd "$name"
            "${CMD[@]}" >"$TMP/curl-$name-warmup.out" 2>&1 || true
        done
    fi
    for ((run = 1; run <= RUNS; run++)); do
        for name in "${LIST[@]}"; do [[ $name == sekisho-digest ]] || connect_once "$name" "$run"; done
    done
fi

for name in "${LIST[@]}"; do
    [[ $name == direct ]] && continue
    pid=${T_PID[$name]}
    if [[ $(proc_state "$pid") == gone || $(proc_state "$pid") == Z ]]; then
        note "$name" "the proxy process had exited by the end of the runs"
    fi
    stop_pid "$pid"
    case $name in
    sekisho-*)
        note "$name" "access log lines: $(wc -l <"$TMP/$name/access.log"); stderr lines: $(wc -l <"$TMP/$name/stderr"), of which WARN/ERROR: $(grep -cE 'WARN|ERROR' "$TMP/$name/stderr" || true)"
        if grep -qE 'WARN|ERROR' "$TMP/$name/stderr"; then
            note "$name" "first WARN/ERROR: $(grep -m1 -E 'WARN|ERROR' "$TMP/$name/stderr" | cut -c1-300)"
        fi
        ;;
    squid)
        note "$name" "access log lines: $(wc -l <"$TMP/$name/access.log" 2>/dev/null || echo '?')"
        ;;
    esac
done

stop_pid "$NGINX_PID"

report=$(python3 "$HERE/report.py" "$RESULTS" "$META")
printf '%s\n' "$report"
if [[ -n $OUT_DIR ]]; then
    mkdir -p "$OUT_DIR"
    printf '%s\n' "$report" >"$OUT_DIR/report.md"
    cp "$RESULTS" "$META" "$OUT_DIR/"
    mkdir -p "$OUT_DIR/raw"
    cp "$TMP"/wrk-*.out "$TMP"/curl-*.out "$OUT_DIR/raw/" 2>/dev/null || true
    for name in $TARGETS; do
        [[ -d $TMP/$name ]] || continue
        mkdir -p "$OUT_DIR/raw/$name"
        find "$TMP/$name" -maxdepth 1 -type f ! -name access.log -exec cp {} "$OUT_DIR/raw/$name/" \;
        [[ -f $TMP/$name/access.log ]] && tail -n 5 "$TMP/$name/access.log" >"$OUT_DIR/raw/$name/access.log.tail"
    done
    log "report and raw outputs in $OUT_DIR"
fi
