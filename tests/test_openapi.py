"""/openapi.json is true: it describes exactly the routes each service has, and every answer conforms.

Schemathesis generates requests from the document (valid and invalid ones)
and checks each answer: never a 5xx, a documented status, the documented
content type, headers and schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_board_app, create_increment_app
from config.settings import Settings
from tests.conftest import auth

SERVICES = {"increment": create_increment_app, "board": create_board_app}
JSON = {"Content-Type": "application/json"}


PATH_NAMES = {"user_id": "userId", "board_id": "boardId"}


def routes(app: Flask) -> set[tuple[str, str]]:
    """(method, OpenAPI path) for every route the app serves, static files aside."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.endswith("static"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{" + PATH_NAMES.get(m[1], m[1]) + "}", rule.rule)
        found |= {(method.lower(), path) for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_the_document_describes_exactly_the_routes_the_service_has(
    service: str, make_settings: Callable[..., Settings], engine: Any
) -> None:
    app = SERVICES[service](make_settings())
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert documented == routes(app)


def test_the_score_is_documented_as_an_integer_literal_as_the_server_takes_it(make_app: Callable[..., Flask]) -> None:
    """`type: integer` alone lets 40698.0 through, which the server refuses: the document says so."""
    client = make_app().test_client()
    score = client.get("/openapi.json").get_json()["components"]["schemas"]["ScoreSubmission"]["properties"]["score"]
    assert (score["type"], score["format"]) == ("integer", "int64")
    for refused in ("1500.0", "1.5e3", '"1500"', "true"):
        assert refused in score["description"]
        response = client.post("/score", data=f'{{"score": {refused}}}', headers=auth() | JSON)
        assert (response.status_code, response.get_json()["error"]["code"]) == (422, "invalid_score")
    for example in score["examples"]:
        assert client.post("/score", json={"score": example}, headers=auth()).status_code == 200


@pytest.fixture(scope="module")
def increment_app(make_settings: Callable[..., Settings], migrated: None) -> Iterator[Flask]:
    app = create_increment_app(make_settings(RATE_LIMIT_PER_USER="off"))
    yield app
    app.extensions["redis"].close()


@pytest.fixture(scope="module")
def board_app(make_settings: Callable[..., Settings], migrated: None) -> Iterator[Flask]:
    app = create_board_app(make_settings())
    yield app
    app.extensions["redis"].close()


@pytest.fixture(scope="module")
def increment_schema(increment_app: Flask) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", increment_app)


@pytest.fixture(scope="module")
def board_schema(board_app: Flask) -> Any:
    # The stream never ends by itself; its behaviour has its own tests (test_e2e_board.py).
    return (
        schemathesis.openapi.from_wsgi("/openapi.json", board_app)
        .exclude(path="/events")
        .exclude(path="/boards/{boardId}/events")
        .exclude(path="/changes")
        .exclude(path="/boards/{boardId}/changes")
    )


FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)


# JSON Schema counts 3832.0 as an integer; the contract does not (floats are
# refused with a 422, as the score's description says: no keyword of JSON
# Schema can), so "schema-valid data is accepted" cannot hold for the score.
# Every other check runs, the refusal of invalid data included.
EXCLUDED = [positive_data_acceptance]


def check_every_operation(schema: Any, headers: dict[str, str]) -> list[str]:
    """Run schemathesis's checks on examples of every operation; returns the operations covered."""
    covered = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @FAST
        @given(case=operation.as_strategy())
        def answers_as_documented(case: Any) -> None:
            case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

        answers_as_documented()
        covered.append(f"{operation.method.upper()} {operation.path}")
    return covered


def test_the_increment_service_answers_as_documented(increment_schema: Any) -> None:
    covered = check_every_operation(increment_schema, auth("schemathesis"))
    assert "POST /score" in covered


def test_the_board_service_answers_as_documented(board_schema: Any) -> None:
    covered = check_every_operation(board_schema, {})
    assert "GET /leaderboard/users/{userId}" in covered


def test_the_admin_routes_answer_as_documented(increment_schema: Any) -> None:
    """With the admin role, past the 403: boards created, changed, deleted, users removed, at random."""
    covered = check_every_operation(increment_schema.include(path_regex="^/admin/"), auth("ops", role="admin"))
    assert {"PUT /admin/boards/{boardId}", "DELETE /admin/users/{userId}"} <= set(covered)
