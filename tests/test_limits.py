"""Abuse limits: a per-user rate limit on POST /score, and the body size limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from tests.conftest import auth


def post(app: Flask, user: str, body: bytes = b'{"score": 1}') -> Any:
    headers = auth(user) | {"Content-Type": "application/json"}
    return app.test_client().post("/score", data=body, headers=headers)


def test_a_user_over_the_rate_limit_gets_429_with_retry_after_and_nothing_changes(
    make_app: Callable[..., Flask], board_state: Callable[[], Any]
) -> None:
    app = make_app(RATE_LIMIT_PER_USER="3/minute")
    assert [post(app, "spammer").status_code for _ in range(3)] == [200, 200, 200]
    before = board_state()
    limited = post(app, "spammer")
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "rate_limited"
    # A sliding window frees a slot within two windows at most.
    assert 1 <= int(limited.headers["Retry-After"]) <= 120
    assert board_state() == before
    assert post(app, "someone-else").status_code == 200  # per user, not global


def test_bad_tokens_do_not_spend_a_users_budget(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATE_LIMIT_PER_USER="2/minute")
    client = app.test_client()
    for _ in range(5):
        assert client.post("/score", json={"score": 1}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert [post(app, "careful").status_code for _ in range(3)] == [200, 200, 429]


def test_the_limit_can_be_switched_off(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATE_LIMIT_PER_USER="off")
    assert {post(app, "busy").status_code for _ in range(30)} == {200}


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_413(
    make_app: Callable[..., Flask], board_state: Callable[[], Any]
) -> None:
    app = make_app(MAX_CONTENT_LENGTH="100")
    body = b'{"score": 7}'
    exactly = body[:-1] + b" " * (100 - len(body)) + b"}"
    assert len(exactly) == 100
    assert post(app, "sized", exactly).get_json()["score"] == 7
    before = board_state()
    too_large = post(app, "sized", exactly[:-1] + b" }")
    assert too_large.status_code == 413
    assert too_large.get_json()["error"] == {
        "code": "body_too_large",
        "message": "The request body is larger than 100 bytes.",
    }
    assert board_state() == before
