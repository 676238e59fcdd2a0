#!/usr/bin/env bash
# Side-by-side benchmark of sekisho, HAProxy (one thread) and NGINX (one
# worker) as HTTP and HTTPS load balancers in front of one nginx origin, on one
# machine, in one run. See bench/README.md.
#
#   SEKISHO=target/release/sekisho bash bench/reverse.sh
#   MODES="http" RUNS=1 DURATION=5 bash bench/reverse.sh     # quick smoke run
#
# Modes: http (keep-alive), https (keep-alive, TLS 1.3), handshake (HTTPS with
# `Connection: close`: one new TLS handshake per request). The balancers run on
# PROXY_CPU, the origin and wrk on LOAD_CPU; each balancer logs every request
# (sekisho and HAProxy the httplog line, NGINX its combined line) to a file.
# Everything listens on 127.0.0.1; processes are stopped by PID at exit.

set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
RUNS=${RUNS:-3}
CONNECTIONS=${CONNECTIONS:-32}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
TARGETS=${TARGETS:-"sekisho haproxy nginx"}
MODES=${MODES:-"http https handshake"}
SMALL_BYTES=${SMALL_BYTES:-100}
NAME=reverse
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
need nginx haproxy wrk openssl taskset python3
sekisho_binary

# ---- origin, certificate
mkdir -p "$TMP/www" "$TMP/origin"
head -c "$SMALL_BYTES" /dev/zero | tr '\0' 'x' >"$TMP/www/small"
chmod 755 "$TMP/www"; chmod 644 "$TMP/www/small"
start_origin "$LOAD_CPU" "keepalive_requests 1000000;"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test -addext basicConstraints=critical,CA:FALSE \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/both.pem"
chmod 644 "$TMP"/*.pem

declare -A HTTP_PORT=() HTTPS_PORT=() TPIDS=()

start_sekisho() {
    local d=$TMP/sekisho h s
    mkdir -p "$d"; h=$(free_port); s=$(free_port)
    cat >"$d/sekisho.toml" <<EOF
[pool.origin]
[[pool.origin.server]]
name = "o1"
address = "127.0.0.1:$ORIGIN"
[[listener]]
name = "http"
bind = "127.0.0.1:$h"
mode = "http"
default_pool = "origin"
[[listener]]
name = "https"
bind = "127.0.0.1:$s"
mode = "https"
default_pool = "origin"
[listener.tls]
certificates = [{ cert = "$TMP/cert.pem", key = "$TMP/key.pem" }]
[admin]
enabled = false
[[access_log]]
output = "stdout"
format = "httplog"
EOF
    taskset -c "$PROXY_CPU" "$SEKISHO" run -c "$d/sekisho.toml" >"$d/access.log" 2>"$d/stderr" &
    TPIDS[sekisho]=$!; PIDS+=($!)
    HTTP_PORT[sekisho]=$h; HTTPS_PORT[sekisho]=$s
    wait_port "$h" && wait_port "$s"
}

start_haproxy() {
    local d=$TMP/haproxy h s
    mkdir -p "$d"; h=$(free_port); s=$(free_port)
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread 1
    log stdout format raw local0
    tune.ssl.default-dh-param 2048
defaults
    mode http
    log global
    option httplog
    timeout connect 10s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend http
    bind 127.0.0.1:$h
    default_backend origin
frontend https
    bind 127.0.0.1:$s ssl crt $TMP/both.pem
    default_backend origin
backend origin
    server o1 127.0.0.1:$ORIGIN
EOF
    taskset -c "$PROXY_CPU" haproxy -db -f "$d/haproxy.cfg" >"$d/access.log" 2>"$d/stderr" &
    TPIDS[haproxy]=$!; PIDS+=($!)
    HTTP_PORT[haproxy]=$h; HTTPS_PORT[haproxy]=$s
    wait_port "$h" && wait_port "$s"
}

start_nginx() {
    local d=$TMP/nginx h s
    mkdir -p "$d"; h=$(free_port); s=$(free_port)
    cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log $d/access.log;
    keepalive_requests 1000000;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
    server {
        listen 127.0.0.1:$h;
        listen 127.0.0.1:$s ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        # NGINX 1.22 offers only up to TLS 1.2 unless told; every balancer speaks 1.3 here
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    taskset -c "$PROXY_CPU" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >"$d/stdout" 2>&1 &
    TPIDS[nginx]=$!; PIDS+=($!)
    HTTP_PORT[nginx]=$h; HTTPS_PORT[nginx]=$s
    wait_port "$h" && wait_port "$s"
}

nginx_all() { echo "${TPIDS[nginx]} $(pgrep -P "${TPIDS[nginx]}" | tr '\n' ' ')"; }

for t in $TARGETS; do
    "start_$t" || die "$t did not start"
    body=$(curl -s "http://127.0.0.1:${HTTP_PORT[$t]}/small"); [[ $body == "$(cat "$TMP/www/small")" ]] || die "$t: bad answer over http"
    body=$(curl -sk "https://127.0.0.1:${HTTPS_PORT[$t]}/small"); [[ $body == "$(cat "$TMP/www/small")" ]] || die "$t: bad answer over https"
    # the same protocol everywhere: every HTTPS measurement is TLS 1.3
    proto=$(openssl s_client -connect "127.0.0.1:${HTTPS_PORT[$t]}" -servername bench.test </dev/null 2>/dev/null | awk '/^New,/ { print $2 }')
    [[ $proto == TLSv1.3, ]] || die "$t negotiated ${proto:-nothing} instead of TLS 1.3"
    log "$t ready (http ${HTTP_PORT[$t]}, https ${HTTPS_PORT[$t]})"
done

RESULTS=$TMP/results.tsv
: >"$RESULTS"
run_wrk() { # run_wrk TARGET MODE SECONDS OUT
    local t=$1 mode=$2 secs=$3 out=$4 url close=0
    case $mode in
    http) url=http://127.0.0.1:${HTTP_PORT[$t]}/ ;;
    https) url=https://127.0.0.1:${HTTPS_PORT[$t]}/ ;;
    handshake) url=https://127.0.0.1:${HTTPS_PORT[$t]}/; close=1 ;;
    esac
    env BENCH_TARGET=/small BENCH_CLOSE=$close taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency -s "$HERE/forward.lua" "$url" >"$out" 2>&1
}

for mode in $MODES; do
    for t in $TARGETS; do run_wrk "$t" "$mode" "$WARMUP" /dev/null || true; done
    for ((run = 1; run <= RUNS; run++)); do
        for t in $TARGETS; do
            if [[ $t == nginx ]]; then pids=$(nginx_all); else pids=${TPIDS[$t]}; fi
            # shellcheck disable=SC2086
            c0=$(ticks $pids); t0=$(date +%s.%N)
            run_wrk "$t" "$mode" "$DURATION" "$TMP/wrk-$t-$mode-$run.out" || true
            # shellcheck disable=SC2086
            c1=$(ticks $pids); t1=$(date +%s.%N)
            line=$(grep '^BENCH_RESULT' "$TMP/wrk-$t-$mode-$run.out" || echo "BENCH_RESULT rps=0 p99_us=0 requests=0")
            kv() { grep -o " $1=[^ ]*" <<<"$line" | cut -d= -f2; }
            cpu=$(awk -v d=$((c1 - c0)) -v a="$t0" -v b="$t1" -v hz="$HZ" 'BEGIN { printf "%.1f", 100 * d / hz / (b - a) }')
            errs=$(grep -o 'Non-2xx or 3xx responses: [0-9]*\|Socket errors:.*' "$TMP/wrk-$t-$mode-$run.out" | tr '\n' ' ' || true)
            printf '%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$t" "$run" "$(kv rps)" "$(kv p99_us)" "$(kv requests)" "$cpu" "$errs" >>"$RESULTS"
            log "$mode $t run $run: $(kv rps) req/s, p99 $(kv p99_us) us, balancer cpu $cpu% $errs"
        done
    done
done

for t in $TARGETS; do
    lines=$(wc -l <"$TMP/$t/access.log" 2>/dev/null || echo 0)
    printf 'note\t%s\taccess log lines: %s\n' "$t" "$lines" >>"$RESULTS"
done

python3 "$HERE/reverse_report.py" "$RESULTS"
