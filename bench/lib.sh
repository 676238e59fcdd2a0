# shellcheck shell=bash
# Shared by bench/reverse.sh, tcp.sh, l4.sh and instructions.sh (sourced): logging, a
# temporary directory, processes stopped by PID at exit, free ports, the
# sekisho binary, and CPU ticks of processes.
#
# The sourcing script sets NAME (the log prefix) and REPO first.

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
log() { printf '[%s %s] %s\n' "$NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PIDS=() # started processes, stopped in reverse order at exit
TMP=$(mktemp -d "/tmp/sekisho-$NAME.XXXXXX")
chmod 711 "$TMP" # nginx workers run as an unprivileged user when started as root
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do wait "${PIDS[i]}" 2>/dev/null || true; done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need() { # need TOOL...: every tool is on PATH
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "missing $tool"
    done
}

sekisho_binary() { # sets SEKISHO (building it when not given) to an absolute path
    if [[ -z ${SEKISHO:-} ]]; then
        (cd "$REPO" && cargo build --release) || die "cargo build failed"
        SEKISHO=$REPO/target/release/sekisho
    fi
    SEKISHO=$(cd "$(dirname "$SEKISHO")" && pwd)/$(basename "$SEKISHO")
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { # until 127.0.0.1:PORT accepts (20 s at most)
    local i
    for ((i = 0; i < 200; i++)); do (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    return 1
}
ticks() { # user+system ticks of these PIDs (all threads)
    local t=0 p v
    for p in "$@"; do
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || true
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
HZ=$(getconf CLK_TCK) # used by the sourcing scripts
export HZ

start_origin() { # start_origin CPU DIRECTIVES: nginx serving $TMP/www on a free port (sets ORIGIN),
    # on CPU when one is given, with DIRECTIVES added to its http block
    local cpu=$1 extra=$2 cmd
    mkdir -p "$TMP/origin"
    ORIGIN=$(free_port)
    cat >"$TMP/origin/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/origin/nginx.pid;
error_log $TMP/origin/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $extra
    client_body_temp_path $TMP/origin/body;
    proxy_temp_path $TMP/origin/proxy;
    fastcgi_temp_path $TMP/origin/fastcgi;
    uwsgi_temp_path $TMP/origin/uwsgi;
    scgi_temp_path $TMP/origin/scgi;
    server { listen 127.0.0.1:$ORIGIN; root $TMP/www; location / { } }
}
EOF
    cmd=(nginx -p "$TMP/origin" -e "$TMP/origin/error.log" -c "$TMP/origin/nginx.conf")
    [[ -z $cpu ]] || cmd=(taskset -c "$cpu" "${cmd[@]}")
    "${cmd[@]}" &
    PIDS+=($!)
    wait_port "$ORIGIN" || die "origin nginx did not start"
}
