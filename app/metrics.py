"""Prometheus metrics of both services, and the `/metrics` answer.

Under gunicorn every worker is its own process, so prometheus-client runs in
multiprocess mode: gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a
fresh folder before any worker starts, each worker writes its samples there,
and `/metrics` on any worker adds them all up. Without that variable (tests,
`flask` commands) the metrics live in the process as usual.

Never imports Flask: the domain and the hub record into these directly.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SUBMISSIONS = Counter(
    "leaderboard_submissions_total",
    "POST /score answers, by outcome (ok, replayed, or the error code).",
    ["outcome"],
)
WRITE_SECONDS = Histogram("leaderboard_write_seconds", "Time to answer POST /score.", buckets=LATENCY_BUCKETS)
REDIS_SCRIPT_SECONDS = Histogram(
    "leaderboard_redis_script_seconds", "Time of one APPLY_SCRIPT call in Redis.", ["mode"], buckets=LATENCY_BUCKETS
)
WRITE_BATCH_SIZE = Histogram(
    "leaderboard_write_batch_size",
    "Submissions recorded together in one statement and one script call (app.batching).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
REBUILDS = Counter("leaderboard_rebuilds_total", "Boards rebuilt in Redis from SQL, by reason.", ["reason"])
VIEWERS = Gauge("leaderboard_viewers", "Open SSE streams.", multiprocess_mode="livesum")
FRAMES_SENT = Counter("leaderboard_frames_sent_total", "Board frames written to viewers.")
STREAMS_ENDED = Counter(
    "leaderboard_streams_ended_total",
    "SSE streams that ended, by reason: client_gone, dropped (a write failed or timed out), draining, refused.",
    ["reason"],
)
HUB_RECONNECTS = Counter("leaderboard_hub_reconnects_total", "Times a board worker re-subscribed to Redis.")
PUBLISH_TO_SEND_SECONDS = Histogram(
    "leaderboard_publish_to_send_seconds",
    "From the PUBLISH in Redis to the frame written to every viewer of the worker (once per board change).",
    buckets=LATENCY_BUCKETS,
)


def render(multiprocess_dir: str | None) -> tuple[bytes, str]:
    """The exposition of every worker's samples (or this process's), and its content type."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
