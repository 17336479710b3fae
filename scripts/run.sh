#!/usr/bin/env bash
# make run: both services under gunicorn with gevent, on SQLite and a local Redis.
# Settings come from the environment, or from .env when present (see .env.example).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f .env ]; then set -a; . ./.env; set +a; fi
INCREMENT_PORT="${INCREMENT_PORT:-8000}"
BOARD_PORT="${BOARD_PORT:-8001}"
HOST="${HOST:-127.0.0.1}"

scripts/ensure-services.sh redis "${REDIS_URL:-}"
.venv/bin/flask --app wsgi_increment db upgrade 2>&1 | grep -v '^INFO' || true

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

.venv/bin/gunicorn -c gunicorn.conf.py --bind "$HOST:$INCREMENT_PORT" wsgi_increment:app &
pids+=($!)
.venv/bin/gunicorn -c gunicorn.conf.py --bind "$HOST:$BOARD_PORT" wsgi_board:app &
pids+=($!)

for port in "$INCREMENT_PORT" "$BOARD_PORT"; do
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null && break
        sleep 0.1
    done
done
cat <<MSG

  Increment Service  http://$HOST:$INCREMENT_PORT   (POST /score)
  View Board Service http://$HOST:$BOARD_PORT   (the live board page; GET /events, /leaderboard)

  Mint a token:  .venv/bin/flask --app wsgi_increment token alice
  Stop with Ctrl-C.

MSG
wait -n "${pids[@]}"
