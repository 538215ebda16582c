#!/usr/bin/env bash
# Distributed mode: durable jobs end to end with 1, 2 and 3 `headroom serve` nodes on one
# PostgreSQL store and one Redis governor (the cluster setup of the README), and governor
# decisions per second through Redis (proxied calls, each one acquire and one release in
# Redis) beside the in-memory governor. All against Headroom's own mock, unlimited profile.
# Prints Markdown; writes nothing into the repository (node_modules aside).
#
#   bench/distributed/run.sh
#
# Settings (environment variables, defaults in brackets):
#   NODES [1 2 3]        cluster sizes to measure
#   N [5000]             jobs per measured run (after WARMUP more)
#   WARMUP [500]
#   CONCURRENCY [32]     submitters: keep-alive connections to the first node (it takes every
#                        POST; the jobs run on whichever node claims them)
#   WORKERS [64]         the upstream's max_concurrency (for the whole cluster)
#   DURATION [10s]       each wrk run (decisions/s); WRK_CONNECTIONS [32]
#   PG [postgres://postgres@127.0.0.1:5432/test]   a schema of its own per run, dropped after
#   REDIS [redis://127.0.0.1:6379]                  a key prefix of its own per run, deleted after
#   HEADROOM_BIN         a headroom binary to measure; unset = build this tree (release)
#   KEEP_TMP [0]         1 = keep the temporary directory (configs, logs)
# Machine: everything (nodes, PostgreSQL, Redis, mock, load) shares the one machine, so more
# nodes mostly share the same cores; the numbers show what the store and Redis cost, not
# horizontal scaling.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CLIENT="$ROOT/bench/jobs-throughput/bullmq"

