#!/usr/bin/env bash
# Durable jobs end to end: Headroom (POST /v1/jobs, embedded SQLite store, dispatcher, governor)
# beside BullMQ (Redis, a Node worker) doing the same work on the same machine: N jobs, each one
# HTTP POST to the same unlimited local upstream, timed from the first submit to the last
# completion. Prints Markdown; writes nothing into the repository (node_modules aside).
#
#   bench/jobs-throughput/run.sh
#
# Settings (environment variables, defaults in brackets):
#   N [20000]            jobs per measured run
#   WARMUP [1000]        jobs submitted and finished before each measured run (same process)
#   ROUNDS [3]           runs of each system; the order rotates from one round to the next
#   CONCURRENCY [64]     submitters: keep-alive connections to Headroom, concurrent queue.add
#                        calls, concurrent addBulk calls
#   WORKERS [64]         calls to the upstream at once: Headroom's upstream max_concurrency,
#                        BullMQ's Worker concurrency
#   CHUNK [500]          jobs per queue.addBulk call (BullMQ bulk mode)
#   BULLMQ_MODES [add bulk]   add: queue.add, as Headroom's one-job POSTs; bulk: queue.addBulk
#   REDIS_HOST [127.0.0.1] REDIS_PORT [6379] REDIS_DB [15]  (the DB is flushed before each run)
#   BULLMQ_AOF [1]       1 = also BullMQ (queue.add) on a private redis-server started here with
#                        appendonly yes, appendfsync everysec: Headroom's durability (survives
#                        kill -9, not power loss); needs redis-server
#   HEADROOM_BIN         a headroom binary to measure; unset = build this tree (release)
#   HEADROOM_LABEL       what to call that binary in the report
#   QUIET_TIMEOUT [1800] seconds to wait for builds (rustc/cargo) and other load to end
#   OTHER_MAX [5]        a run during which other processes used more than this % of the
#                        machine's CPU time (or a build ran) is repeated, up to 5 times
#   KEEP_TMP [0]         1 = keep the temporary directory (configs, logs, databases, raw runs)
#   PROFILE [0]          1 = instead of the tables, one Headroom run under `perf record`
#                        (needs perf); prints the hottest symbols and keeps perf.data
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CLIENT="$HERE/bullmq"

N=${N:-20000}
WARMUP=${WARMUP:-1000}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-64}
WORKERS=${WORKERS:-64}
CHUNK=${CHUNK:-500}
BULLMQ_MODES=${BULLMQ_MODES:-add bulk}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_DB=${REDIS_DB:-15}
BULLMQ_AOF=${BULLMQ_AOF:-1}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-1800}
OTHER_MAX=${OTHER_MAX:-5}
KEEP_TMP=${KEEP_TMP:-0}
PROFILE=${PROFILE:-0}

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------------------------
command -v node >/dev/null && command -v npm >/dev/null || die "node (20.18 or later) and npm are needed"
command -v redis-cli >/dev/null || die "redis-cli is needed (apt-get install redis-server)"
if [ ! -d "$CLIENT/node_modules/bullmq" ] || [ ! -d "$CLIENT/node_modules/undici" ] ||
    [ ! -d "$CLIENT/node_modules/ioredis" ]; then
    say "installing the load generators' packages (npm ci)"
    (cd "$CLIENT" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# --- processes and cleanup ---------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/headroom-jobs-throughput.XXXXXX")
PIDS=()
REDIS_STARTED=0
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" flushdb >/dev/null 2>&1 || true
    if [ "$REDIS_STARTED" = 1 ]; then
        redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    fi
    if [ "$KEEP_TMP" = 1 ]; then say "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- redis -------------------------------------------------------------------------------------
redis() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "$@"; }
if ! redis ping >/dev/null 2>&1; then
    [ "$REDIS_HOST" = 127.0.0.1 ] && command -v redis-server >/dev/null ||
        die "no Redis at $REDIS_HOST:$REDIS_PORT"
    say "starting redis-server on 127.0.0.1:$REDIS_PORT (no persistence, as CI starts it)"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null
    REDIS_STARTED=1
    for _ in $(seq 1 50); do redis ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis ping >/dev/null 2>&1 || die "redis-server did not start"
