"""flask-sse, as its README sets it up: the comparison for fan-out in `make bench`.

Its stock design opens one Redis connection and one Pub/Sub subscription per
viewer (ServerSentEventsBlueprint.messages). The harness feeds it the same
board messages we publish, on its own channel, in its own message format.

    gunicorn -c gunicorn.conf.py --bind 127.0.0.1:8200 bench.flask_sse_app:app
"""

from __future__ import annotations

from flask import Flask
from flask_sse import sse

from config.settings import Settings

app = Flask("flask_sse_reference")
app.config["REDIS_URL"] = Settings.from_env().redis_url
app.register_blueprint(sse, url_prefix="/stream")


@app.get("/healthz")
def healthz() -> str:
    return "ok"