NODES=${NODES:-1 2 3}
N=${N:-5000}
WARMUP=${WARMUP:-500}
CONCURRENCY=${CONCURRENCY:-32}
WORKERS=${WORKERS:-64}
DURATION=${DURATION:-10s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-32}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
REDIS=${REDIS:-redis://127.0.0.1:6379}
KEEP_TMP=${KEEP_TMP:-0}
export HEADROOM_SECRET_KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v node >/dev/null || die "node is needed"
command -v psql >/dev/null || die "psql is needed"
command -v redis-cli >/dev/null || die "redis-cli is needed"
command -v wrk >/dev/null || die "wrk is needed (apt-get install wrk)"
psql "$PG" -qAtc 'SELECT 1' >/dev/null || die "no PostgreSQL at $PG"
REDIS_HOSTPORT=${REDIS#redis://}
REDIS_HOSTPORT=${REDIS_HOSTPORT%%/*}
redis() { redis-cli -h "${REDIS_HOSTPORT%:*}" -p "${REDIS_HOSTPORT##*:}" "$@"; }
redis ping >/dev/null || die "no Redis at $REDIS"
if [ ! -d "$CLIENT/node_modules/undici" ]; then
    say "installing the load generator's packages (npm ci)"
    (cd "$CLIENT" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

if [ -z "${HEADROOM_BIN:-}" ]; then
    say "building headroom (release)"
    (cd "$ROOT" && cargo build --release -p headroom --quiet)
    HEADROOM_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/headroom"
fi
[ -x "$HEADROOM_BIN" ] || die "no headroom binary at $HEADROOM_BIN"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/headroom-distributed.XXXXXX")
PIDS=()
SCHEMAS=()
PREFIXES=()
cleanup() {
    local pid s p
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for s in "${SCHEMAS[@]}"; do psql "$PG" -qc "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true; done
    for p in "${PREFIXES[@]}"; do
        redis --scan --pattern "{$p:*" | xargs -r redis del >/dev/null 2>&1 || true
    done
    if [ "$KEEP_TMP" = 1 ]; then say "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000))
        port_free "$p" && { echo "$p"; return; }
    done
}
wait_port() { # port name pid
    local i
    for i in $(seq 1 200); do
        port_free "$1" || return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited at start; see $TMP (KEEP_TMP=1)"
        sleep 0.1
    done
    die "$2 did not listen on port $1"
}

UP_PORT=$(pick_port)
HEADROOM_LOG=warn "$HEADROOM_BIN" mock --listen "127.0.0.1:$UP_PORT" --profile unlimited \
    >"$TMP/mock.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_port "$UP_PORT" "the mock upstream" "$UP_PID"
UP_URL="http://127.0.0.1:$UP_PORT"

# A cluster of $1 nodes on a new schema and prefix (store/governor in $2/$3); sets NODE_PIDS
# and NODE_PORTS.
start_cluster() { # nodes store governor dir
    local n=$1 store=$2 governor=$3 dir=$4 i port
    mkdir -p "$dir"
    cat >"$dir/headroom.toml" <<CONF
store = "$store"
auth = "none"
governor = "$governor"

[[upstreams]]
name = "up"
base_url = "$UP_URL"
max_concurrency = $WORKERS
CONF
    NODE_PIDS=()
    NODE_PORTS=()
    for i in $(seq 1 "$n"); do
        port=$(pick_port)
        HEADROOM_LOG=warn "$HEADROOM_BIN" serve --config "$dir/headroom.toml" \
            --listen "127.0.0.1:$port" 2>"$dir/node$i.log" &
        NODE_PIDS+=("$!")
        PIDS+=("$!")
        NODE_PORTS+=("$port")
        wait_port "$port" "node $i" "$!"
    done
}
stop_cluster() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
new_schema() {
    local s="hrbench_$$_$RANDOM"
    psql "$PG" -qc "CREATE SCHEMA $s" >/dev/null
    SCHEMAS+=("$s")
    echo "$PG?options=-c%20search_path%3D$s"
}
new_prefix() {
    local p="hrbench$$r$RANDOM"
    PREFIXES+=("$p")
    echo "$p"
}

CORES=$(nproc)
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
PGV=$(psql "$PG" -qAtc 'SHOW server_version')
RV=$(redis info server | tr -d '\r' | sed -n 's/^redis_version://p')
echo "## Distributed mode ($CORES cores, $CPU; PostgreSQL $PGV, Redis $RV; $("$HEADROOM_BIN" --version 2>/dev/null || echo headroom))"
echo
echo "### Jobs per second, N=$N after $WARMUP, $CONCURRENCY submitters on node 1, upstream unlimited"
echo
echo "| nodes | store | governor | jobs/s end to end | submit/s | succeeded / upstream calls | jobs run per node |"
echo "| ---: | --- | --- | ---: | ---: | ---: | --- |"
for n in $NODES; do
    store=$(new_schema)
    prefix=$(new_prefix)
    start_cluster "$n" "$store" "$REDIS/?prefix=$prefix" "$TMP/jobs$n"
    node "$CLIENT/headroom.cjs" --url "http://127.0.0.1:${NODE_PORTS[0]}" --mock-url "$UP_URL" \
        --upstream up --n "$N" --warmup "$WARMUP" --concurrency "$CONCURRENCY" \
        --server-pid "${NODE_PIDS[0]}" --mock-pid "$UP_PID" >"$TMP/jobs$n.json"
    schema=${store##*%3D}
    spread=$(psql "$PG" -qAtc "SELECT string_agg(c::text, ' / ' ORDER BY c DESC) FROM (SELECT COUNT(*) AS c FROM $schema.jobs GROUP BY node) t")
    stop_cluster
    node -e '
        const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        console.log(`| ${process.argv[2]} | PostgreSQL | Redis | ${Math.round(r.e2e_rate)} | ` +
            `${Math.round(r.submit_rate)} | ${r.succeeded} / ${r.upstream_calls} | ${process.argv[3]} |`);
    ' "$TMP/jobs$n.json" "$n" "$spread"
done
echo
echo "### Governor decisions per second (proxied calls; wrk, $WRK_CONNECTIONS connections, $DURATION)"
echo
echo "| governor | calls/s | p50 | p99 |"
echo "| --- | ---: | ---: | ---: |"
for governor in memory redis; do
    store=$(new_schema)
    g=memory
    [ "$governor" = redis ] && g="$REDIS/?prefix=$(new_prefix)"
    start_cluster 1 "$store" "$g" "$TMP/wrk-$governor"
    url="http://127.0.0.1:${NODE_PORTS[0]}/proxy/up/x"
    wrk -t2 -c"$WRK_CONNECTIONS" -d2s -H 'headroom-tenant: acme' "$url" >/dev/null
    wrk -t2 -c"$WRK_CONNECTIONS" -d"$DURATION" --latency -H 'headroom-tenant: acme' "$url" \
        >"$TMP/wrk-$governor.txt"
    stop_cluster
    rps=$(awk '/^Requests\/sec/ {printf "%d", $2}' "$TMP/wrk-$governor.txt")
    p50=$(awk '$1 == "50%" {print $2}' "$TMP/wrk-$governor.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$TMP/wrk-$governor.txt")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$TMP/wrk-$governor.txt")
    [ -z "$non2xx" ] || say "warning: $non2xx non-2xx answers with the $governor governor"
    echo "| $governor | $rps | $p50 | $p99 |"
done
