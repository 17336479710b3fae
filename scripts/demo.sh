#!/usr/bin/env bash
# make demo: both services as `make run` starts them, a dozen players sending
# scores (scripts/demo.py), and the URL of the live board page to open.
# Ctrl-C stops everything. Takes the same settings as `make run` (.env, HOST,
# INCREMENT_PORT, BOARD_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f .env ]; then set -a; . ./.env; set +a; fi
export HOST="${HOST:-127.0.0.1}"
export INCREMENT_PORT="${INCREMENT_PORT:-8000}"
export BOARD_PORT="${BOARD_PORT:-8001}"
increment="http://$HOST:$INCREMENT_PORT"
board="http://$HOST:$BOARD_PORT"

# The generator's lines are the demo's output; one access-log line per score would bury them.
export GUNICORN_CMD_ARGS="${GUNICORN_CMD_ARGS:---access-logfile /dev/null}"
scripts/run.sh &
stack=$!
stop() {
    trap - EXIT INT TERM
    # run.sh stops its gunicorns on TERM (a background job ignores Ctrl-C's SIGINT).
    kill -TERM "$stack" 2>/dev/null || true
    wait "$stack" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

answers() { .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; }
# Ready means the database and Redis answer too. The first run may take a
# while (virtualenv, Redis install), so wait for as long as run.sh is alive.
for url in "$increment/readyz" "$board/readyz"; do
    until answers "$url"; do
        kill -0 "$stack" 2>/dev/null || { echo "error: the services did not start (see above)" >&2; exit 1; }
        sleep 0.3
    done
done

cat <<MSG

  The live board:  $board/
  With options:    $board/?title=Demo&n=5&theme=dark

MSG
.venv/bin/python scripts/demo.py --url "$increment"
echo "The generator is done; the board stays up until Ctrl-C."
wait "$stack"
