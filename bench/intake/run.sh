#!/usr/bin/env bash
# Webhook intake beside the jobs API, in one run: wrk POSTs signed Shopify-style deliveries
# (a unique X-Shopify-Webhook-Id each) to /intake/shop, and job submissions to /v1/jobs, on the
# same `headroom serve` (embedded SQLite store, or PostgreSQL with STORE=postgres). Both store a
# job before answering; the jobs go to `headroom mock --profile unlimited`.
# Then the proxy under an intake burst: proxied calls (GET /proxy/worker/ok, one connection,
# one call at a time) alone, while a second wrk floods /intake/shop, and, as the anchor, while
# it floods /v1/jobs with as many connections. Fails if intake answered any delivery as a
# duplicate (every event id must be new). Prints Markdown; writes nothing into the repository.
#
#   bench/intake/run.sh
#   STORE=postgres bench/intake/run.sh
#
# Settings (environment variables, defaults in brackets):
#   ROUNDS [3]  THREADS [2]  CONNECTIONS [32]  DURATION [10s, in s]
#   STORE [sqlite]  sqlite = a file in the temporary directory; postgres = a fresh database
#                   on PG_HOST [127.0.0.1] PG_PORT [5432] as PG_USER [postgres] (created with
#                   psql, dropped at exit; HEADROOM_SECRET_KEY is set to a bench key if unset)
#   PROXY [1]      1 = also measure the proxy under an intake burst (the second table)
#   QUIET_TIMEOUT [1800]  seconds to wait for other builds (rustc/cargo) to end before a run
#   OTHER_MAX [5]  a run during which a build ran, or other processes used more than this % of
#                  the machine's CPU time, is measured again (up to 3 times in all)
#   DRAIN_TIMEOUT [900]   seconds to wait for the jobs of a flood to finish before the next
#                  proxy run
#   HEADROOM_BIN   a headroom binary to measure; unset = build this tree (release)
#   KEEP_TMP [0]   1 = keep the temporary directory
set -euo pipefail
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-2} CONNECTIONS=${CONNECTIONS:-32} DURATION=${DURATION:-10s}
STORE=${STORE:-sqlite} PROXY=${PROXY:-1}
PG_HOST=${PG_HOST:-127.0.0.1} PG_PORT=${PG_PORT:-5432} PG_USER=${PG_USER:-postgres}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-1800} DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-900} OTHER_MAX=${OTHER_MAX:-5}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
say() { printf '%s\n' "$*" >&2; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
case "$DURATION" in *[0-9]s) dur_s=${DURATION%s} ;; *) echo "DURATION is in seconds, like 10s" >&2; exit 1 ;; esac
case "$STORE" in
sqlite) ;;
postgres) command -v psql >/dev/null || { echo "STORE=postgres needs psql" >&2; exit 1; } ;;
*) echo "STORE is sqlite or postgres" >&2; exit 1 ;;
esac
if [ -z "${HEADROOM_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p headroom)
  HEADROOM_BIN="${CARGO_TARGET_DIR:-$root/target}/release/headroom"
fi
tmp=$(mktemp -d)
db=
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -z "$db" ] || psql_admin "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || say "could not drop database $db"
  [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
psql_admin() { psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qAt -c "$1"; }
if [ "$STORE" = postgres ]; then
  psql_admin 'SELECT 1' >/dev/null || { echo "no PostgreSQL at $PG_USER@$PG_HOST:$PG_PORT" >&2; exit 1; }
  db="headroom_bench_intake_$$_$RANDOM"
  psql_admin "CREATE DATABASE $db" >/dev/null
  store="postgres://$PG_USER@$PG_HOST:$PG_PORT/$db"
  # A node on PostgreSQL refuses to start without a key for credentials (none are stored here).
  export HEADROOM_SECRET_KEY=${HEADROOM_SECRET_KEY:-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f}
  store_label="PostgreSQL $(psql_admin 'SHOW server_version' | cut -d' ' -f1) (a fresh database, $PG_HOST)"
else
  store="sqlite://$tmp/headroom.db"
  store_label="embedded SQLite"
fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(port) hr_port=$(port)
"$HEADROOM_BIN" mock --profile unlimited --listen "127.0.0.1:$mock_port" >"$tmp/mock.log" 2>&1 &
pids+=($!)
secret=bench-intake-secret
body='{"id":632910392,"title":"IPod Nano - 8GB","vendor":"Apple"}'
sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" -binary | base64)
cat >"$tmp/headroom.toml" <<TOML
store = "$store"
auth = "none"
[[upstreams]]
name = "worker"
base_url = "http://127.0.0.1:$mock_port"
[[sources]]
name = "shop"
verify = "shopify"
secret = "$secret"
event_id = "header:X-Shopify-Webhook-Id"
tenant = "header:X-Shopify-Shop-Domain"
[sources.route]
upstream = "worker"
path = "/hooks/products/{/id}"
TOML
"$HEADROOM_BIN" check-config "$tmp/headroom.toml" >/dev/null
HEADROOM_LOG=warn "$HEADROOM_BIN" serve --config "$tmp/headroom.toml" --listen "127.0.0.1:$hr_port" >"$tmp/headroom.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$hr_port/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$hr_port/healthz" >/dev/null || { echo "headroom did not start:" >&2; cat "$tmp/headroom.log" >&2; exit 1; }
# Event ids unique across threads and runs: wrk seeds every thread's math.random alike, so
# the run's id (an argument after --) and the thread's number make the prefix; a repeated id
# would be acknowledged as a duplicate without storing a job (the check at the end counts them).
cat >"$tmp/intake.lua" <<LUA
local n = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end
function init(args)
  tid = args[1] .. "-" .. thread_no
end
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Shopify-Hmac-Sha256"] = "$sig"
wrk.headers["X-Shopify-Shop-Domain"] = "acme.myshopify.com"
request = function()
  n = n + 1
  wrk.headers["X-Shopify-Webhook-Id"] = tid .. "-" .. n
  return wrk.format(nil, "/intake/shop")
end
LUA
cat >"$tmp/jobs.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"upstream":"worker","tenant":"acme","request":{"method":"POST","path":"/hooks/products/632910392","body":{"id":632910392,"title":"IPod Nano - 8GB","vendor":"Apple"}}}'
wrk.headers["Content-Type"] = "application/json"
request = function() return wrk.format(nil, "/v1/jobs") end
LUA

# A quiet machine before each run, as bench/proxy-overhead does: no rustc or cargo running.
# A run during which a build ran, or other processes took more than OTHER_MAX % of the CPU
# time, is disturbed: measured again, and counted if the last attempt still is.
builds_running() { pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; }
waited_total=0 repeated=0 disturbed=0
wait_quiet() {
  local waited=0
  while builds_running; do
    [ "$waited" -ge "$QUIET_TIMEOUT" ] && { say "warning: builds still running after ${QUIET_TIMEOUT}s; measuring anyway"; return; }
    [ $((waited % 60)) = 0 ] && say "waiting for other builds (rustc/cargo) to end"
    sleep 5
    waited=$((waited + 5)) waited_total=$((waited_total + 5))
  done
}
# CPU ticks of every live process outside this script's tree (PostgreSQL counts as ours), as
# in bench/proxy-overhead but without the waited-for children's time (a long-lived child reaped
# during a run would put its whole life into the run); builds are caught by builds_running.
other_snapshot() { # file
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v self="$$" '
    { line = $0; pid = $1; pg[pid] = ($2 == "(postgres)"); sub(/^.*\) /, "", line); split(line, f, " ")
      ppid[pid] = f[2]; kthread[pid] = int(f[7] / 2097152) % 2; ticks[pid] = f[12] + f[13] }
    END { for (pid in ticks) { p = pid; for (d = 0; p > 1 && p != self && d < 64; d++) p = ppid[p]
      if (p != self && !kthread[pid] && !pg[pid] && pid != 2 && ppid[pid] != 2) print pid, ticks[pid] } }' >"$1"
}
total_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t; exit }' /proc/stat; }
sampler= total0=
watch_start() {
  wait_quiet
  rm -f "$tmp/busy"
  (while :; do builds_running && touch "$tmp/busy"; sleep 0.5; done) &
  sampler=$!
  other_snapshot "$tmp/other0"
  total0=$(total_ticks)
}
watch_stop() { # what; fails if the run was disturbed
  local other
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  other_snapshot "$tmp/other1"
  other=$(awk -v total=$(($(total_ticks) - total0)) 'NR == FNR { b[$1] = $2; next } { sum += $2 - b[$1] }
    END { printf "%d", 100 * sum / (total > 0 ? total : 1) }' "$tmp/other0" "$tmp/other1")
  other=$((other > 100 ? 100 : other))
  if [ -e "$tmp/busy" ] || [ "$other" -gt "$OTHER_MAX" ]; then
    say "  disturbed: $1 (a build: $([ -e "$tmp/busy" ] && echo yes || echo no), other CPU $other %)"
    return 1
  fi
}
check_2xx() { # what wrk-output
  local errors
  errors=$(awk '/Non-2xx/ {print $NF}' "$2")
  [ -z "$errors" ] || { echo "$1: $errors non-2xx answers" >&2; cat "$2" >&2; exit 1; }
}

# Both paths warm up once; then rounds alternate their order.
runs=0
for what in intake jobs; do
  runs=$((runs + 1))
  wrk -t1 -c4 -d2s -s "$tmp/$what.lua" "http://127.0.0.1:$hr_port" -- "$runs" >/dev/null
done
declare -A rps p50 p99
for r in $(seq "$ROUNDS"); do
  order="intake jobs"; [ $((r % 2)) = 0 ] && order="jobs intake"
  for what in $order; do
    for attempt in 1 2 3; do
      watch_start
      runs=$((runs + 1))
      wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$tmp/$what.lua" "http://127.0.0.1:$hr_port" -- "$runs" >"$tmp/out.txt"
      watch_stop "$what, round $r" && break
      [ "$attempt" = 3 ] && disturbed=$((disturbed + 1)) || { repeated=$((repeated + 1)); sleep 10; }
    done
    check_2xx "$what" "$tmp/out.txt"
    out=$(cat "$tmp/out.txt")
    rps[$what]+="$(printf '%s\n' "$out" | awk '/Requests\/sec/ {print $2}') "
    p50[$what]+="$(printf '%s\n' "$out" | awk '$1=="50%" {print $2}') "
    p99[$what]+="$(printf '%s\n' "$out" | awk '$1=="99%" {print $2}') "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | python3 -c '
import sys,re
def ms(v):
    m=re.match(r"([0-9.]+)(us|ms|s)$", v)
    return float(m[1])*{"us":0.001,"ms":1,"s":1000}[m[2]] if m else float(v)
xs=sorted(ms(l.strip()) for l in sys.stdin)
print(round(xs[len(xs)//2], 3))'; }
echo "| path | acks/s (median of $ROUNDS) | p50 ms | p99 ms |"
echo "|---|---:|---:|---:|"
for what in intake jobs; do
  label=$([ $what = intake ] && echo 'POST /intake/shop (verify + store a job)' || echo 'POST /v1/jobs (store a job)')
  echo "| $label | $(echo "${rps[$what]}" | median) | $(echo "${p50[$what]}" | median) | $(echo "${p99[$what]}" | median) |"
done
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds alternating; $(nproc) cores; $(uname -r); store: $store_label"
duplicates() { # the counter appears with its first duplicate
  curl -sf "http://127.0.0.1:$hr_port/metrics" | awk '/^headroom_intake_deliveries_total/ && /outcome="duplicate"/ {d = $NF} END {print d + 0}'
}
[ "$(duplicates)" = 0 ] || { echo "intake answered $(duplicates) deliveries as duplicates: the event ids repeated" >&2; exit 1; }
quiet_line() { echo "waited ${waited_total}s in all for other builds before runs; runs measured again (a build or other CPU above $OTHER_MAX %): $repeated; runs still disturbed after 3 attempts: $disturbed"; }
[ "$PROXY" = 1 ] || { quiet_line; exit 0; }

# --- the proxy under an intake burst --------------------------------------------------------
# Every flood leaves jobs behind (they run against the mock); each proxy run starts once the
# store holds no unfinished job, so that "alone" is alone and each flood starts from the same
# state.
hr="http://127.0.0.1:$hr_port"
drain() {
  local waited=0 s
  while :; do
    local busy=0
    for s in queued running retry_pending; do
      curl -sf "$hr/v1/jobs?status=$s&limit=1" | grep -q '"jobs":\[\]' || busy=1
    done
    [ "$busy" = 0 ] && return
    [ "$waited" -ge "$DRAIN_TIMEOUT" ] && { echo "jobs still unfinished after ${DRAIN_TIMEOUT}s" >&2; exit 1; }
    sleep 1
    waited=$((waited + 1))
  done
}
proxy_url="$hr/proxy/worker/ok"
code=$(curl -s -o /dev/null -w '%{http_code}' "$proxy_url")
[ "$code" = 200 ] || { echo "$proxy_url answers $code (200 expected)" >&2; exit 1; }
say "proxy under an intake burst: draining the first part's jobs"
drain
wrk -t1 -c1 -d2s "$proxy_url" >/dev/null
declare -A prps pp50 pp99
for r in $(seq "$ROUNDS"); do
  # Rotate: each background load takes each position once every 3 rounds.
  loads=(alone intake jobs)
  for i in 0 1 2; do
    bg=${loads[$(((i + r - 1) % 3))]}
    for attempt in 1 2 3; do
      drain
      watch_start
      flood=
      if [ "$bg" != alone ]; then
        # The flood starts a second before the measured proxy run and ends a second after it.
        runs=$((runs + 1))
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$((dur_s + 2))s" -s "$tmp/$bg.lua" "$hr" -- "$runs" >"$tmp/flood.txt" &
        flood=$!
        sleep 1
      fi
      wrk -t1 -c1 -d"$DURATION" --latency "$proxy_url" >"$tmp/proxy.txt"
      [ -z "$flood" ] || wait "$flood"
      watch_stop "proxy ($bg), round $r" && break
      [ "$attempt" = 3 ] && disturbed=$((disturbed + 1)) || { repeated=$((repeated + 1)); sleep 10; }
    done
    check_2xx "proxy ($bg)" "$tmp/proxy.txt"
    [ -z "$flood" ] || check_2xx "$bg flood" "$tmp/flood.txt"
    v_rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/proxy.txt")
    v_p50=$(awk '$1=="50%" {print $2}' "$tmp/proxy.txt")
    v_p99=$(awk '$1=="99%" {print $2}' "$tmp/proxy.txt")
    prps[$bg]+="$v_rps " pp50[$bg]+="$v_p50 " pp99[$bg]+="$v_p99 "
    say "  round $r, proxy with $bg: $v_rps req/s, p50 $v_p50, p99 $v_p99$([ -z "$flood" ] || awk '/Requests\/sec/ {printf "; flood %s req/s", $2}' "$tmp/flood.txt")"
  done
done
echo
echo "| background load | proxy req/s at 1 connection (median of $ROUNDS) | p50 ms | p99 ms |"
echo "|---|---:|---:|---:|"
for bg in alone intake jobs; do
  case $bg in
  alone) label='none (proxy alone)' ;;
  intake) label="POST /intake/shop flood, $CONNECTIONS connections" ;;
  jobs) label="POST /v1/jobs flood, $CONNECTIONS connections (anchor)" ;;
  esac
  echo "| $label | $(echo "${prps[$bg]}" | median) | $(echo "${pp50[$bg]}" | median) | $(echo "${pp99[$bg]}" | median) |"
done
echo
[ "$(duplicates)" = 0 ] || { echo "intake answered $(duplicates) deliveries as duplicates: the event ids repeated" >&2; exit 1; }
echo "proxy: wrk -t1 -c1 -d$DURATION --latency GET /proxy/worker/ok; floods: wrk -t$THREADS -c$CONNECTIONS, from 1 s before to 1 s after; $ROUNDS rounds, order rotating; each run after the jobs of the last flood finished"
quiet_line
