#!/usr/bin/env bash
# Proxy overhead: Headroom beside nginx `proxy_pass` and a bare hyper reverse proxy (hyper-proxy/),
# all in front of the same static upstream, measured with wrk in the same run. Prints Markdown
# tables; writes nothing into the repository.
#
#   bench/proxy-overhead/run.sh
#
# Settings (environment variables, defaults in brackets):
#   ROUNDS [3]            rounds; the order of the targets rotates from one round to the next
#   THREADS [2] CONNECTIONS [32] DURATION [15s]   the saturating load
#   LOW_DURATION [10s]    the low load: one connection, one request at a time
#   WARMUP [3s]           a warm-up of each target before the measured runs
#   NGINX_WORKERS [auto]  worker_processes of both nginx instances (auto = one per core,
#                         as Headroom's runtime has one worker thread per core)
#   HEADROOM_BIN          a headroom binary to measure; unset = build this tree (release)
#   HEADROOM_LABEL        what to call that binary in the report (e.g. the commit it is from)
#   AUTH [none]           none = the config says `auth = "none"` (the open-mode guard checks every
#                         call); token = no auth line, an admin token in HEADROOM_API_TOKEN, sent
#                         by wrk to Headroom as `Proxy-Authorization: Bearer …`
#   BARE [1]              1 = also measure a bare hyper reverse proxy: hyper-proxy/, the HTTP
#                         stack Headroom's proxy is built on and nothing else (built with cargo
#                         in release unless BARE_BIN is given; it is its own cargo workspace)
#   BARE_BIN              a bare-hyper-proxy binary to use instead of building one
#   BASE_BIN              a second headroom binary (e.g. an earlier commit), measured in the same
#                         run as "headroom-base"; BASE_LABEL names it in the report
#   BASE_AUTH_LINE        its config's auth line [as Headroom's]; set it empty for a binary older
#                         than the `auth` key (it refuses unknown keys)
#   QUIET_TIMEOUT [1800]  seconds to wait for other builds (rustc/cargo) to end before a run
#   OTHER_MAX [5]         a run during which other processes used more than this % of the
#                         machine's CPU time (or a build ran) is repeated, up to 5 times
#   LIMITS [0]            1 = a limited budget: Headroom's upstream has a configured limit (far
#                         above the load, so nothing waits) and every upstream answer carries
#                         X-RateLimit-Limit/-Remaining/-Reset, which Headroom reads back into the
#                         budget on every call (nginx and the bare proxy pass them through)
#   TENANTS [0]           N > 0 = each request names one of N tenants at random in
#                         Headroom-Tenant (a wrk Lua script, the same for every target): Headroom
#                         keeps a budget per tenant, so this measures N budgets
#   KEEP_TMP [0]          1 = keep the temporary directory (configs, logs, raw wrk output)
#   PROFILE [0]           1 = instead of the tables, record a perf CPU profile of headroom
#                         under the saturating load for DURATION (kept in the temp directory)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-15s}
LOW_DURATION=${LOW_DURATION:-10s}
WARMUP=${WARMUP:-3s}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-1800}
OTHER_MAX=${OTHER_MAX:-5}
KEEP_TMP=${KEEP_TMP:-0}
AUTH=${AUTH:-none}
BARE=${BARE:-1}
LIMITS=${LIMITS:-0}
TENANTS=${TENANTS:-0}
case "$AUTH" in
none) AUTH_LINE='auth = "none"' ;;
token) AUTH_LINE='' ;;
*) echo "error: AUTH is none or token" >&2; exit 1 ;;
esac
BASE_AUTH_LINE=${BASE_AUTH_LINE-$AUTH_LINE}

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------------------------
find_nginx() { command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
NGINX=$(find_nginx)
if [ -z "$NGINX" ] || ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
    [ "$(id -u)" = 0 ] || die "nginx, wrk and curl are needed: apt-get install nginx-light wrk curl"
    say "installing nginx, wrk and curl (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # nginx-light where it exists (bookworm has it as a transitional package for nginx).
    apt-get install -y -qq --no-install-recommends nginx-light wrk curl >/dev/null 2>&1 ||
        apt-get install -y -qq --no-install-recommends nginx wrk curl >/dev/null
    NGINX=$(find_nginx)
    [ -n "$NGINX" ] || die "nginx did not install"
fi

# One run at a time on a machine: two would measure each other.
exec 9>"${TMPDIR:-/tmp}/headroom-proxy-overhead.lock"
if ! flock -n 9; then
    say "another proxy-overhead run is in progress; waiting for it to end"
    flock 9
fi

# --- headroom --------------------------------------------------------------------------------
if [ -z "${HEADROOM_BIN:-}" ]; then
    # The release build with symbols (same code as release), so that PROFILE=1 can name
    # functions.
    say "building headroom (profiling profile: release with symbols)"
    (cd "$ROOT" && cargo build --profile profiling -p headroom --quiet)
    HEADROOM_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/profiling/headroom"
    HEADROOM_LABEL="built from $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
    (cd "$ROOT" && git status --porcelain 2>/dev/null | grep -q .) &&
        HEADROOM_LABEL="$HEADROOM_LABEL with uncommitted changes"
fi
[ -x "$HEADROOM_BIN" ] || die "no headroom binary at $HEADROOM_BIN"
[ -z "${BASE_BIN:-}" ] || [ -x "$BASE_BIN" ] || die "no headroom binary at $BASE_BIN"

# --- the bare hyper proxy ----------------------------------------------------------------------
if [ "$BARE" = 1 ] && [ -z "${BARE_BIN:-}" ]; then
    say "building the bare hyper proxy (release)"
    (cd "$HERE/hyper-proxy" && cargo build --release --quiet)
    BARE_BIN="$(cd "$HERE/hyper-proxy" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/bare-hyper-proxy"
fi
[ "$BARE" != 1 ] || [ -x "$BARE_BIN" ] || die "no bare hyper proxy at $BARE_BIN"

# --- processes and cleanup ---------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/headroom-proxy-overhead.XXXXXX")
chmod 755 "$TMP" # nginx workers may run as another user
PIDS=()
SAMPLER=
cleanup() {
    local pid
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$KEEP_TMP" = 1 ]; then say "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        port_free "$p" && { echo "$p"; return; }
    done
}
wait_port() { # port name pid
    local i
    for i in $(seq 1 100); do
        port_free "$1" || return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited at start; see $TMP"
        sleep 0.1
    done
    die "$2 did not listen on port $1"
}

UP_PORT=$(pick_port)
NGINX_PORT=$(pick_port)
HEADROOM_PORT=$(pick_port)
BARE_PORT=$(pick_port)
BASE_PORT=$(pick_port)
[ "$(printf '%s\n' "$UP_PORT" "$NGINX_PORT" "$HEADROOM_PORT" "$BARE_PORT" "$BASE_PORT" | sort -u | wc -l)" = 5 ] ||
    die "port clash; run again"

# Settings both nginx instances share: no access log, no per-connection request cap (nginx's
# default closes a keep-alive connection after 1,000 requests; hyper has no such cap).
nginx_common() { # dir
    cat <<EOF
worker_processes $NGINX_WORKERS;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() { # dir
    cat <<EOF
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

# The upstream: a static JSON answer from nginx, the same for all three targets.
mkdir -p "$TMP/upstream" "$TMP/nginx"
{
    nginx_common "$TMP/upstream"
    echo "http {"
    nginx_http_common "$TMP/upstream"
    cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT;
        location / {
            default_type application/json;
$(if [ "$LIMITS" = 1 ]; then
        echo "            add_header X-RateLimit-Limit 100000000 always;"
        echo "            add_header X-RateLimit-Remaining 99999999 always;"
        echo "            add_header X-RateLimit-Reset 1 always;"
    fi)
            return 200 '{"ok":true}';
        }
    }
}
EOF
} >"$TMP/upstream/nginx.conf"

# nginx as the reverse proxy: pooled HTTP/1.1 connections to the upstream, like Headroom's.
{
    nginx_common "$TMP/nginx"
    echo "http {"
    nginx_http_common "$TMP/nginx"
    cat <<EOF
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$TMP/nginx/nginx.conf"

headroom_config() { # dir auth-line
    mkdir -p "$1"
    cat >"$1/headroom.toml" <<EOF
store = "sqlite://$1/headroom.db"
$2

[[upstreams]]
name = "up"
base_url = "http://127.0.0.1:$UP_PORT"
max_concurrency = 10000
$([ "$LIMITS" = 1 ] && echo 'limits = [{ quota = 100000000, window = "1s" }]')
EOF
}
headroom_config "$TMP/headroom" "$AUTH_LINE"
[ -z "${BASE_BIN:-}" ] || headroom_config "$TMP/headroom-base" "$BASE_AUTH_LINE"
TOKEN=
[ "$AUTH" = token ] && TOKEN="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

start_nginx() { # dir port name
    "$NGINX" -e "$1/error.log" -p "$1" -c "$1/nginx.conf" -g 'daemon off;' \
        >"$1/stdout.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_port "$2" "$3" "$LAST_PID"
}
start_nginx "$TMP/upstream" "$UP_PORT" "upstream nginx"
UP_PID=$LAST_PID
start_nginx "$TMP/nginx" "$NGINX_PORT" "nginx"
NGINX_PID=$LAST_PID
start_headroom() { # bin dir port name
    (
        cd "$2"
        if [ -n "$TOKEN" ]; then export HEADROOM_API_TOKEN=$TOKEN; else unset HEADROOM_API_TOKEN; fi
        HEADROOM_LOG=warn exec "$1" serve --config "$2/headroom.toml" \
            --listen "127.0.0.1:$3" 2>"$2/headroom.log"
    ) &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_port "$3" "$4" "$LAST_PID"
}
start_headroom "$HEADROOM_BIN" "$TMP/headroom" "$HEADROOM_PORT" headroom
HEADROOM_PID=$LAST_PID

TARGETS=(direct nginx)
declare -A URL=(
    [direct]="http://127.0.0.1:$UP_PORT/ok"
    [nginx]="http://127.0.0.1:$NGINX_PORT/ok"
    [headroom]="http://127.0.0.1:$HEADROOM_PORT/proxy/up/ok"
)
# Whose CPU time is reported per request: the proxy's (for direct, the upstream's).
declare -A SERVER=([direct]=$UP_PID [nginx]=$NGINX_PID [headroom]=$HEADROOM_PID)
# A header wrk sends to that target only (the token, to Headroom).
declare -A HEADER=()
if [ "$BARE" = 1 ]; then
    "$BARE_BIN" "127.0.0.1:$BARE_PORT" "http://127.0.0.1:$UP_PORT" >"$TMP/hyper.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_port "$BARE_PORT" "bare hyper proxy" "$LAST_PID"
    TARGETS+=(hyper)
    URL[hyper]="http://127.0.0.1:$BARE_PORT/ok"
    SERVER[hyper]=$LAST_PID
fi
TARGETS+=(headroom)
if [ -n "${BASE_BIN:-}" ]; then
    start_headroom "$BASE_BIN" "$TMP/headroom-base" "$BASE_PORT" headroom-base
    TARGETS+=(headroom-base)
    URL[headroom-base]="http://127.0.0.1:$BASE_PORT/proxy/up/ok"
    SERVER[headroom-base]=$LAST_PID
fi
if [ -n "$TOKEN" ]; then
    HEADER[headroom]="Proxy-Authorization: Bearer $TOKEN"
    HEADER[headroom-base]="Proxy-Authorization: Bearer $TOKEN"
fi
with_hdr() { # target command...: the command with the target's header (-H …) appended
    local t=$1
    shift
    local -a extra=()
    [ -z "${HEADER[$t]:-}" ] || extra=(-H "${HEADER[$t]}")
    "$@" "${extra[@]}"
}
for t in "${TARGETS[@]}"; do
    body=$(with_hdr "$t" curl -fsS "${URL[$t]}") || die "$t: ${URL[$t]} does not answer 200"
    [ "$body" = '{"ok":true}' ] || die "$t: unexpected body $body"
    if [ -n "${HEADER[$t]:-}" ]; then # and without its token, it refuses
        code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$t]}")
        [ "$code" = 401 ] || die "$t: answers $code without a token (401 expected)"
    fi
