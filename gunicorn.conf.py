"""gunicorn settings shared by both services.

    gunicorn -c gunicorn.conf.py --bind 127.0.0.1:8000 wsgi_increment:app
    gunicorn -c gunicorn.conf.py --bind 127.0.0.1:8001 wsgi_board:app

Anything here can be overridden on the command line or with GUNICORN_CMD_ARGS
(for example GUNICORN_CMD_ARGS="--workers 4"). Only non-defaults are set, each
with the reason.
"""

import multiprocessing

# Cooperative greenlets: one worker holds thousands of open SSE streams and
# overlaps many database and Redis round trips. The worker monkey-patches the
# standard library itself before it imports the app (see post_worker_init for
# psycopg2). Never use --preload with it: the app would import sockets before
# the patch.
worker_class = "gevent"

# One process per core; greenlets provide the concurrency inside each.
workers = multiprocessing.cpu_count()

# Concurrent connections per worker, SSE viewers included. Keep
# workers * worker_connections under the process file limit (ulimit -n).
worker_connections = 4000

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


def post_worker_init(worker):
    """Make psycopg2 yield to the gevent hub while it waits on PostgreSQL.

    Without this, every query blocks the whole worker, SSE streams included.
    It runs after the worker's monkey-patch and before the first request.
    """
    if "gevent" in worker.cfg.worker_class_str:
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
