"""The ceiling reference for write throughput: the same work as POST /score, and nothing else.

One JWT check (HS256, exp required), the same SQL upsert in autocommit
(app.leaderboard.records' statement for an `incr` board) and the same Redis
script (BoardCache.apply), under the same gunicorn and gevent settings. No
body validation, no idempotency, no rank, no rate limit, no metrics, no
request id, no error envelope, no batching. `make bench` serves it beside the
real service so the cost of everything we add shows as a ratio.

    gunicorn -c gunicorn.conf.py --bind 127.0.0.1:8100 bench.reference_app:app
"""

from __future__ import annotations

import json

import jwt
import redis
from flask import Flask, request
from sqlalchemy import create_engine

from app.leaderboard import BoardCache, BoardDefaults, BoardRegistry, Standing, records
from app.sql import check_when_handed_out
from config.settings import Settings

settings = Settings.from_env()
engine = create_engine(settings.database_url, **settings.flask_config()["SQLALCHEMY_ENGINE_OPTIONS"])
check_when_handed_out(engine)  # the service's pool, as it is set up
cache = BoardCache(redis.Redis.from_url(settings.redis_url, decode_responses=True))
registry = BoardRegistry(
    engine,
    BoardDefaults(settings.leaderboard_id, settings.redis_channel, settings.top_n, settings.score_max_increment),
)
board, _ = registry.ensure_default()
UPSERT = records.statement_for(engine, records._UPSERT, board)
PERIOD = records.period_params(engine, board)  # the default board has no resets: all of time
app = Flask("reference")


@app.post("/score")
def post_score() -> tuple[str, int]:
    token = request.headers["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, settings.jwt_secret_key, algorithms=["HS256"], options={"require": ["exp"]})
    score = json.loads(request.get_data())["score"]
    pooled = engine.raw_connection()
    try:
        pooled.dbapi_connection.autocommit = True
        cursor = pooled.cursor()
        params = {"board": board.id, "uid": board.uid, "user_id": claims["sub"], "value": score}
        cursor.execute(UPSERT, params | PERIOD)
        total, reached_at, rank_key, version = cursor.fetchone()[:4]
        pooled.dbapi_connection.autocommit = False
    finally:
        pooled.close()
    standing = Standing(claims["sub"], total, reached_at, version, rank_key=rank_key)
    cache.apply(board, [standing], mode="merge", updated=standing)
    return json.dumps({"status": "ok", "score": total}), 200


@app.get("/healthz")
def healthz() -> str:
    return "ok"