done

# --- profiling (PROFILE=1): a CPU profile of headroom under the saturating load, no table ---
if [ "${PROFILE:-0}" = 1 ]; then
    command -v perf >/dev/null || die "PROFILE=1 needs perf (apt-get install linux-perf)"
    KEEP_TMP=1
    with_hdr headroom wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${URL[headroom]}" >/dev/null
    say "profiling headroom for $DURATION under wrk -t$THREADS -c$CONNECTIONS"
    # cpu-clock: virtual machines often have no hardware counters. DWARF call graphs: the
    # release profile has debug line tables but no frame pointers.
    perf record -q -e cpu-clock -F "${PROFILE_FREQ:-499}" --call-graph dwarf,16384 \
        -p "$HEADROOM_PID" -o "$TMP/perf.data" &
    perf_pid=$!
    with_hdr headroom wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${URL[headroom]}" >"$TMP/wrk-profile.txt"
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    grep -E 'Requests/sec|50%|99%' "$TMP/wrk-profile.txt" >&2
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

wait_quiet() {
    local waited=0
    while builds_running; do
        if [ "$waited" -ge "$QUIET_TIMEOUT" ]; then
            say "warning: builds still running after ${QUIET_TIMEOUT}s; measuring anyway"
            return 1
        fi
        [ $((waited % 60)) = 0 ] && say "waiting for other builds (rustc/cargo) to end"
        sleep 5
        waited=$((waited + 5))
    done
}

