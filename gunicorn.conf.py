"""gunicorn settings shared by both services.

    gunicorn -c gunicorn.conf.py --bind 127.0.0.1:8000 wsgi_increment:app
    gunicorn -c gunicorn.conf.py --bind 127.0.0.1:8001 wsgi_board:app

Anything here can be overridden on the command line or with GUNICORN_CMD_ARGS
(for example GUNICORN_CMD_ARGS="--workers 4"). Only non-defaults are set, each
with the reason.
"""

import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import uuid
from datetime import datetime
from http import HTTPStatus
from pathlib import Path

from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.ggevent import GeventWorker

from config.logs import JsonFormatter

# worker_class: gevent, set below with the worker class.

# One process per core; greenlets provide the concurrency inside each.
workers = multiprocessing.cpu_count()

# Concurrent connections per worker, SSE viewers included: room for
# SSE_MAX_VIEWERS (10,000) plus REST requests and the short answers to
# viewers over that cap. Every connection is a file descriptor, so the
# worker's `ulimit -n` must be above this.
worker_connections = 12000

# Seconds a worker may go silent before the master restarts it. The gevent
# worker notifies the master from its own greenlet, so long SSE streams do not
# count against this; only a blocked event loop does.
timeout = 30

# Time for in-flight requests to finish on SIGTERM or reload; SSE streams are
# told to reconnect well before this runs out.
graceful_timeout = 20

# Reusing connections saves a TCP handshake per request for scripts and load
# balancers. Kept short because an idle keep-alive connection holds up a
# graceful shutdown until it times out.
keepalive = 5

# gunicorn 25+ opens a control socket at one fixed path per user; two
# services (or several instances) on one host would fight over it, and
# nothing here uses `gunicornc`.
control_socket_disable = True

# One line per request on stdout, for `make run` and container logs.
accesslog = "-"
errorlog = "-"


