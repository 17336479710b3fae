"""The OpenAPI 3 description of each service, served at `/openapi.json`.

Written by hand from the contract (SPEC.md) and kept true by tests: every
route the app has is described here and the other way round
(tests/test_openapi.py), and schemathesis calls every operation and checks
each answer against its description.
"""

from __future__ import annotations

from typing import Any

from config.settings import MAX_SAFE_TOTAL, Settings

VERSION = "1.0.0"

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json(_ERROR, description, headers)


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}}
_REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Echoed back and put on every log line of the request; made up when absent.",
    "schema": {"type": "string"},
}


def _schemas(settings: Settings) -> dict[str, Any]:
    score = {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_TOTAL}
    rank = {"type": ["integer", "null"], "minimum": 1}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "description": "Machine-readable, e.g. invalid_score."},
                        "message": {"type": "string", "description": "For people."},
                    },
                }
            },
        },
        "ScoreSubmission": {
            "type": "object",
            "required": ["score"],
            "additionalProperties": False,
            "properties": {
                "score": {
                    "type": "integer",
                    # Tells client generators to send an integer type, never a double.
                    "format": "int64",
                    "minimum": 1,
                    "maximum": settings.score_max_increment,
                    "examples": [1500],
                    "description": (
                        "Added to the caller's total. A JSON integer literal, digits only (1500): 1500.0, 1.5e3, "
                        '"1500" and true are refused with 422 invalid_score, although JSON Schema counts 1500.0 '
                        "as an integer."
                    ),
                }
            },
        },
        "ScoreAccepted": {
            "type": "object",
            "required": ["status", "userId", "score", "rank"],
            "additionalProperties": False,
            "properties": {
                "status": {"const": "ok"},
                "userId": {"type": "string"},
                "score": {**score, "description": "The caller's new total."},
                "rank": {**rank, "description": f"1-based rank, or null outside the top {settings.top_n}."},
            },
        },
        "Leaderboard": {
            "type": "object",
            "required": ["version", "top"],
            "additionalProperties": False,
            "properties": {
                "version": {"type": "integer", "minimum": 1},
                "top": {
                    "type": "array",
                    "maxItems": settings.top_n,
                    "items": {
                        "type": "object",
                        "required": ["rank", "userId", "score"],
                        "additionalProperties": False,
                        "properties": {
                            "rank": {"type": "integer", "minimum": 1},
                            "userId": {"type": "string"},
                            "score": score,
                        },
                    },
                },
            },
        },
        "UserRank": {
            "type": "object",
            "required": ["userId", "score", "rank"],
            "additionalProperties": False,
            "properties": {"userId": {"type": "string"}, "score": score, "rank": {"type": "integer", "minimum": 1}},
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "additionalProperties": False,
            "properties": {"status": {"const": "ok"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "database", "redis"],
            "additionalProperties": False,
            "properties": {"status": {"const": "ready"}, "database": {"const": "ok"}, "redis": {"const": "ok"}},
        },
    }


def _common_paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "summary": "The process answers.",
                "operationId": "healthz",
                "parameters": [_REQUEST_ID],
                "responses": {"200": _json({"$ref": "#/components/schemas/Health"}, "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "The database and Redis answer.",
                "operationId": "readyz",
                "parameters": [_REQUEST_ID],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Ready"}, "Ready to serve."),
                    "503": _error("A dependency is down (not_ready); the message names it.", _RETRY_AFTER),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of every worker of this service.",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document of this service.")},
            }
        },
    }