# CPU accounting, in clock ticks (/proc/PID/stat), to see whether anything else ran during a
# measurement. other_ticks: CPU time of every process that is not this script or one of its
# descendants (our servers, wrk) and not a kernel thread; a process's time includes its waited-for
# children's, so short-lived processes under a live parent (a test binary under cargo) count too.
other_snapshot() { # file
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v self="$$" '
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
                if (p != self && !kthread[pid] && pid != 2 && ppid[pid] != 2) print pid, ticks[pid]
            }
        }' >"$1"
}
other_ticks() { # before after
    awk 'NR == FNR { before[$1] = $2; next } { sum += $2 - before[$1] } END { print sum + 0 }' "$1" "$2"
}
total_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t; exit }' /proc/stat; }

group_ticks() { # pids: their CPU time and their children's (nginx workers)
    local pid sum=0 f
    local -a a
    for pid in "$@" $(for p in "$@"; do pgrep -P "$p" || true; done); do
        f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a a <<<"${f##*) }" # a[11], a[12]: utime, stime
        sum=$((sum + a[11] + a[12]))
    done
    echo "$sum"
}

RAW="$TMP/raw.tsv" # load round target rps p50_us p99_us non2xx socket_errors requests other_cpu_pct server_cpu_us disturbed

# Reads wrk --latency output: requests/s, p50 and p99 in µs, non-2xx count, socket errors,
# requests.
parse_wrk() {
    awk '
        function us(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return (v + 0) * 1000
            if (v ~ /m$/) return (v + 0) * 60e6
            if (v ~ /s$/) return (v + 0) * 1e6
            return -1
        }
        /^ +50%/ { p50 = us($2) }
        /^ +99%/ { p99 = us($2) }
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { requests = $1 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(",", ""); errs = $4 + $6 + $8 + $10 }
        END {
            if (rps == "" || p50 == "" || p99 == "") exit 1
            printf "%s\t%.2f\t%.2f\t%d\t%d\t%d\n", rps, p50, p99, non2xx + 0, errs + 0, requests
        }' "$1"
}