class JsonLogger(Logger):
    """gunicorn's own logs and its access log as JSON lines, like the app's (config.logs)."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time):
        if not self.cfg.accesslog:
            return
        headers = dict((name.lower(), value) for name, value in (resp.headers or []))
        self.access_log.info(
            "request",
            extra={
                "remote": environ.get("REMOTE_ADDR"),
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "status": _status_code(resp),
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 2),
                "request_id": headers.get("x-request-id"),
                "user_agent": environ.get("HTTP_USER_AGENT"),
            },
        )


def _status_code(resp):
    """The answer's status as a number. gunicorn sets `status_code` only when an
    app starts a response; its own error answers carry just `status` ("400 Bad Request")."""
    code = getattr(resp, "status_code", None)
    if code is None and isinstance(resp.status, str):
        code = resp.status.split(None, 1)[0]
    return int(code) if str(code).isdigit() else None


# JSON lines for every log; query strings and headers (tokens) are never logged.
logger_class = JsonLogger


# gunicorn's own answers to requests it refuses before (or while) the app
# reads them, by the exception its parser raises: status and error code. The
# first match wins; any other parse error is a 400.
_REFUSALS = (
    (http_errors.LimitRequestLine, 414, "request_line_too_long"),
    (http_errors.LimitRequestHeaders, 431, "header_fields_too_large"),
    (http_errors.UnsupportedTransferCoding, 501, "unsupported_transfer_coding"),
    (http_errors.ExpectationFailed, 417, "expectation_failed"),
    (http_errors.ForbiddenProxyRequest, 403, "forbidden"),
    (http_errors.ParseException, 400, "malformed_request"),
)
# Not the client's fault: gunicorn's own 500 stands (and logs the traceback).
_SERVER_FAULTS = (
    http_errors.InvalidResponseHeader,
    http_errors.InvalidResponseHeaderName,
    http_errors.ConfigurationProblem,
)
# Raised only while reading a body. gunicorn reads one itself only to discard
# what the app left unread, after the app answered.
_BODY_ERRORS = (http_errors.InvalidChunkSize, http_errors.InvalidChunkExtension, http_errors.ChunkMissingTerminator)


class JsonErrorsGeventWorker(GeventWorker):
    """gunicorn's gevent worker, with its own refusals (bad framing, a request line or
    header fields over its limits) in the API's JSON error envelope instead of an HTML page.

    gunicorn answers these itself, in `handle_error`, before the app sees the
    request; everything else, and every answer of the app, is gunicorn's as is.
    """

    def handle_error(self, req, client, addr, exc):
        started = datetime.now()
        refusal = next((r for r in _REFUSALS if isinstance(exc, r[0])), None)
        if refusal is None or isinstance(exc, _SERVER_FAULTS):
            return super().handle_error(req, client, addr, exc)
        _, status, code = refusal
        req = req or getattr(exc, "req", None)
        request_id = uuid.uuid4().hex
        # The exception's name, not its text: that can hold the request line (query strings).
        extra = {"remote": (addr or ("",))[0], "error": type(exc).__name__, "status": status, "request_id": request_id}
        if req is None and isinstance(exc, _BODY_ERRORS):
            # The unread body of a request already answered: another answer now
            # would be read as the answer to the client's next request.
            self.log.warning("malformed request body after its answer; connection closed", extra=extra)
            return
        self.log.warning("request refused by gunicorn", extra=extra)
        body = json.dumps({"error": {"code": code, "message": self._message(status, exc)}}).encode()
        reason = HTTPStatus(status).phrase
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n\r\n"
        )
        if req is not None:
            resp = Response(req, client, self.cfg)
            resp.status, resp.status_code = f"{status} {reason}", status
            resp.headers = [("X-Request-ID", request_id)]
            resp.response_length = resp.sent = len(body)
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"] = extra["remote"]
            environ["PATH_INFO"] = util.unquote_to_wsgi_str(req.path or "")
            self.log.access(resp, req, environ, datetime.now() - started)
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except OSError:
            self.log.debug("the client left before its error answer")

    def _message(self, status, exc):
        cfg = self.cfg
        if status == 414:
            return f"The request line (method, path and query) is longer than {cfg.limit_request_line} bytes."
        if status == 431:
            return (
                f"A header field is longer than {cfg.limit_request_field_size} bytes (a token that large?), "
                f"or there are more than {cfg.limit_request_fields} of them."
            )
        # gunicorn's own words: the header or the chunk at fault, as the client sent it.
        return f"The request cannot be parsed: {str(exc)[:200]}."


# Cooperative greenlets: one worker holds thousands of open SSE streams and
# overlaps many database and Redis round trips. The worker monkey-patches the
# standard library itself before it imports the app (see post_worker_init for
# psycopg2). Never use --preload with it: the app would import sockets before
# the patch. gunicorn's gevent worker, with its refusals in JSON (above).
worker_class = JsonErrorsGeventWorker


_metrics_folder_made = None


def on_starting(server):
    """Before any worker: a folder where every worker writes its Prometheus samples.

    prometheus-client reads PROMETHEUS_MULTIPROC_DIR when a worker imports it,
    so it is set here, in the master, and inherited. An operator's own value
    is kept (and emptied: samples of a previous run would add up).
    """
    global _metrics_folder_made
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        for stale in Path(folder).glob("*.db"):
            stale.unlink()
    else:
        _metrics_folder_made = tempfile.mkdtemp(prefix="leaderboard-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_folder_made


def child_exit(server, worker):
    """A worker is gone: its gauges (open streams) must stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_folder_made:
        shutil.rmtree(_metrics_folder_made, ignore_errors=True)


def post_worker_init(worker):
    """Runs in each worker after its monkey-patch and app load, before the first request."""
    if isinstance(worker, GeventWorker):
        # psycopg2 must yield to the gevent hub while it waits on PostgreSQL;
        # without this every query blocks the whole worker, SSE streams included.
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
        # Start the background greenlets now, not at the first request: Redis
        # is reconciled with SQL from the start, and a board worker holds its
        # one subscription (and the board) before the first viewer comes.
        extensions = getattr(worker.wsgi, "extensions", {})
        for name in ("board_keeper", "board_hub"):
            if name in extensions:
                extensions[name].start()
    _drain_streams_on_sigterm(worker)


def _drain_streams_on_sigterm(worker):
    """SSE streams never end by themselves, so a plain SIGTERM would wait out
    graceful_timeout and then cut them. Instead, tell the board's streams to
    end with a retry hint (browsers reconnect to another worker) and let the
    worker exit as soon as they have."""
    hub = getattr(worker.wsgi, "extensions", {}).get("board_hub")
    if hub is None:
        return
    stop_worker = worker.handle_exit

    def handle_exit(sig, frame):
        stop_worker(sig, frame)
        # Close connections when their response ends instead of waiting
        # `keepalive` seconds for another request that this worker won't take.
        worker.cfg.set("keepalive", 0)
        import gevent

        gevent.spawn(hub.drain)  # out of the signal handler, as gunicorn does

    signal.signal(signal.SIGTERM, handle_exit)