fi
REDIS_PID=$(redis info server | tr -d '\r' | sed -n 's/^process_id://p')
REDIS_VERSION=$(redis info server | tr -d '\r' | sed -n 's/^redis_version://p')
REDIS_SAVE=$(redis config get save | tr -d '\r' | sed -n 2p)
REDIS_AOF=$(redis config get appendonly | tr -d '\r' | sed -n 2p)
REDIS_FSYNC=$(redis config get appendfsync | tr -d '\r' | sed -n 2p)
PERSISTENCE="no persistence (save \"$REDIS_SAVE\", appendonly $REDIS_AOF)"
[ -n "$REDIS_SAVE" ] || [ "$REDIS_AOF" = yes ] &&
    PERSISTENCE="save \"$REDIS_SAVE\", appendonly $REDIS_AOF (appendfsync $REDIS_FSYNC)"

# --- headroom --------------------------------------------------------------------------------
if [ -z "${HEADROOM_BIN:-}" ]; then
    say "building headroom (release)"
    (cd "$ROOT" && cargo build --release -p headroom --quiet)
    HEADROOM_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/headroom"
    HEADROOM_LABEL="built from $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
    (cd "$ROOT" && git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | grep -q .) &&
        HEADROOM_LABEL="$HEADROOM_LABEL with uncommitted changes"
fi
[ -x "$HEADROOM_BIN" ] || die "no headroom binary at $HEADROOM_BIN"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local p
    while :; do
        # Below the kernel's ephemeral range (32768-60999 by default), where a client's
        # outgoing connection could hold the port.
        p=$((20000 + RANDOM % 12000))
        port_free "$p" && { echo "$p"; return; }
    done
}
wait_port() { # port name pid
    local i
    for i in $(seq 1 100); do
        port_free "$1" || return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited at start; see $TMP (KEEP_TMP=1)"
        sleep 0.1
    done
    die "$2 did not listen on port $1"
}

# The upstream: Headroom's own mock, unlimited profile (no limit, no rate-limit headers), the
# same process for both systems.
UP_PORT=$(pick_port)
HEADROOM_LOG=warn "$HEADROOM_BIN" mock --listen "127.0.0.1:$UP_PORT" --profile unlimited \
    >"$TMP/mock.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_port "$UP_PORT" "the mock upstream" "$UP_PID"
UP_URL="http://127.0.0.1:$UP_PORT"
curl -fsS -X POST -H 'content-type: application/json' -d '{"n":1}' "$UP_URL/x" >/dev/null ||
    die "the mock upstream does not answer"

# A fresh Headroom (new database) for each run; sets HR_PID and HR_PORT.
start_headroom() { # dir
    local dir=$1
    mkdir -p "$dir"
    HR_PORT=$(pick_port)
    [ "$HR_PORT" != "$UP_PORT" ] || HR_PORT=$(pick_port)
    cat >"$dir/headroom.toml" <<EOF
store = "sqlite://$dir/headroom.db"
auth = "none"

[[upstreams]]
name = "up"
base_url = "$UP_URL"
max_concurrency = $WORKERS
EOF
    (
        cd "$dir"
        unset HEADROOM_API_TOKEN
        HEADROOM_LOG=warn exec "$HEADROOM_BIN" serve --config "$dir/headroom.toml" \
            --listen "127.0.0.1:$HR_PORT" 2>"$dir/headroom.log"
    ) &
    HR_PID=$!
    PIDS+=("$HR_PID")
    wait_port "$HR_PORT" headroom "$HR_PID"
}
stop_headroom() {
    kill "$HR_PID" 2>/dev/null || true
    wait "$HR_PID" 2>/dev/null || true
    if grep -q '"level":"ERROR"' "$1/headroom.log" 2>/dev/null; then
        say "warning: headroom logged errors; see $1/headroom.log (KEEP_TMP=1)"
    fi
}

