"""Property: whatever the body, never a 5xx, and nothing changes unless the body is valid."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import auth

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
score_like = st.fixed_dictionaries(
    {"score": st.integers(-5, 2_000_000) | st.floats() | st.booleans() | st.text(max_size=5) | st.none()},
    optional={"extra": json_values},
)


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(encode),
    score_like.map(encode),
    st.integers(1, 1_000_000).map(lambda n: encode({"score": n})),
)


class _Float:
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")
    return dict(pairs)


def is_valid(body: bytes) -> int | None:
    """The increment a valid body asks for, by SPEC.md's rules: exactly {"score": <JSON integer 1..max>}."""
    try:
        value = json.loads(
            body.decode("utf-8"),
            parse_constant=lambda _: _Float(),
            parse_float=lambda _: _Float(),
            object_pairs_hook=_no_duplicates,
        )
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(value, dict) or set(value) != {"score"}:
        return None
    score = value["score"]
    return score if type(score) is int and 1 <= score <= 1_000_000 else None


@pytest.fixture
def unlimited_app(make_app: Callable[..., Flask]) -> Flask:
    """One app for every example (hypothesis shares a test's fixtures among its examples)."""
    return make_app(RATE_LIMIT_PER_USER="off")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_any_body_gets_no_5xx_and_changes_nothing_unless_valid(
    unlimited_app: Flask, board_state: Callable[[], Any], body: bytes
) -> None:
    client = unlimited_app.test_client()
    before = board_state()
    response = client.post("/score", data=body, headers=auth("prop") | {"Content-Type": "application/json"})
    assert response.status_code < 500, response.get_data(as_text=True)
    assert set(response.get_json()) <= {"status", "userId", "score", "rank", "improved", "error"}
    increment = is_valid(body)
    if increment is None:
        assert response.status_code in (400, 413, 422), body
        assert board_state() == before
    else:
        assert response.status_code == 200
        previous = next((row[2] for row in before["scores"] if row[1] == "prop"), 0)
        assert response.get_json()["score"] == previous + increment
