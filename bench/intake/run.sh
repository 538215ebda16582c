#!/usr/bin/env bash
# Webhook intake beside the jobs API, in one run: wrk POSTs signed Shopify-style deliveries
# (a unique X-Shopify-Webhook-Id each) to /intake/shop, and job submissions to /v1/jobs, on the
# same `headroom serve` (embedded SQLite store). Both store a job before answering; the jobs
# go to `headroom mock --profile unlimited`. Prints Markdown; writes nothing into the repository.
#
#   bench/intake/run.sh
#
# Settings (environment variables, defaults in brackets):
#   ROUNDS [3]  THREADS [2]  CONNECTIONS [32]  DURATION [10s]
#   HEADROOM_BIN   a headroom binary to measure; unset = build this tree (release)
#   KEEP_TMP [0]   1 = keep the temporary directory
set -euo pipefail
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-2} CONNECTIONS=${CONNECTIONS:-32} DURATION=${DURATION:-10s}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
if [ -z "${HEADROOM_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p headroom)
  HEADROOM_BIN="${CARGO_TARGET_DIR:-$root/target}/release/headroom"
fi
tmp=$(mktemp -d)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$tmp"; }
pids=()
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(port) hr_port=$(port)
"$HEADROOM_BIN" mock --profile unlimited --listen "127.0.0.1:$mock_port" >"$tmp/mock.log" 2>&1 &
pids+=($!)
secret=bench-intake-secret
body='{"id":632910392,"title":"IPod Nano - 8GB","vendor":"Apple"}'
sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" -binary | base64)
cat >"$tmp/headroom.toml" <<TOML
store = "sqlite://$tmp/headroom.db"
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
HEADROOM_LOG=warn "$HEADROOM_BIN" serve --config "$tmp/headroom.toml" --listen "127.0.0.1:$hr_port" >"$tmp/headroom.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$hr_port/healthz" >/dev/null && break; sleep 0.1; done
cat >"$tmp/intake.lua" <<LUA
local n = 0
local tid = tostring(math.random(1, 1e9))
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
# Both paths warm up once; then rounds alternate their order.
for what in intake jobs; do
  wrk -t1 -c4 -d2s -s "$tmp/$what.lua" "http://127.0.0.1:$hr_port" >/dev/null
done
declare -A rps p50 p99
for r in $(seq "$ROUNDS"); do
  order="intake jobs"; [ $((r % 2)) = 0 ] && order="jobs intake"
  for what in $order; do
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$tmp/$what.lua" "http://127.0.0.1:$hr_port")
    errors=$(printf '%s\n' "$out" | awk '/Non-2xx/ {print $NF}')
    [ -n "$errors" ] && { echo "$what: $errors non-2xx answers" >&2; printf '%s\n' "$out" >&2; exit 1; }
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
print(xs[len(xs)//2])'; }
echo "| path | acks/s (median of $ROUNDS) | p50 ms | p99 ms |"
echo "|---|---:|---:|---:|"
for what in intake jobs; do
  label=$([ $what = intake ] && echo 'POST /intake/shop (verify + store a job)' || echo 'POST /v1/jobs (store a job)')
  echo "| $label | $(echo "${rps[$what]}" | median) | $(echo "${p50[$what]}" | median) | $(echo "${p99[$what]}" | median) |"
done
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds alternating; $(nproc) cores; $(uname -r)"