headroom_client() { # extra args
    node "$CLIENT/headroom.cjs" --url "http://127.0.0.1:$HR_PORT" --mock-url "$UP_URL" \
        --concurrency "$CONCURRENCY" --server-pid "$HR_PID" --mock-pid "$UP_PID" "$@"
}

# --- profiling (PROFILE=1) ---------------------------------------------------------------------
if [ "$PROFILE" = 1 ]; then
    command -v perf >/dev/null || die "PROFILE=1 needs perf (apt-get install linux-perf)"
    KEEP_TMP=1
    start_headroom "$TMP/profile"
    headroom_client --n "$WARMUP" --warmup 0 >/dev/null
    say "profiling headroom while $N jobs go through"
    # cpu-clock: virtual machines often have no hardware counters. DWARF call graphs: the
    # release profile has debug line tables but no frame pointers.
    perf record -q -e cpu-clock -F "${PROFILE_FREQ:-999}" --call-graph dwarf,16384 \
        -p "$HR_PID" -o "$TMP/perf.data" &
    perf_pid=$!
    sleep 1
    headroom_client --n "$N" --warmup 0 --verify 0 | tee "$TMP/profile-run.json" >&2
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    stop_headroom "$TMP/profile"
    perf report -i "$TMP/perf.data" --no-children --sort dso,sym --stdio -g none \
        --percent-limit 0.7 2>/dev/null | grep -v '^$'
    echo
    echo "perf data: $TMP/perf.data; for example:"
    echo "  perf report -i $TMP/perf.data --children --sort sym --stdio -G"
    echo "  perf report -i $TMP/perf.data --no-children --sort srcline --stdio -g none"
    exit 0
fi

# --- measuring ---------------------------------------------------------------------------------
builds_running() { pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; }

# CPU accounting, in clock ticks (/proc/PID/stat), to see whether anything else ran during a
# run. other_ticks: CPU time of every process that is not this script or one of its
# descendants (the servers, the load generators), not Redis and not a kernel thread; a
# process's time includes its waited-for children's.
other_snapshot() { # file
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v self="$$" -v redis="$REDIS_PID" '
        {
            line = $0
            pid = $1
            sub(/^.*\) /, "", line) # after the command name, which may hold spaces
            split(line, f, " ")     # f[1] state, f[2] ppid, f[7] flags, f[12..15] u/s/cu/cs time
            ppid[pid] = f[2]
            kthread[pid] = int(f[7] / 2097152) % 2 # PF_KTHREAD
            ticks[pid] = f[12] + f[13] + f[14] + f[15]
        }
        END {
            for (pid in ticks) {
                p = pid
                for (depth = 0; p > 1 && p != self && depth < 64; depth++) p = ppid[p]
                if (p != self && pid != redis && !kthread[pid] && pid != 2 && ppid[pid] != 2) print pid, ticks[pid]
            }
        }' >"$1"
}
other_ticks() { # before after
    awk 'NR == FNR { before[$1] = $2; next } { sum += $2 - before[$1] } END { print sum + 0 }' "$1" "$2"
}
total_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t; exit }' /proc/stat; }
other_pct() { # before after total0 total1
    echo $(((100 * $(other_ticks "$1" "$2")) / ($4 - $3 > 0 ? $4 - $3 : 1)))
}

