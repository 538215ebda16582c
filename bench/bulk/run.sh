#!/usr/bin/env bash
# Salesforce Bulk API 2.0 loads end to end: `headroom serve` (embedded SQLite store) in front of
# `headroom mock --profile salesforce-bulk2`, a batch of N records submitted from a CSV with
# `headroom batches submit --records-csv`, timed from the submission to the batch's final
# state. The mock processes instantly (PROCESSING_US per record, 0 by default), so the figure
# is Headroom's own ceiling: CSV building, upload, polling, results matching and the store.
# Prints Markdown; writes nothing into the repository.
#
#   bench/bulk/run.sh
#
# Settings (environment variables, defaults in brackets):
#   N [100000]  records per load     PER_JOB [10000]  max_batch_size (records per bulk job)
#   ROUNDS [3]  loads, one after the other on the same server (medians reported)
#   PROCESSING_US [0]  the mock's processing time per record, in microseconds
#   HEADROOM_BIN  a headroom binary to measure; unset = build this tree (release)
set -euo pipefail
N=${N:-100000} PER_JOB=${PER_JOB:-10000} ROUNDS=${ROUNDS:-3} PROCESSING_US=${PROCESSING_US:-0}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${HEADROOM_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p headroom)
  HEADROOM_BIN="${CARGO_TARGET_DIR:-$root/target}/release/headroom"
fi
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(port) hr_port=$(port)
"$HEADROOM_BIN" mock --profile salesforce-bulk2 --limit 1000000 --window 1s \
  --listen "127.0.0.1:$mock_port" >"$tmp/mock.log" 2>&1 &
pids+=($!)
cat >"$tmp/headroom.toml" <<TOML
store = "sqlite://$tmp/headroom.db"
auth = "none"
[[upstreams]]
name = "salesforce"
provider = "salesforce"
base_url = "http://127.0.0.1:$mock_port"
limits = [{ name = "api-usage", quota = 1000000, window = "1s" }]
TOML
HEADROOM_LOG=warn "$HEADROOM_BIN" serve --config "$tmp/headroom.toml" --listen "127.0.0.1:$hr_port" >"$tmp/headroom.log" 2>&1 &
hr_pid=$!
pids+=($hr_pid)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$hr_port/healthz" >/dev/null && curl -sf "http://127.0.0.1:$mock_port/_mock/bulk/stats" >/dev/null && break; sleep 0.1; done
curl -sf -X POST "http://127.0.0.1:$mock_port/_mock/bulk/config" -H 'content-type: application/json' \
  -d "{\"processing_base_ms\": 0, \"processing_per_record_us\": $PROCESSING_US}" >/dev/null
python3 - "$N" >"$tmp/accounts.csv" <<'PY'
import sys
n = int(sys.argv[1])
print("External_Id__c,Name,Phone,BillingCity")
for i in range(n):
    name = "" if i % 50 == 7 else f"\"Account {i}, Inc.\""
    print(f"e{i},{name},555-{i:06d},Springfield")
PY
cat >"$tmp/load.json" <<JSON
{"upstream": "salesforce", "tenant": "acme", "format": "salesforce-bulk2", "max_batch_size": $PER_JOB,
 "request": {"method": "POST", "path": "/services/data/v62.0/jobs/ingest",
             "body": {"object": "Account", "operation": "upsert", "externalIdFieldName": "External_Id__c"}}}
JSON
cpu() { awk '{print $14 + $15}' "/proc/$hr_pid/stat"; }
tick=$(getconf CLK_TCK)
results=()
for r in $(seq "$ROUNDS"); do
  sed -i "s/\"tenant\": \"[a-z0-9]*\"/\"tenant\": \"t$r\"/" "$tmp/load.json"
  cpu0=$(cpu)
  t0=$(date +%s.%N)
  id=$("$HEADROOM_BIN" batches submit "$tmp/load.json" --records-csv "$tmp/accounts.csv" \
        --server "http://127.0.0.1:$hr_port" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  t1=$(date +%s.%N)
  while :; do
    view=$(curl -sf "http://127.0.0.1:$hr_port/v1/batches/$id?failures_limit=0")
    status=$(printf '%s' "$view" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["status"] if v["pending"] == 0 else "running")')
    case "$status" in succeeded|completed_with_failures) break ;; cancelled) echo "cancelled?" >&2; exit 1 ;; esac
    sleep 0.05
  done
  t2=$(date +%s.%N)
  cpu1=$(cpu)
  line=$(printf '%s' "$view" | python3 -c '
import json,sys
v=json.load(sys.stdin); t0,t1,t2,c,tick,n=map(float,sys.argv[1:])
print("%.0f %.2f %.2f %.1f %s %s %s %s" % (n/(t2-t0), t1-t0, t2-t0, c/tick/n*1e6, v["succeeded"], v["failed"], v["calls"], len(v["bulk_jobs"])))' \
    "$t0" "$t1" "$t2" "$((cpu1 - cpu0))" "$tick" "$N")
  results+=("$line")
done
echo "| round | records/s end to end | submit (s) | total (s) | Headroom CPU per record (µs) | succeeded | failed | calls | bulk jobs |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
i=0
for line in "${results[@]}"; do
  i=$((i + 1))
  set -- $line
  echo "| $i | $1 | $2 | $3 | $4 | $5 | $6 | $7 | $8 |"
done
echo
echo "N=$N records (2 % without a Name), $PER_JOB per job, mock processing ${PROCESSING_US} µs/record; $(nproc) cores; $(uname -r)"
