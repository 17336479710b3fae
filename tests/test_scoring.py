"""POST /score through the Flask app, against real PostgreSQL and Redis."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import JWT_SECRET, ChannelListener, auth, make_token

MAX_SAFE = 2**53 - 1


def post(client: FlaskClient, body: Any, user: str = "alice", headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        "/score",
        data=data,
        headers={"Content-Type": "application/json", **auth(user), **(headers or {})},
    )


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


# -- the happy path ----------------------------------------------------------


def test_first_score_creates_the_total_and_ranks_the_user(client: FlaskClient, channel: ChannelListener) -> None:
    response = post(client, {"score": 1234})
    assert response.status_code == 200
    assert list(response.get_json().items()) == [
        ("status", "ok"),
        ("userId", "alice"),
        ("score", 1234),
        ("rank", 1),
        ("improved", True),
    ]
    [message] = channel.drain()
    assert message["type"] == "update"
    assert message["updatedUser"] == "alice"
    assert message["newScore"] == 1234
    assert message["top"] == [["alice", "1234"]]
    assert isinstance(message["version"], int)
    assert abs(message["ts"] - datetime.now(UTC).timestamp()) < 5


def test_scores_add_up_and_ranks_follow(client: FlaskClient, engine: Engine, channel: ChannelListener) -> None:
    def alices_version() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT version FROM scores WHERE user_id = 'alice'")).scalar_one())

    assert post(client, {"score": 100}, "alice").get_json()["rank"] == 1
    first_version = alices_version()
    bob = post(client, {"score": 150}, "bob").get_json()
    assert bob == {"status": "ok", "userId": "bob", "score": 150, "rank": 1, "improved": True}
    second = post(client, {"score": 60}, "alice").get_json()
    assert second == {"status": "ok", "userId": "alice", "score": 160, "rank": 1, "improved": True}
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT user_id, total FROM scores ORDER BY user_id")).all()
    assert [tuple(r) for r in rows] == [("alice", 160), ("bob", 150)]
    assert alices_version() > first_version
    messages = channel.drain()
    assert [m["top"] for m in messages] == [
        [["alice", "100"]],
        [["bob", "150"], ["alice", "100"]],
        [["alice", "160"], ["bob", "150"]],
    ]
    versions = [m["version"] for m in messages]
    assert versions == sorted(versions)
    assert len(set(versions)) == 3


def test_charset_utf8_is_accepted(client: FlaskClient) -> None:
    response = client.post(
        "/score", data=b'{"score": 5}', headers={"Content-Type": "application/json; charset=UTF-8", **auth()}
    )
    assert response.status_code == 200


def test_total_may_reach_but_not_pass_2_to_the_53rd(
    client: FlaskClient, engine: Engine, channel: ChannelListener, board_state: Callable[[], Any]
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scores (board, user_id, total, reached_at, version) "
                "SELECT :board, 'alice', :total, now(), 1"
            ),
            {"board": client.application.extensions["boards"].default_id, "total": MAX_SAFE - 5},
        )
    before = board_state()
    assert_error(post(client, {"score": 6}), 422, "total_limit_exceeded")
    assert board_state() == before
    response = post(client, {"score": 5})
    assert response.get_json()["score"] == MAX_SAFE
    message = channel.drain()[-1]
    assert message["newScore"] == MAX_SAFE
    assert message["top"] == [["alice", str(MAX_SAFE)]]


# -- bad input changes nothing -----------------------------------------------

BAD_BODIES: list[tuple[bytes, int, str]] = [
    (b"", 400, "malformed_json"),
    (b"   \n", 400, "malformed_json"),
    (b"{", 400, "malformed_json"),
    (b'{"score": 10', 400, "malformed_json"),
    (b"{'score': 10}", 400, "malformed_json"),
    (b'{"score": 10}garbage', 400, "malformed_json"),
    (b'{"score": NaN}', 400, "malformed_json"),
    (b'{"score": Infinity}', 400, "malformed_json"),
    (b'{"score": -Infinity}', 400, "malformed_json"),
    (b'{"score": 1, "score": 2}', 400, "malformed_json"),
    (b'\xff\xfe{"score": 1}', 400, "malformed_json"),
    (b'{"score": "\xc3\x28"}', 400, "malformed_json"),
    (b"[" * 3000, 400, "malformed_json"),
    (b"null", 422, "invalid_body"),
    (b"[]", 422, "invalid_body"),
    (b"10", 422, "invalid_body"),
    (b'"score"', 422, "invalid_body"),
    (b"{}", 422, "invalid_body"),
    (b'{"points": 10}', 422, "invalid_body"),
    (b'{"Score": 10}', 422, "invalid_body"),
    (b'{"score": 10, "user": "bob"}', 422, "invalid_body"),
    (b'{"score": "10"}', 422, "invalid_score"),
    (b'{"score": 10.0}', 422, "invalid_score"),
    (b'{"score": 10.5}', 422, "invalid_score"),
    (b'{"score": 1e3}', 422, "invalid_score"),
    (b'{"score": 1E2}', 422, "invalid_score"),
    (b'{"score": true}', 422, "invalid_score"),
    (b'{"score": false}', 422, "invalid_score"),
    (b'{"score": null}', 422, "invalid_score"),
    (b'{"score": 0}', 422, "invalid_score"),
    (b'{"score": -0}', 422, "invalid_score"),
    (b'{"score": -5}', 422, "invalid_score"),
    (b'{"score": 1000001}', 422, "invalid_score"),
    (b'{"score": 99999999999999999999999999999999999999999}', 422, "invalid_score"),
    (b'{"score": [10]}', 422, "invalid_score"),
    (b'{"score": {"value": 10}}', 422, "invalid_score"),
    ('{"score": "١٠"}'.encode(), 422, "invalid_score"),
    (b'{"score": 1' + b"0" * 5000 + b"}", 413, "body_too_large"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES, ids=[repr(b[:40]) for b, _, _ in BAD_BODIES])
def test_bad_bodies_are_refused_and_change_nothing(
    client: FlaskClient,
    board_state: Callable[[], Any],
    channel: ChannelListener,
    body: bytes,
    status: int,
    code: str,
) -> None:
    post(client, {"score": 100})
    post(client, {"score": 50}, "bob")
    channel.drain(0.1)
    before = board_state()
    assert_error(post(client, body), status, code)
    assert board_state() == before
    assert len(channel.drain(0.1)) == 2


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (None, b'{"score": 10}'),
        ("text/plain", b'{"score": 10}'),
        ("application/x-www-form-urlencoded", b"score=10"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="score"\r\n\r\n10\r\n--x--'),
        ("application/json; charset=latin-1", b'{"score": 10}'),
        ("application/jsonx", b'{"score": 10}'),
    ],
)
def test_bodies_that_are_not_json_get_415(
    client: FlaskClient, board_state: Callable[[], Any], content_type: str | None, body: bytes
) -> None:
    post(client, {"score": 100})
    before = board_state()
    headers = auth() | ({"Content-Type": content_type} if content_type else {})
    assert_error(client.post("/score", data=body, headers=headers), 415, "unsupported_media_type")
    assert board_state() == before


def _unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(payload)}."


def _bad_tokens() -> list[tuple[str, str | None, str]]:
    now = datetime.now(UTC)
    valid = make_token("alice")
    head, body, signature = valid.split(".")
    tampered_payload = base64.urlsafe_b64encode(json.dumps({"sub": "mallory", "exp": 9999999999}).encode())
    return [
        ("no header", None, "missing_token"),
        ("empty bearer", "Bearer", "invalid_token"),
        ("basic auth", "Basic YWxpY2U6c2VjcmV0", "missing_token"),
        ("not a jwt", "Bearer not-a-jwt", "invalid_token"),
        ("two segments", f"Bearer {head}.{body}", "invalid_token"),
        ("wrong secret", f"Bearer {make_token('alice', secret='another-secret-' + 'z' * 60)}", "invalid_token"),
        ("bad signature", f"Bearer {head}.{body}.{signature[::-1]}", "invalid_token"),
        ("payload swapped", f"Bearer {head}.{tampered_payload.rstrip(b'=').decode()}.{signature}", "invalid_token"),
        ("alg none", f"Bearer {_unsigned({'sub': 'alice', 'exp': int(now.timestamp()) + 3600})}", "invalid_token"),
        ("HS512 not allowed", f"Bearer {make_token('alice', algorithm='HS512')}", "invalid_token"),
        ("expired", f"Bearer {make_token('alice', exp=now - timedelta(minutes=1))}", "expired_token"),
        ("no exp", f"Bearer {make_token('alice', exp=None)}", "invalid_token"),
        ("not yet valid", f"Bearer {make_token('alice', nbf=now + timedelta(hours=1))}", "invalid_token"),
        ("no sub", f"Bearer {make_token(None)}", "invalid_token"),
        ("sub is a number", f"Bearer {make_token(42)}", "invalid_token"),
        ("sub is empty", f"Bearer {make_token('')}", "invalid_token"),
        ("sub has a space", f"Bearer {make_token('alice smith')}", "invalid_token"),
        ("sub too long", f"Bearer {make_token('a' * 129)}", "invalid_token"),
        ("refresh token", f"Bearer {make_token('alice', type='refresh')}", "invalid_token"),
    ]


@pytest.mark.parametrize(("name", "header", "code"), _bad_tokens(), ids=[t[0] for t in _bad_tokens()])
def test_bad_tokens_get_401_and_change_nothing(
    client: FlaskClient, board_state: Callable[[], Any], name: str, header: str | None, code: str
) -> None:
    post(client, {"score": 100})
    before = board_state()
    headers = {"Content-Type": "application/json"} | ({"Authorization": header} if header else {})
    response = client.post("/score", data=b'{"score": 10}', headers=headers)
    assert_error(response, 401, code)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert board_state() == before


def test_a_valid_token_from_another_issuer_is_enough(client: FlaskClient) -> None:
    """No flask-jwt-extended extras (type, fresh, jti) are needed, only sub and exp."""
    token = make_token("carol", iat=None)
    response = client.post("/score", json={"score": 7}, headers={"Authorization": f"Bearer {token}"})
    assert response.get_json() == {"status": "ok", "userId": "carol", "score": 7, "rank": 1, "improved": True}


def test_unknown_routes_and_methods_answer_in_the_envelope(client: FlaskClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    response = client.get("/score")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


# -- Idempotency-Key ---------------------------------------------------------


def test_a_retry_with_the_same_key_replays_the_first_answer(client: FlaskClient, engine: Engine) -> None:
    first = post(client, {"score": 10}, headers={"Idempotency-Key": "order-1"})
    post(client, {"score": 500}, "bob")
    again = post(client, {"score": 10}, headers={"Idempotency-Key": "order-1"})
    assert again.status_code == 200
    assert (
        again.get_json()
        == first.get_json()
        == {"status": "ok", "userId": "alice", "score": 10, "rank": 1, "improved": True}
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    with engine.connect() as conn:
        assert conn.execute(text("SELECT total FROM scores WHERE user_id = 'alice'")).scalar_one() == 10


def test_the_same_key_with_another_body_is_a_conflict(client: FlaskClient, board_state: Callable[[], Any]) -> None:
    post(client, {"score": 10}, headers={"Idempotency-Key": "k"})
    before = board_state()
    assert_error(post(client, {"score": 11}, headers={"Idempotency-Key": "k"}), 422, "idempotency_conflict")
    assert board_state() == before


def test_keys_belong_to_one_user(client: FlaskClient) -> None:
    assert post(client, {"score": 10}, "alice", {"Idempotency-Key": "k"}).get_json()["score"] == 10
    assert post(client, {"score": 10}, "bob", {"Idempotency-Key": "k"}).get_json()["userId"] == "bob"
    assert post(client, {"score": 5}, "alice", {"Idempotency-Key": "k2"}).get_json()["score"] == 15


def test_a_key_older_than_24_hours_counts_again(client: FlaskClient, engine: Engine) -> None:
    post(client, {"score": 10}, headers={"Idempotency-Key": "daily"})
    with engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET created_at = created_at - interval '25 hours'"))
    response = post(client, {"score": 10}, headers={"Idempotency-Key": "daily"})
    assert response.get_json()["score"] == 20
    assert "Idempotent-Replayed" not in response.headers


@pytest.mark.parametrize(
    "key",
    ["", "has space", "tab\there", "é", "x" * 256, "line\nbreak"],
    ids=["empty", "space", "tab", "non-ascii", "256", "newline"],
)
def test_malformed_keys_are_refused(client: FlaskClient, board_state: Callable[[], Any], key: str) -> None:
    before = board_state()
    try:
        response = post(client, {"score": 10}, headers={"Idempotency-Key": key})
    except ValueError:  # werkzeug's test client refuses a newline in a header itself
        return
    assert_error(response, 400, "invalid_header")
    assert board_state() == before


def test_a_key_of_255_visible_characters_is_fine(client: FlaskClient) -> None:
    key = "".join(chr(33 + i % 94) for i in range(255))
    assert post(client, {"score": 3}, headers={"Idempotency-Key": key}).status_code == 200
    assert post(client, {"score": 3}, headers={"Idempotency-Key": key}).get_json()["score"] == 3


def test_concurrent_retries_with_one_key_count_once(client: FlaskClient, engine: Engine) -> None:
    barrier = threading.Barrier(16)
    answers: list[Any] = []

    def submit() -> None:
        test_client = client.application.test_client()
        barrier.wait()
        response = post(test_client, {"score": 7}, headers={"Idempotency-Key": "race"})
        answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=submit) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {status for status, _ in answers} == {200}
    assert {body["score"] for _, body in answers} == {7}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT total FROM scores")).one() == (7,)
        assert conn.execute(text("SELECT count(*) FROM idempotency_keys")).scalar_one() == 1


def test_secret_is_the_configured_one() -> None:
    """Guards the fixtures: tokens above are signed with the app's secret."""
    assert len(JWT_SECRET) >= 32