# Waits until no build runs and other processes use at most OTHER_MAX % over 3 s.
wait_quiet() {
    local waited=0 t0 t1
    while :; do
        if ! builds_running; then
            other_snapshot "$TMP/quiet0"
            t0=$(total_ticks)
            sleep 3
            t1=$(total_ticks)
            other_snapshot "$TMP/quiet1"
            [ "$(other_pct "$TMP/quiet0" "$TMP/quiet1" "$t0" "$t1")" -le "$OTHER_MAX" ] && return 0
        else
            sleep 3
        fi
        waited=$((waited + 3))
        if [ "$waited" -ge "$QUIET_TIMEOUT" ]; then
            say "warning: the machine is still busy after ${QUIET_TIMEOUT}s; measuring anyway"
            return 1
        fi
        [ $((waited % 60)) -lt 3 ] && say "waiting for other builds or load to end"
    done
}

RAW="$TMP/runs.jsonl"

# One measured run of a side: repeated while disturbed (up to 5 times). The side's function
# writes its JSON line to "$TMP/out.json".
measure() { # round name function
    local round=$1 name=$2 fn=$3 attempt quiet sampler other t0 t1 disturbed
    for attempt in 1 2 3 4 5; do
        quiet=1
        wait_quiet || quiet=0
        rm -f "$TMP/busy"
        (while :; do builds_running && touch "$TMP/busy"; sleep 0.5; done) &
        sampler=$!
        other_snapshot "$TMP/other0"
        t0=$(total_ticks)
        "$fn" "$round"
        t1=$(total_ticks)
        other_snapshot "$TMP/other1"
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        other=$(other_pct "$TMP/other0" "$TMP/other1" "$t0" "$t1")
        disturbed=0
        [ -e "$TMP/busy" ] && disturbed=1
        [ "$other" -gt "$OTHER_MAX" ] && disturbed=1
        if [ "$disturbed" = 0 ] || [ "$quiet" = 0 ] || [ "$attempt" = 5 ]; then break; fi
        say "  something else ran during $name, round $round (other CPU $other %); measuring again"
        sleep 10
    done
    node -e '
        const fs = require("fs");
        const r = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
        Object.assign(r, { round: +process.argv[2], other_pct: +process.argv[3], disturbed: +process.argv[4] });
        fs.appendFileSync(process.argv[5], JSON.stringify(r) + "\n");
        console.error(`  round ${r.round} ${r.system} (${r.mode}${r.redis ? `; Redis: ${r.redis}` : ""}): ${Math.round(r.e2e_rate)} jobs/s end to end, ` +
            `submit ${Math.round(r.submit_rate)}/s (p50 ${r.submit_p50_ms.toFixed(1)} ms, p99 ${r.submit_p99_ms.toFixed(1)} ms), ` +
            `${r.succeeded} succeeded, ${r.upstream_calls} upstream calls, other CPU ${r.other_pct} %`);
    ' "$TMP/out.json" "$round" "$other" "$disturbed" "$RAW"
}

run_headroom() { # round
    local dir="$TMP/headroom-$1-$RANDOM"
    start_headroom "$dir"
    headroom_client --n "$N" --warmup "$WARMUP" >"$TMP/out.json" ||
        die "the Headroom run failed; see $dir (KEEP_TMP=1)"
    stop_headroom "$dir"
}

bullmq_run() { # mode host port db persistence
    node "$CLIENT/bullmq.cjs" --mode "$1" --redis-host "$2" --redis-port "$3" --redis-db "$4" \
        --redis "$5" --upstream-url "$UP_URL" --mock-pid "$UP_PID" --n "$N" \
        --warmup "$WARMUP" --concurrency "$CONCURRENCY" --worker-concurrency "$WORKERS" \
        --chunk "$CHUNK" >"$TMP/out.json" || die "the BullMQ run ($1, Redis $5) failed"
}
run_bullmq_add() { bullmq_run add "$REDIS_HOST" "$REDIS_PORT" "$REDIS_DB" "$PERSISTENCE"; }
run_bullmq_bulk() { bullmq_run bulk "$REDIS_HOST" "$REDIS_PORT" "$REDIS_DB" "$PERSISTENCE"; }
run_bullmq_aof() { bullmq_run add 127.0.0.1 "$AOF_PORT" 0 "AOF, appendfsync everysec"; }

