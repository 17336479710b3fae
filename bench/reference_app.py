"""The ceiling reference for write throughput: the same work as POST /score, and nothing else.

One JWT check (HS256, exp required), the same SQL upsert, in autocommit
(app.submissions' statement) and the same Redis script (BoardCache.apply), under the same gunicorn and
gevent settings. No body validation, no idempotency, no rank, no rate limit,
no metrics, no request id, no error envelope. `make bench` serves it beside
the real service so the cost of everything we add shows as a ratio.

    gunicorn -c gunicorn.conf.py --bind 127.0.0.1:8100 bench.reference_app:app
"""

from __future__ import annotations

import json

import jwt
import redis
from app.submissions import Statements
from flask import Flask, request
from sqlalchemy import create_engine

from app.leaderboard import Board, BoardCache, Standing
from config.settings import Settings

settings = Settings.from_env()
engine = create_engine(settings.database_url, **settings.flask_config()["SQLALCHEMY_ENGINE_OPTIONS"])
cache = BoardCache(
    redis.Redis.from_url(settings.redis_url, decode_responses=True),
    Board(settings.leaderboard_id, settings.top_n, settings.redis_channel, settings.score_max_increment),
)
UPSERT = Statements.for_engine(engine).upsert
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
        cursor.execute(UPSERT, {"board": cache.board.name, "user_id": claims["sub"], "increment": score,
                                "max_total": cache.board.max_total})  # fmt: skip
        total, reached_at, rank_key = cursor.fetchone()
        pooled.dbapi_connection.autocommit = False
    finally:
        pooled.close()
    standing = Standing(claims["sub"], total, reached_at, rank_key)
    cache.apply([standing], mode="merge", updated=standing)
    return json.dumps({"status": "ok", "score": total}), 200


@app.get("/healthz")
def healthz() -> str:
    return "ok"