def _increment_paths(settings: Settings) -> dict[str, Any]:
    return {
        "/score": {
            "post": {
                "summary": "Add to the caller's total.",
                "description": (
                    "The user is the token's `sub`. With an `Idempotency-Key`, a retry within 24 h "
                    "gets the first answer again (with `Idempotent-Replayed: true`) and adds nothing."
                ),
                "operationId": "submitScore",
                "security": [{"bearer": []}],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                    },
                    _REQUEST_ID,
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreSubmission"}}},
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/ScoreAccepted"}, "Added; the new total and rank."),
                    "400": _error(
                        "Malformed JSON (malformed_json) or Idempotency-Key (invalid_header), HTTP framing "
                        "that cannot be trusted (malformed_request), or a body that ended early (incomplete_body)."
                    ),
                    "401": _error("Missing, invalid or expired token."),
                    "413": _error(f"Body over {settings.max_content_length} bytes (body_too_large)."),
                    "415": _error("Not application/json in UTF-8 (unsupported_media_type)."),
                    "422": _error(
                        'Not exactly {"score": <integer in range>} (invalid_body, invalid_score), the total would '
                        "pass 2^53 - 1 (total_limit_exceeded), or the Idempotency-Key was used with another score "
                        "(idempotency_conflict)."
                    ),
                    "429": _error("Over RATE_LIMIT_PER_USER (rate_limited).", _RETRY_AFTER),
                    "503": _error("The database is unavailable (database_unavailable).", _RETRY_AFTER),
                },
            }
        }
    }


def _board_paths() -> dict[str, Any]:
    auth_note = " Needs the token when BOARD_REQUIRE_AUTH is on."
    unauthorized = _error("No usable token (only with BOARD_REQUIRE_AUTH).")
    return {
        "/": {
            "get": {
                "summary": "The embeddable live board page.",
                "operationId": "boardPage",
                "parameters": [
                    {"name": "n", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
                    {"name": "title", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "theme", "in": "query", "required": False, "schema": {"enum": ["light", "dark"]}},
                ],
                "responses": {
                    "200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/events": {
            "get": {
                "summary": "The live board as Server-Sent Events." + auth_note,
                "description": (
                    "`retry:` on connect, then the current board (unless `Last-Event-ID` is its version), then every "
                    'newer board as `id: <version>` + `data: {"type":"update","top":[[userId, score]],'
                    '"version":N,"ts":T}`, and `: ping` at least every 15 s. Over a cap or while draining: '
                    "a `retry:` hint and the end of the stream."
                ),
                "operationId": "events",
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
                    _REQUEST_ID,
                ],
                "responses": {
                    "200": {
                        "description": "The stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "401": unauthorized,
                },
            }
        },
        "/leaderboard": {
            "get": {
                "summary": "The current board." + auth_note,
                "operationId": "leaderboard",
                "parameters": [
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                    _REQUEST_ID,
                ],
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/Leaderboard"},
                        "The board.",
                        {"ETag": {"description": "The board version, quoted.", "schema": {"type": "string"}}},
                    ),
                    "304": {"description": "Unchanged since the ETag given."},
                    "401": unauthorized,
                    "503": _error("No board available yet (Redis down since start).", _RETRY_AFTER),
                },
            }
        },
        "/leaderboard/users/{userId}": {
            "get": {
                "summary": "A user's total and exact rank, also outside the top N." + auth_note,
                "operationId": "userRank",
                "parameters": [
                    {"name": "userId", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}},
                    _REQUEST_ID,
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/UserRank"}, "The user's standing."),
                    "401": unauthorized,
                    "404": _error("No score for this user (user_not_found)."),
                    "503": _error("The database is unavailable.", _RETRY_AFTER),
                },
            }
        },
        "/stats": {
            "get": {
                "summary": "This worker's own numbers (viewers, frames, reconnects)." + auth_note,
                "operationId": "stats",
                "parameters": [
                    {"name": "greenlets", "in": "query", "required": False, "schema": {"enum": ["0", "1"]}},
                ],
                "responses": {"200": _json({"type": "object"}, "Numbers."), "401": unauthorized},
            }
        },
    }


def openapi_document(service: str, settings: Settings) -> dict[str, Any]:
    """The document for `service` ("increment" or "board")."""
    paths = _common_paths()
    paths |= _increment_paths(settings) if service == "increment" else _board_paths()
    title = "Increment Service" if service == "increment" else "View Board Service"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"Realtime leaderboard: {title}",
            "version": VERSION,
            "description": 'Every error is {"error": {"code", "message"}}. See the README for the whole contract.',
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