SIDES=(headroom)
for m in $BULLMQ_MODES; do
    case $m in
    add) SIDES+=(bullmq_add) ;;
    bulk) SIDES+=(bullmq_bulk) ;;
    *) die "BULLMQ_MODES: $m is not add or bulk" ;;
    esac
done

# BullMQ with Headroom's durability: a private Redis (its own port and directory) that appends
# every write to its AOF before answering and fsyncs the file every second.
if [ "$BULLMQ_AOF" = 1 ]; then
    command -v redis-server >/dev/null || die "BULLMQ_AOF=1 needs redis-server (or BULLMQ_AOF=0)"
    AOF_PORT=$(pick_port)
    mkdir -p "$TMP/redis-aof"
    redis-server --bind 127.0.0.1 --port "$AOF_PORT" --save "" --appendonly yes \
        --appendfsync everysec --dir "$TMP/redis-aof" --logfile "$TMP/redis-aof/redis.log" \
        --daemonize no >/dev/null &
    AOF_PID=$!
    PIDS+=("$AOF_PID")
    wait_port "$AOF_PORT" "redis-server (AOF)" "$AOF_PID"
    for _ in $(seq 1 50); do redis-cli -p "$AOF_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    SIDES+=(bullmq_aof)
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
say "N=$N (after $WARMUP warm-up jobs), $ROUNDS rounds of: ${SIDES[*]}"
for round in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $((${#SIDES[@]} - 1))); do
        side=${SIDES[$(((i + round - 1) % ${#SIDES[@]}))]}
        measure "$round" "$side" "run_$side"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
kill -0 "$UP_PID" 2>/dev/null || die "the mock upstream died during the run"

# --- report ------------------------------------------------------------------------------------
bullmq_version=$(node -p 'require(process.argv[1]).version' "$CLIENT/node_modules/bullmq/package.json")
ioredis_version=$(node -p 'require(process.argv[1]).version' "$CLIENT/node_modules/ioredis/package.json")
undici_version=$(node -p 'require(process.argv[1]).version' "$CLIENT/node_modules/undici/package.json")
headroom_version=$("$HEADROOM_BIN" --version 2>/dev/null || echo headroom)

{
    echo "## Jobs end to end — $STARTED"
    echo
    echo "$headroom_version (${HEADROOM_LABEL:-$HEADROOM_BIN}), SQLite store (WAL, synchronous=NORMAL);"
    echo "BullMQ $bullmq_version with ioredis $ioredis_version on Redis $REDIS_VERSION, $PERSISTENCE;"
    echo "Node $(node --version), undici $undici_version; upstream: \`headroom mock --profile unlimited\`;"
    echo "$(nproc) CPUs, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1);"
    echo "load average before $LOAD_BEFORE, after $LOAD_AFTER."
    echo "N = $N jobs per run after $WARMUP warm-up jobs; $CONCURRENCY submitters; $WORKERS calls to the upstream at once"
    echo "(Headroom: upstream \`max_concurrency = $WORKERS\`; BullMQ: Worker \`concurrency: $WORKERS\`); median of $ROUNDS runs (range in brackets)."
    echo
    node "$CLIENT/report.cjs" "$RAW"
    echo
    echo "Durability at the acknowledgement: Headroom answers 202 after the job's SQLite transaction is"
    echo "committed to the WAL (synchronous=NORMAL: survives kill -9 of the server, not a power loss or OS"
    echo "crash). BullMQ's add resolves when Redis has the job; the shared Redis ($REDIS_HOST:$REDIS_PORT) has"
    echo "$PERSISTENCE, so there a Redis restart loses every job."
    if [ "$BULLMQ_AOF" = 1 ]; then
        echo "The \"AOF, appendfsync everysec\" rows use a private redis-server $REDIS_VERSION that writes each"
        echo "command to its append-only file before answering and fsyncs it every second: like Headroom's store,"
        echo "it survives kill -9, and a power loss may lose the last second."
    fi
}
