#!/usr/bin/env bash
# Installs a Headroom .deb on this machine, starts the service once as the package's user (with
# systemd when it runs, else the unit's command by hand), checks /healthz, stops it with
# SIGTERM, checks a clean exit, and purges the package again.
#
#   deploy/debian/smoke.sh path/to/headroom_*.deb
set -euo pipefail
deb=$1
die() { echo "smoke: $*" >&2; exit 1; }
cleanup() {
    pkill -TERM -u headroom -f "headroom serve" 2>/dev/null || true
    dpkg --purge headroom >/dev/null 2>&1 || true
    deluser --system headroom >/dev/null 2>&1 || true
    rm -rf /var/lib/headroom
}
trap cleanup EXIT
port=7878
! curl -s -o /dev/null "http://127.0.0.1:$port/healthz" || die "port $port is taken; stop what listens there"

dpkg -i "$deb" >/dev/null
[ -x /usr/bin/headroom ] || die "no /usr/bin/headroom after dpkg -i"
getent passwd headroom >/dev/null || die "the package made no headroom user"
[ "$(stat -c %U:%a /var/lib/headroom)" = "headroom:700" ] || die "/var/lib/headroom is not headroom's, 0700"
headroom check-config /etc/headroom/headroom.toml

if [ "$(systemctl is-system-running 2>/dev/null || true)" != offline ] && pidof systemd >/dev/null; then
    systemctl start headroom
    for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
    curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" || die "the service does not answer /healthz"
    systemctl stop headroom
    [ "$(systemctl show -p ExecMainStatus --value headroom)" = 0 ] || die "the service did not exit 0"
else
    # No systemd here (a container): the unit's command, as its user, in its directory.
    log=$(mktemp)
    (cd /var/lib/headroom && exec runuser -u headroom -- \
        /usr/bin/headroom serve --config /etc/headroom/headroom.toml >"$log" 2>&1) &
    pid=$!
    for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
    curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" || { cat "$log" >&2; die "no answer on /healthz"; }
    # SIGTERM to Headroom itself (runuser would answer it by killing its session).
    pkill -TERM -u headroom -xf "/usr/bin/headroom serve --config /etc/headroom/headroom.toml"
    status=0
    wait "$pid" || status=$?
    [ "$status" = 0 ] || { cat "$log" >&2; die "headroom exited $status after SIGTERM"; }
    grep -q '"stopped"' "$log" || { cat "$log" >&2; die "no 'stopped' in the log"; }
    rm -f "$log"
fi
echo "smoke: $deb installs, serves /healthz as user headroom, and stops cleanly on SIGTERM"