measure() { # load round target wrk-args...
    local load=$1 round=$2 target=$3 attempt disturbed quiet sampler other out
    local total0 total1 server0 server1
    shift 3
    out="$TMP/wrk-$load-$round-$target.txt"
    for attempt in 1 2 3 4 5; do
        disturbed=0
        quiet=1
        wait_quiet || quiet=0
        rm -f "$TMP/busy"
        (while :; do builds_running && touch "$TMP/busy"; sleep 0.5; done) &
        sampler=$!
        SAMPLER=$sampler
        other_snapshot "$TMP/other0"
        total0=$(total_ticks)
        server0=$(group_ticks "${SERVER[$target]}")
        with_hdr "$target" wrk "$@" "${URL[$target]}" >"$out"
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        SAMPLER=
        total1=$(total_ticks)
        other_snapshot "$TMP/other1"
        server1=$(group_ticks "${SERVER[$target]}")
        other=$(((100 * $(other_ticks "$TMP/other0" "$TMP/other1")) / (total1 - total0 > 0 ? total1 - total0 : 1)))
        [ -e "$TMP/busy" ] && disturbed=1
        [ "$other" -gt "$OTHER_MAX" ] && disturbed=1
        [ "$disturbed" = 0 ] || [ "$quiet" = 0 ] || [ "$attempt" = 5 ] && break
        say "  something else ran during $load/$target, round $round (other CPU $other %); measuring again"
        sleep 10
    done
    local row
    row=$(parse_wrk "$out") || die "cannot read wrk's output: $out"
    local requests cpu_us
    requests=$(cut -f6 <<<"$row")
    cpu_us=$(awk -v t=$((server1 - server0)) -v hz="$(getconf CLK_TCK)" -v n="$requests" \
        'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$load" "$round" "$target" "$row" "$other" "$cpu_us" "$disturbed" >>"$RAW"
    say "  $load round $round $target: $(cut -f1-3 <<<"$row" | awk -F'\t' '{printf "%.0f req/s, p50 %.0f us, p99 %.0f us", $1, $2, $3}'), $cpu_us us CPU/request, other CPU $other %"
}

WRK_SCRIPT=()
if [ "$TENANTS" -gt 0 ]; then
    # A random tenant per request, beside the headers given with -H (the token).
    cat >"$TMP/tenants.lua" <<LUA
math.randomseed(os.time())
request = function()
    local headers = {}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    headers["Headroom-Tenant"] = "t" .. math.random($TENANTS)
    return wrk.format(nil, nil, headers)
end
LUA
    WRK_SCRIPT=(-s "$TMP/tenants.lua")
fi
SAT_ARGS=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${WRK_SCRIPT[@]}")
LOW_ARGS=(-t1 -c1 -d"$LOW_DURATION" --latency "${WRK_SCRIPT[@]}")

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
say "warming up"
for t in "${TARGETS[@]}"; do with_hdr "$t" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${WRK_SCRIPT[@]}" "${URL[$t]}" >/dev/null; done

for load in saturated low; do
    say "$load load"
    for round in $(seq 1 "$ROUNDS"); do
        # Rotate the order so that each target takes each position once every N rounds.
        for i in $(seq 0 $((${#TARGETS[@]} - 1))); do
            t=${TARGETS[$(((i + round - 1) % ${#TARGETS[@]}))]}
            if [ "$load" = saturated ]; then
                measure "$load" "$round" "$t" "${SAT_ARGS[@]}"
            else
                measure "$load" "$round" "$t" "${LOW_ARGS[@]}"
            fi
        done
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "a server (upstream, a proxy or headroom) died during the run; see $TMP"
done
for log in "$TMP"/headroom*/headroom.log; do
    if grep -q '"level":"ERROR"' "$log" 2>/dev/null; then
        say "warning: headroom logged errors; see $log (KEEP_TMP=1)"
    fi
done

# --- report ------------------------------------------------------------------------------------
nginx_version=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
wrk_version=$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $2}')
headroom_version=$("$HEADROOM_BIN" --version 2>/dev/null || echo headroom)

report() {
    awk -F'\t' -v rounds="$ROUNDS" -v args_saturated="wrk ${SAT_ARGS[*]}" -v args_low="wrk ${LOW_ARGS[*]}" -v other_max="$OTHER_MAX" -v target_list="${TARGETS[*]}" '
        function median(list,   n, v, i, j, t) {
            n = split(list, v, " ")
            for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
            return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        function ms(us) { return sprintf("%.3f ms", us / 1000) }
        function added(us) { return sprintf("%+.3f ms", us / 1000) }
        {
            key = $1 SUBSEP $3
            rps[key] = rps[key] " " $4; p50[key] = p50[key] " " $5; p99[key] = p99[key] " " $6
            bad[$1] += $7 + $8; dist[$1] += $12; other[$1] = other[$1] " " $10; cpu[key] = cpu[key] " " $11
        }
        END {
            split("saturated low", loads, " ")
            nt = split(target_list, targets, " ")
            bare = 0
            for (t = 1; t <= nt; t++) if (targets[t] == "hyper") bare = 1
            name["direct"] = "direct (no proxy)"; name["nginx"] = "nginx"; name["hyper"] = "bare hyper"
            name["headroom"] = "Headroom"; name["headroom-base"] = "Headroom (base)"
            title["saturated"] = "Saturated"
            title["low"] = "Low load"
            for (l = 1; l <= 2; l++) {
                load = loads[l]
                if (!((load SUBSEP "direct") in rps)) continue
                for (t = 1; t <= nt; t++) {
                    k = load SUBSEP targets[t]
                    R[targets[t]] = median(rps[k]); P50[targets[t]] = median(p50[k]); P99[targets[t]] = median(p99[k]); C[targets[t]] = median(cpu[k])
                }
                printf "%s (%s; median of %d runs each)\n\n", title[load], (load == "low" ? args_low : args_saturated), rounds
                printf "| target | req/s | p50 | p99 | added p50 | added p99 | req/s vs nginx |%s CPU per request |\n", (bare ? " req/s vs bare hyper |" : "")
                printf "|---|---:|---:|---:|---:|---:|---:|%s---:|\n", (bare ? "---:|" : "")
                for (t = 1; t <= nt; t++) {
                    n = targets[t]
                    printf "| %s | %.0f | %s | %s | %s | %s | %.0f %% |%s %.1f µs |\n", name[n], R[n], ms(P50[n]), ms(P99[n]),
                        (n == "direct" ? "–" : added(P50[n] - P50["direct"])),
                        (n == "direct" ? "–" : added(P99[n] - P99["direct"])),
                        100 * R[n] / R["nginx"], (bare ? sprintf(" %.0f %% |", 100 * R[n] / R["hyper"]) : ""), C[n]
                }
                printf "\nCPU per request: CPU time of the proxy (nginx master and workers, the bare hyper proxy, or headroom) per request; for direct, of the upstream.\n"
                printf "CPU used by anything else during a run: median %s %% of the machine; runs disturbed (a build, or more than %s %%): %d; non-2xx or socket errors: %d\n\n",
                    median(other[load]), other_max, dist[load], bad[load]
            }
        }' "$RAW"
}

{
    echo "## Proxy overhead — $STARTED"
    echo
    echo "$headroom_version (${HEADROOM_LABEL:-$HEADROOM_BIN}), auth mode: $AUTH$([ "$AUTH" = token ] && echo ' (Proxy-Authorization: Bearer sent by wrk)');"
    [ -z "${BASE_BIN:-}" ] || echo "base: $("$BASE_BIN" --version 2>/dev/null || echo headroom) (${BASE_LABEL:-$BASE_BIN}), config auth line: '${BASE_AUTH_LINE}';"
    [ "$BARE" != 1 ] || echo "bare hyper proxy: bench/proxy-overhead/hyper-proxy ($BARE_BIN);"
    [ "$LIMITS" != 1 ] || echo "limited budget: a configured limit of 100,000,000 per 1s and X-RateLimit-* headers on every answer;"
    [ "$TENANTS" = 0 ] || echo "tenants: one of $TENANTS at random per request (Headroom-Tenant, a wrk Lua script for every target);"
    echo "$nginx_version; wrk $wrk_version; nginx worker_processes $NGINX_WORKERS; TOKIO_WORKER_THREADS ${TOKIO_WORKER_THREADS:-unset};"
    echo "$(nproc) CPUs, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1);"
    echo "load average before $LOAD_BEFORE, after $LOAD_AFTER"
    echo
    report
    echo "<details><summary>every run</summary>"
    echo
    echo "| load | round | target | req/s | p50 (µs) | p99 (µs) | CPU per request (µs) | non-2xx | socket errors | other CPU (%) |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' '{ printf "| %s | %s | %s | %.0f | %.0f | %.0f | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $11, $7, $8, $10 }' "$RAW"
    echo
    echo "</details>"
}
