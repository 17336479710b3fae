"""Structured logs and request ids."""

from __future__ import annotations

import io
import json
import logging
import runpy
import sys
from datetime import timedelta

import pytest
from flask import Flask
from gunicorn.config import Config
from gunicorn.http.wsgi import Response

from config.logs import JsonFormatter
from tests.conftest import auth
from tests.servers import ROOT


def test_the_callers_request_id_comes_back_and_a_new_one_is_made_otherwise(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/healthz", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == "trace-42"
    made = {client.get("/healthz").headers["X-Request-ID"] for _ in range(3)}
    assert len(made) == 3
    for insane in ("has space", "x" * 200, "<script>"):
        echoed = client.get("/healthz", headers={"X-Request-ID": insane}).headers["X-Request-ID"]
        assert echoed != insane
        assert len(echoed) == 32
    assert client.get("/nope", headers={"X-Request-ID": "on-errors-too"}).headers["X-Request-ID"] == "on-errors-too"


def test_log_lines_are_json_and_carry_the_request_id(app: Flask) -> None:
    """Through the handler the app installed (config.logs.configure_logging)."""
    [handler] = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    client = app.test_client()
    client.post("/score", data=b"{", headers=auth() | {"Content-Type": "application/json", "X-Request-ID": "req-7"})
    logging.getLogger("app.test").warning("outside any request", extra={"board": "default"})
    with app.test_request_context("/", headers={"X-Request-ID": "req-8"}):
        app.preprocess_request()
        logging.getLogger("app.test").warning("inside a request")
    handler.setStream(previous)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    inside = next(line for line in lines if line["msg"] == "inside a request")
    outside = next(line for line in lines if line["msg"] == "outside any request")
    assert inside["request_id"] == "req-8"
    assert "request_id" not in outside
    assert outside["board"] == "default"
    assert {"ts", "level", "logger", "msg"} <= set(outside)


def test_exceptions_are_logged_as_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == "failed here"
    assert "ValueError: boom" in parsed["exc"]


def test_gunicorns_access_line_has_the_status_of_gunicorns_own_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """gunicorn's error path logs a Response with only `status` ("400 Bad Request"), no
    `status_code`: the access line still gets its status instead of a crash (and a 500)."""
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    cfg = Config()
    cfg.set("accesslog", "-")
    logger = conf["JsonLogger"](cfg)
    response = Response(None, None, cfg)
    response.status = "400 Bad Request"
    logger.access(response, None, {"REQUEST_METHOD": "POST", "PATH_INFO": "/score"}, timedelta(milliseconds=2))
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line) | {"ts": None} == {
        "ts": None,
        "level": "INFO",
        "logger": "gunicorn.access",
        "msg": "request",
        "remote": None,
        "method": "POST",
        "path": "/score",
        "status": 400,
        "bytes": 0,
        "duration_ms": 2.0,
        "request_id": None,
        "user_agent": None,
    }
