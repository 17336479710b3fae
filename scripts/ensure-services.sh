#!/usr/bin/env bash
# Make sure a local Redis (and, with `postgres`, PostgreSQL) answers.
#
#   scripts/ensure-services.sh redis [URL]   # make run: Redis only
#   scripts/ensure-services.sh postgres      # make test and CI: PostgreSQL on 127.0.0.1:5432
#   scripts/ensure-services.sh tools         # make test and CI: chromium, nginx and wrk
#
# Something already answering is left alone. Otherwise the server is started
# if installed, installed with apt-get first when missing and we are root, or
# a message says what to do. Only local addresses are ever started.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '%s\n' "$*" >&2; }

apt_updated=""
apt_install() {  # package...
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "error: $* not installed; install (Debian: apt-get install $*) or point the URL at a running server."
        exit 1
    fi
    say "installing $* with apt-get ..."
    [ -n "$apt_updated" ] || apt-get update -qq
    apt_updated=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() {  # host port name
    for _ in $(seq 1 50); do tcp_open "$1" "$2" && return 0; sleep 0.2; done
    say "error: $3 did not start on $1:$2"; exit 1
}

ensure_redis() {
    local url="${1:-${REDIS_URL:-redis://127.0.0.1:6379/0}}"
    # Sentinel and Cluster are the operator's servers: never started here.
    case "$url" in redis+*) return 0;; esac
    local hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
    local host="${hostport%%:*}" port="${hostport##*:}"
    [ "$port" = "$hostport" ] && port=6379
    tcp_open "$host" "$port" && return 0
    case "$host" in 127.0.0.1|localhost) ;; *) say "error: Redis at $host:$port does not answer"; exit 1;; esac
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p .run
    say "starting redis-server on 127.0.0.1:$port (no persistence; data in .run/) ..."
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$PWD/.run" --logfile "$PWD/.run/redis-$port.log" --pidfile "$PWD/.run/redis-$port.pid"
    wait_for 127.0.0.1 "$port" redis-server
}

ensure_postgres() {
    tcp_open 127.0.0.1 5432 && return 0
    if ! command -v pg_ctlcluster >/dev/null; then
        apt_install postgresql
    fi
    local version; version="$(ls /etc/postgresql | sort -V | tail -1)"
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    # A fresh Debian install asks TCP clients for a password; the test suite
    # connects as postgres over loopback, as on the CI machine.
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    fi
    say "starting PostgreSQL $version ..."
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for 127.0.0.1 5432 PostgreSQL
}

# What the suite drives besides the servers: Debian's chromium for the board
# page's browser tests, nginx for the deploy recipe's test, wrk for the
# benchmark harness's smoke run.
ensure_tools() {
    local missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v wrk >/dev/null || missing+=(wrk)
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_install "${missing[@]}"
    # nginx's package starts the stock site on port 80; the tests run their own nginx.
    if pgrep -x nginx >/dev/null; then nginx -s stop 2>/dev/null || true; fi
}

case "${1:-}" in
    redis) ensure_redis "${2:-}" ;;
    postgres) ensure_postgres ;;
    tools) ensure_tools ;;
    *) say "usage: $0 redis [URL] | postgres | tools"; exit 2 ;;
esac
