#!/usr/bin/env bash
# The API contract test, against a live `headroom serve` (with a mock upstream): a Python client
# generated from the served /openapi.json (openapi-python-client, PyPI) submits, reads and lists
# a job (.ci/client_check.py); then schemathesis (PyPI) generates requests from the document
# and fails on any 5xx, any answer that breaks the document (status, content type, headers,
# body schema), and any problem+json without a `detail` (hooks in .ci/contract_hooks.py).
#
#   .ci/contract.sh [path/to/headroom]     (default: target/debug/headroom of CARGO_TARGET_DIR)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:-${CARGO_TARGET_DIR:-$HERE/../target}/debug/headroom}
MAX_EXAMPLES=${MAX_EXAMPLES:-25}

if ! command -v schemathesis >/dev/null 2>&1 || ! command -v openapi-python-client >/dev/null 2>&1; then
    echo "installing schemathesis and openapi-python-client (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check 'schemathesis>=4,<5' \
        'openapi-python-client>=0.20'
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d)
MOCK_PORT=$(free_port)
PORT=$(free_port)
TOKEN=contract-admin-token
cleanup() {
    kill "${SERVER_PID:-}" "${MOCK_PID:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

cat > "$DIR/headroom.toml" <<TOML
listen = "127.0.0.1:$PORT"
store = "sqlite://$DIR/headroom.db"

[[upstreams]]
name = "crm"
base_url = "http://127.0.0.1:$MOCK_PORT"

[[upstreams.limits]]
quota = 100
window = "1s"

[callbacks]
allow = ["127.0.0.1"]
TOML

"$BIN" mock --listen "127.0.0.1:$MOCK_PORT" --limit 1000 --window 1s > "$DIR/mock.log" 2>&1 &
MOCK_PID=$!
HEADROOM_API_TOKEN=$TOKEN "$BIN" serve --config "$DIR/headroom.toml" > "$DIR/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "-- a client generated from /openapi.json"
curl -fsS "http://127.0.0.1:$PORT/openapi.json" -o "$DIR/openapi.json"
openapi-python-client generate --path "$DIR/openapi.json" --output-path "$DIR/client" >/dev/null
python3 "$HERE/client_check.py" "$DIR/client" "http://127.0.0.1:$PORT" "$TOKEN"

echo "-- schemathesis"
status=0
SCHEMATHESIS_HOOKS=contract_hooks PYTHONPATH="$HERE" schemathesis run \
    "http://127.0.0.1:$PORT/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,problem_has_detail \
    --exclude-path-regex '^/proxy/' \
    --max-examples "$MAX_EXAMPLES" \
    --seed 1 \
    --generation-deterministic \
    --no-color \
    --warnings off || status=$?
if [ "$status" != 0 ]; then
    echo "--- headroom serve log (tail)"; tail -n 40 "$DIR/serve.log"
fi
exit "$status"
