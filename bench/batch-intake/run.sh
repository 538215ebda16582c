#!/usr/bin/env bash
# Batch intake memory: the peak RSS of `headroom serve` while it takes N large batches posted
# at once (issue: a 61 MB batch took ~260 MB, 8 at once 2.1 GB). Prints one JSON line per run:
# the RSS once /healthz answers (idle) and the peak (VmHWM) when the last answer is back.
#
#   HEADROOM_BIN  [target/release/headroom]  the binary to measure
#   RECORDS       [100000]                   records per batch (~610 bytes each: ~61 MB)
#   CONCURRENT    ["1 8"]                    batches posted at once, one run each
#   TENANTS       [one]                      one = every batch is tenant "acme"; each = batch i
#                                            is tenant "ten<i>" (from 5049fe8 one tenant holds at
#                                            most 64 MiB of the intake, so with `one` the others
#                                            are refused with 429 instead of waiting for room)
#   AUTH_LINE     [auth = "none"]            the config's auth line; set it empty for a binary
#                                            older than the `auth` key (8daf0f7 and before: they
#                                            refuse unknown keys, and were open without a token)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${HEADROOM_BIN:-${CARGO_TARGET_DIR:-target}/release/headroom}
RECORDS=${RECORDS:-100000}
AUTH_LINE=${AUTH_LINE-auth = \"none\"}
[ -x "$BIN" ] || { echo "error: no headroom binary at $BIN" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT

TENANTS=${TENANTS:-one}
case "$TENANTS" in one | each) ;; *) echo "error: TENANTS is one or each" >&2; exit 1 ;; esac
python3 - "$RECORDS" >"$TMP/records.part" <<'PY'
import json, sys
n = int(sys.argv[1])
pad = "x" * 520
records = ",".join(
    json.dumps({"id": f"r{i}", "properties": {"email": f"user{i}@example.com", "note": pad}})
    for i in range(n))
sys.stdout.write(' "records": [' + records + ']}')
PY
batch() { # i: the body of batch i (tenant "acme", or "ten<i>" with TENANTS=each)
    local tenant=acme
    [ "$TENANTS" = each ] && tenant="ten$1"
    printf '{"upstream": "crm", "tenant": "%s", "format": "hubspot", "max_batch_size": 100, "request": {"method": "POST", "path": "/crm/v3/objects/contacts/batch/upsert"},' "$tenant"
    cat "$TMP/records.part"
}
for i in $(seq 0 $(($(printf '%s\n' ${CONCURRENT:-1 8} | sort -n | tail -1) - 1))); do
    batch "$i" >"$TMP/batch-$i.json"
done
SIZE=$(stat -c %s "$TMP/batch-0.json")

for n in ${CONCURRENT:-1 8}; do
    dir="$TMP/run$n"; mkdir -p "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$dir/headroom.toml" <<TOML
listen = "127.0.0.1:$port"
store = "sqlite://$dir/headroom.db"
$AUTH_LINE
[[upstreams]]
name = "crm"
base_url = "http://127.0.0.1:9"
TOML
    HEADROOM_LOG=warn "$BIN" serve --config "$dir/headroom.toml" 2>"$dir/log" &
    pid=$!
    up=0
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && { up=1; break; }; sleep 0.1; done
    [ "$up" = 1 ] || { echo "error: headroom did not start ($BIN):" >&2; cat "$dir/log" >&2; exit 1; }
    idle=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    start=$(date +%s.%N)
    for i in $(seq 0 $((n - 1))); do
        curl -s -o /dev/null -w '%{http_code}\n' -H 'content-type: application/json' \
            --data-binary @"$TMP/batch-$i.json" "http://127.0.0.1:$port/v1/batches" >>"$dir/codes" &
    done
    wait $(jobs -p | grep -v "^$pid\$") 2>/dev/null || true
    end=$(date +%s.%N)
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    codes=$(sort "$dir/codes" | uniq -c | awk '{printf "%s%s:%s", sep, $2, $1; sep=","}')
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf '{"batches": %d, "tenants": "%s", "batch_bytes": %d, "idle_rss_mib": %.0f, "peak_rss_mib": %.0f, "seconds": %.1f, "statuses": "%s"}\n' \
        "$n" "$TENANTS" "$SIZE" "$(echo "$idle / 1024" | bc -l)" "$(echo "$hwm / 1024" | bc -l)" "$(echo "$end - $start" | bc -l)" "$codes"
done
