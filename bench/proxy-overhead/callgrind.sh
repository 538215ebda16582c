#!/usr/bin/env bash
# Instructions per proxied call, Headroom beside the bare hyper proxy, counted with callgrind
# (instruction counts do not change with the machine's load). Each proxy runs under
# `valgrind --tool=callgrind` (one Tokio worker) in front of an nginx answering `{"ok":true}`;
# a client sends LOW, then (a fresh process) HIGH GET requests on one keep-alive connection;
# per call = (Ir at HIGH - Ir at LOW) / (HIGH - LOW), which cancels start-up and shutdown.
# The callgrind files are kept in the printed directory for callgrind_annotate.
#
#   bench/proxy-overhead/callgrind.sh
#
# Settings: HEADROOM_BIN (unset = build `--profile profiling`), BARE_BIN (unset = build
# hyper-proxy/ in release), LOW [500], HIGH [4500], LIMITS [0] (1 = a limited budget, as
# run.sh's LIMITS=1: a configured limit far above the load and X-RateLimit-* headers on
# every upstream answer, read back into the budget).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LOW=${LOW:-500}
LIMITS=${LIMITS:-0}
HIGH=${HIGH:-4500}
command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 2; }
command -v nginx >/dev/null || { echo "nginx is needed" >&2; exit 2; }
if [ -z "${HEADROOM_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --profile profiling -p headroom --quiet)
    HEADROOM_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/profiling/headroom"
fi
if [ -z "${BARE_BIN:-}" ]; then
    (cd "$HERE/hyper-proxy" && cargo build --release --quiet)
    BARE_BIN="$(cd "$HERE/hyper-proxy" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/bare-hyper-proxy"
fi
DIR=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); HR=$(free_port); BARE=$(free_port)
cat > "$DIR/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $DIR/nginx.pid;
error_log $DIR/nginx.err;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$UP;
  location / { default_type application/json;
$(if [ "$LIMITS" = 1 ]; then
    echo "    add_header X-RateLimit-Limit 100000000 always;"
    echo "    add_header X-RateLimit-Remaining 99999999 always;"
    echo "    add_header X-RateLimit-Reset 1 always;"
fi)
    return 200 '{"ok":true}'; } } }
NGINX
cat > "$DIR/headroom.toml" <<TOML
listen = "127.0.0.1:$HR"
auth = "none"
store = "sqlite://$DIR/headroom.db"

[[upstreams]]
name = "up"
base_url = "http://127.0.0.1:$UP"
max_concurrency = 10000
$([ "$LIMITS" = 1 ] && echo 'limits = [{ quota = 100000000, window = "1s" }]')
TOML
cat > "$DIR/client.py" <<'PY'
import http.client, sys, time
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for _ in range(600):  # wait for the proxy (slow under valgrind)
    try:
        c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", path); c.getresponse().read(); break
    except OSError:
        time.sleep(0.1)
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("GET", path); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
nginx -c "$DIR/nginx.conf" & NGINX_PID=$!
trap 'kill $NGINX_PID 2>/dev/null || true' EXIT

# count NAME N PORT PATH CMD…: prints the instructions of one run with N requests.
count() {
    local name=$1 n=$2 port=$3 path=$4; shift 4
    rm -f "$DIR"/headroom.db*
    TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.$name.$n.out" \
        "$@" > "$DIR/$name.$n.log" 2>&1 &
    local pid=$!
    python3 "$DIR/client.py" "$port" "$path" "$n"
    # SIGTERM: a background job of a script ignores SIGINT, and both proxies stop on TERM.
    kill -TERM "$pid"; wait "$pid" || true
    sed -n 's/.*I *refs: *//p' "$DIR/$name.$n.log" | tr -d ,
}
per_call() {
    local name=$1; shift
    local low high
    low=$(count "$name" "$LOW" "$@")
    high=$(count "$name" "$HIGH" "$@")
    echo $(( (high - low) / (HIGH - LOW) ))
}
bare=$(per_call bare "$BARE" /x "$BARE_BIN" "127.0.0.1:$BARE" "http://127.0.0.1:$UP")
headroom=$(per_call headroom "$HR" /proxy/up/x "$HEADROOM_BIN" serve --config "$DIR/headroom.toml")
echo "| proxy | instructions per call | vs bare hyper |"
echo "|---|---:|---:|"
echo "| bare hyper | $bare | 1.00 |"
python3 -c "print(f'| Headroom | $headroom | {$headroom/$bare:.2f} |')"
echo "(callgrind files in $DIR)"
