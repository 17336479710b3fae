"""The OpenAPI 3 description of each service, served at `/openapi.json`.

Written by hand from the contract (SPEC.md) and kept true by tests: every
route the app has is described here and the other way round
(tests/test_openapi.py), and schemathesis calls every operation and checks
each answer against its description.
"""

from __future__ import annotations

from typing import Any

from app.leaderboard.boards import BOARD_ID, TOP_N_MAX
from app.leaderboard.ranks import PAGE_LIMIT_MAX
from app.leaderboard.rules import OPERATORS, ORDERS
from app.leaderboard.writes import MAX_BOARDS_AT_ONCE
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


_BOARD_ID = {"type": "string", "pattern": BOARD_ID.pattern}
_BOARD_PARAMETER = {
    "name": "boardId",
    "in": "path",
    "required": True,
    "description": "1 to 64 of A-Z a-z 0-9 _ . -",
    "schema": _BOARD_ID,
}
_USER_PARAMETER = {"name": "userId", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}

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
    period = {"type": "string", "description": "On a board with resets: the period (2026-12-02, 2026-W49, ...)."}
    period_ends = {"type": "string", "format": "date-time", "description": "When the period ends (board timezone)."}
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
        "BoardScoreSubmission": {
            "type": "object",
            "required": ["score"],
            "additionalProperties": False,
            "properties": {
                "score": {
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0,
                    "maximum": MAX_SAFE_TOTAL,
                    "examples": [1500],
                    "description": (
                        "Within the board's scoreMin and scoreMax (422 invalid_score outside). A JSON integer "
                        'literal: 1500.0, 1.5e3, "1500" and true are refused with 422 invalid_score.'
                    ),
                }
            },
        },
        "ScoresSubmission": {
            "type": "object",
            "required": ["scores"],
            "additionalProperties": False,
            "properties": {
                "scores": {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": MAX_BOARDS_AT_ONCE,
                    "propertyNames": _BOARD_ID,
                    "additionalProperties": {"type": "integer", "format": "int64", "minimum": 0},
                    "description": "Board id to score, 1 to 20 boards: all recorded, or none.",
                }
            },
        },
        "ScoreAccepted": {
            "type": "object",
            "required": ["status", "userId", "score", "rank", "improved"],
            "additionalProperties": False,
            "properties": {
                "status": {"const": "ok"},
                "userId": {"type": "string"},
                "score": {**score, "description": "The caller's value on the board after the submission."},
                "rank": {**rank, "description": "1-based rank, or null outside the board's top N."},
                "improved": {"type": "boolean", "description": "Whether the submission changed the value."},
                "period": {**period, "description": "On a board with resets: the period it counted in."},
            },
        },
        "ScoresAccepted": {
            "type": "object",
            "required": ["status", "userId", "scores"],
            "additionalProperties": False,
            "properties": {
                "status": {"const": "ok"},
                "userId": {"type": "string"},
                "scores": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["score", "rank", "improved"],
                        "additionalProperties": False,
                        "properties": {
                            "score": score,
                            "rank": rank,
                            "improved": {"type": "boolean"},
                            "period": period,
                        },
                    },
                },
            },
        },
        "Names": {
            "type": "object",
            "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 64},
            "description": "Display names of the users listed (when they have one): text, never markup.",
        },
        "Entry": {
            "type": "object",
            "required": ["rank", "userId", "score"],
            "additionalProperties": False,
            "properties": {"rank": {"type": "integer", "minimum": 1}, "userId": {"type": "string"}, "score": score},
        },
        "Leaderboard": {
            "type": "object",
            "required": ["top"],
            "additionalProperties": False,
            "description": "The live board (with its version), or with ?period= a period that ended (no version).",
            "properties": {
                "version": {"type": "integer", "minimum": 1},
                "top": {"type": "array", "maxItems": TOP_N_MAX, "items": {"$ref": "#/components/schemas/Entry"}},
                "names": {"$ref": "#/components/schemas/Names"},
                "period": period,
                "periodEnds": period_ends,
            },
        },
        "Ranking": {
            "type": "object",
            "required": ["entries"],
            "additionalProperties": False,
            "properties": {
                "count": {"type": "integer", "minimum": 0, "description": "Users on the board (pages, around)."},
                "period": period,
                "periodEnds": period_ends,
                "entries": {
                    "type": "array",
                    "maxItems": PAGE_LIMIT_MAX,
                    "items": {"$ref": "#/components/schemas/Entry"},
                },
                "names": {"$ref": "#/components/schemas/Names"},
            },
        },
        "Board": {
            "type": "object",
            "required": ["id", "title", "topN", "order", "operator", "scoreMin", "scoreMax", "reset", "timezone"],
            "additionalProperties": False,
            "properties": {
                "id": _BOARD_ID,
                "title": {"type": "string", "minLength": 1, "maxLength": 120},
                "topN": {"type": "integer", "minimum": 1, "maximum": TOP_N_MAX},
                "order": {"enum": list(ORDERS)},
                "operator": {"enum": list(OPERATORS)},
                "scoreMin": score,
                "scoreMax": score,
                "reset": {"type": "string"},
                "timezone": {"type": "string"},
                "period": {"type": ["string", "null"], "description": "The current period (null without resets)."},
                "periodEnds": {"type": ["string", "null"], "format": "date-time", "description": "When it ends."},
            },
        },
        "Periods": {
            "type": "object",
            "required": ["periods"],
            "additionalProperties": False,
            "properties": {
                "periods": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "start", "end", "current", "top"],
                        "additionalProperties": False,
                        "properties": {
                            "id": period,
                            "start": {"type": "string", "format": "date-time"},
                            "end": {"type": "string", "format": "date-time"},
                            "current": {"type": "boolean"},
                            "top": {"type": "array", "maxItems": 3, "items": {"$ref": "#/components/schemas/Entry"}},
                            "names": {"$ref": "#/components/schemas/Names"},
                        },
                    },
                }
            },
        },
        "BoardSettings": {
            "type": "object",
            "additionalProperties": False,
            "description": (
                "Any of a board's settings; those left out keep their value (or their default, on a new board). "
                "order, operator, reset and timezone are fixed once the board has scores."
            ),
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 120},
                "topN": {"type": "integer", "minimum": 1, "maximum": TOP_N_MAX},
                "order": {"enum": list(ORDERS)},
                "operator": {"enum": list(OPERATORS)},
                "scoreMin": score,
                "scoreMax": score,
                "reset": {
                    "type": "string",
                    "maxLength": 100,
                    "examples": ["none", "daily", "weekly", "monthly", "0 6 * * 1"],
                    "description": "none, daily, weekly (Monday), monthly, or a cron expression (5 fields, or 6 "
                    "with seconds last), in the board's timezone.",
                },
                "timezone": {"type": "string", "examples": ["UTC", "Europe/Berlin"]},
            },
        },
        "Boards": {
            "type": "object",
            "required": ["boards"],
            "additionalProperties": False,
            "properties": {"boards": {"type": "array", "items": {"$ref": "#/components/schemas/Board"}}},
        },
        "Done": {
            "type": "object",
            "required": ["status"],
            "description": "What was deleted, removed or erased.",
            "properties": {
                "status": {"enum": ["deleted", "removed", "erased"]},
                "board": {"type": "string"},
                "userId": {"type": "string"},
                "boards": {"type": "array", "items": {"type": "string"}},
                "idempotencyKeys": {"type": "integer", "minimum": 0},
                "name": {"type": "boolean"},
                "changes": {"type": "integer", "minimum": 0},
            },
        },
        "UserRank": {
            "type": "object",
            "required": ["userId", "score", "rank"],
            "additionalProperties": False,
            "properties": {
                "userId": {"type": "string"},
                "score": score,
                "rank": {"type": "integer", "minimum": 1},
                "period": period,
                "periodEnds": period_ends,
            },
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


_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}


def _submission_errors(settings: Settings) -> dict[str, Any]:
    return {
        "400": _error(
            "Malformed JSON (malformed_json) or Idempotency-Key (invalid_header), HTTP framing "
            "that cannot be trusted (malformed_request), or a body that ended early (incomplete_body)."
        ),
        "401": _error("Missing, invalid or expired token."),
        "404": _error("No such board (board_not_found); nothing changed."),
        "413": _error(f"Body over {settings.max_content_length} bytes (body_too_large)."),
        "415": _error("Not application/json in UTF-8 (unsupported_media_type)."),
        "422": _error(
            "Not the body described (invalid_body), a score outside the board's bounds (invalid_score), a total "
            "that would pass 2^53 - 1 (total_limit_exceeded), or the Idempotency-Key used with another body "
            "(idempotency_conflict)."
        ),
        "429": _error("Over RATE_LIMIT_PER_USER (rate_limited).", _RETRY_AFTER),
        "503": _error("The database is unavailable (database_unavailable).", _RETRY_AFTER),
    }


def _submit(settings: Settings, operation_id: str, body: str, summary: str, parameters: list[Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": (
                "The user is the token's `sub`; a `name` claim (JWT_NAME_CLAIM) becomes their display name. "
                "With an `Idempotency-Key`, a retry within 24 h gets the first answer again (with "
                "`Idempotent-Replayed: true`) and changes nothing."
            ),
            "operationId": operation_id,
            "security": [{"bearer": []}],
            "parameters": [*parameters, _IDEMPOTENCY_KEY, _REQUEST_ID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
            },
            "responses": {
                "200": _json(
                    {
                        "$ref": "#/components/schemas/ScoresAccepted"
                        if body == "ScoresSubmission"
                        else "#/components/schemas/ScoreAccepted"
                    },
                    "Recorded; the value after it, the rank, whether it changed.",
                ),
                **_submission_errors(settings),
            },
        }
    }


def _admin(method: str, operation_id: str, summary: str, answer: str, **extra: Any) -> dict[str, Any]:
    responses = {
        "200": _json({"$ref": f"#/components/schemas/{answer}"}, "Done."),
        "401": _error("Missing, invalid or expired token."),
        "403": _error("The token does not carry the admin role (forbidden)."),
        "503": _error("The database is unavailable (database_unavailable).", _RETRY_AFTER),
        **extra.pop("responses", {}),
    }
    return {
        method: {
            "summary": summary,
            "operationId": operation_id,
            "security": [{"bearer": []}],
            "parameters": [*extra.pop("parameters", []), _REQUEST_ID],
            "responses": responses,
            **extra,
        }
    }


def _increment_paths(settings: Settings) -> dict[str, Any]:
    not_found = _error("No such board (board_not_found).")
    return {
        "/score": _submit(
            settings, "submitScore", "ScoreSubmission", "Add to the caller's total on the default board.", []
        ),
        "/boards/{boardId}/score": _submit(
            settings,
            "submitBoardScore",
            "BoardScoreSubmission",
            "Submit a score to a board: added, kept if best, or set, by the board's operator.",
            [_BOARD_PARAMETER],
        ),
        "/scores": _submit(
            settings, "submitScores", "ScoresSubmission", "Submit scores to several boards at once: all or none.", []
        ),
        "/admin/boards": _admin("get", "listBoards", "Every board's settings.", "Boards"),
        "/admin/boards/{boardId}": {
            **_admin(
                "put",
                "putBoard",
                "Create a board (201) or change its settings (200).",
                "Board",
                parameters=[_BOARD_PARAMETER],
                requestBody={
                    "required": False,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BoardSettings"}}},
                },
                responses={
                    "201": _json({"$ref": "#/components/schemas/Board"}, "Created."),
                    "400": _error("Malformed JSON (malformed_json) or HTTP framing (malformed_request)."),
                    "409": _error("A rule of a board that has scores, or of the default board (board_immutable)."),
                    "413": _error(f"Body over {settings.max_content_length} bytes (body_too_large)."),
                    "415": _error("Not application/json in UTF-8 (unsupported_media_type)."),
                    "422": _error("Settings that cannot be (invalid_board, invalid_body)."),
                },
            ),
            **_admin(
                "delete",
                "deleteBoard",
                "Delete a board with its scores; its viewers are told to go.",
                "Done",
                parameters=[_BOARD_PARAMETER],
                responses={"404": not_found, "409": _error("The default board (board_protected).")},
            ),
        },
        "/admin/boards/{boardId}/users/{userId}": _admin(
            "delete",
            "removeEntry",
            "Remove one user's entry from a board (a cheater): the next user moves up at once.",
            "Done",
            parameters=[_BOARD_PARAMETER, _USER_PARAMETER],
            responses={"404": _error("No such board (board_not_found), or no score of the user (user_not_found).")},
        ),
        "/admin/users/{userId}": _admin(
            "delete",
            "eraseUser",
            "Erase a user from every board, with their name and idempotency records.",
            "Done",
            parameters=[_USER_PARAMETER],
            responses={"404": _error("Not a user id (user_not_found).")},
        ),
    }


def _board_paths() -> dict[str, Any]:
    auth_note = " Needs the token when BOARD_REQUIRE_AUTH is on."
    unauthorized = _error("No usable token (only with BOARD_REQUIRE_AUTH).")
    not_found = _error("No such board (board_not_found).")
    query = [
        ("offset", {"type": "integer", "minimum": 0}, "Entries from rank offset + 1 (with limit; count added)."),
        ("limit", {"type": "integer", "minimum": 1, "maximum": PAGE_LIMIT_MAX}, "How many entries (default 10)."),
        ("around", {"type": "string", "minLength": 1}, "limit entries with this user in the middle."),
        ("users", {"type": "string", "minLength": 1}, "Up to 100 user ids, by commas: their entries in rank order."),
        ("period", {"type": "string", "minLength": 1}, "A period of a board with resets (default: the current one)."),
    ]

    def page(board: list[Any]) -> dict[str, Any]:
        return {
            "get": {
                "summary": "The embeddable live board page.",
                "operationId": "boardPage" + ("OfBoard" if board else ""),
                "parameters": [
                    *board,
                    {"name": "n", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
                    {"name": "title", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "theme", "in": "query", "required": False, "schema": {"enum": ["light", "dark"]}},
                ],
                "responses": {
                    "200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "404": not_found,
                },
            }
        }

    def stream(board: list[Any], summary: str, description: str, operation: str) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary + auth_note,
                "description": description,
                "operationId": operation + ("OfBoard" if board else ""),
                "parameters": [
                    *board,
                    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
                    _REQUEST_ID,
                ],
                "responses": {
                    "200": {
                        "description": "The stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "401": unauthorized,
                    "404": not_found,
                },
            }
        }

    def events(board: list[Any]) -> dict[str, Any]:
        return stream(
            board,
            "The live board as Server-Sent Events.",
            "`retry:` on connect, then the current board (unless `Last-Event-ID` is its version), then every "
            'newer board as `id: <version>` + `data: {"type":"update","top":[[userId, score]],'
            '"version":N,"ts":T}` (plus `names` when users have display names), and `: ping` at least '
            "every 15 s. Over a cap, while draining, or when the board is deleted: a `retry:` hint and "
            "the end of the stream.",
            "events",
        )

    def changes(board: list[Any]) -> dict[str, Any]:
        return stream(
            board,
            "The board's change log, live, as Server-Sent Events.",
            "`retry:` on connect, then one frame per accepted change from now on, as `id: <entry id>` + "
            '`data: {"type":"score","board","userId","score","previous","rank","version","ts"}`. With '
            "`Last-Event-ID`, every change after that entry first; when that entry is no longer kept, "
            '`data: {"type":"gap"}` first and then the oldest entry kept onwards. `: ping` at least every '
            "15 s. Over a cap, while draining, or when the board is deleted: a `retry:` hint and the end.",
            "changes",
        )

    def leaderboard(board: list[Any]) -> dict[str, Any]:
        return {
            "get": {
                "summary": "The current board, or a ranking from SQL (offset, around or users)." + auth_note,
                "operationId": "leaderboard" + ("OfBoard" if board else ""),
                "parameters": [
                    *board,
                    *(
                        {"name": name, "in": "query", "required": False, "schema": schema, "description": text}
                        for name, schema, text in query
                    ),
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                    _REQUEST_ID,
                ],
                "responses": {
                    "200": _json(
                        {
                            "oneOf": [
                                {"$ref": "#/components/schemas/Leaderboard"},
                                {"$ref": "#/components/schemas/Ranking"},
                            ]
                        },
                        "The board (with an ETag), or the ranking asked for.",
                        {"ETag": {"description": "The board version, quoted.", "schema": {"type": "string"}}},
                    ),
                    "304": {"description": "Unchanged since the ETag given."},
                    "400": _error("More than one of offset, around and users, or a bad value (invalid_query)."),
                    "401": unauthorized,
                    "404": _error(
                        "No such board (board_not_found), around a user with no score (user_not_found), or a "
                        "period that has not begun (period_not_found)."
                    ),
                    "503": _error("No board available yet, or the database is unavailable.", _RETRY_AFTER),
                },
            }
        }

    def user_rank(board: list[Any]) -> dict[str, Any]:
        return {
            "get": {
                "summary": "A user's value and exact rank, also outside the top N." + auth_note,
                "operationId": "userRank" + ("OfBoard" if board else ""),
                "parameters": [
                    *board,
                    _USER_PARAMETER,
                    {"name": "period", "in": "query", "required": False, "schema": {"type": "string"}},
                    _REQUEST_ID,
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/UserRank"}, "The user's standing."),
                    "400": _error("period is not the id of one of the board's periods (invalid_query)."),
                    "401": unauthorized,
                    "404": _error(
                        "No such board (board_not_found), no score for this user (user_not_found), or a period "
                        "that has not begun (period_not_found)."
                    ),
                    "503": _error("The database is unavailable.", _RETRY_AFTER),
                },
            }
        }

    return {
        "/": page([]),
        "/events": events([]),
        "/changes": changes([]),
        "/leaderboard": leaderboard([]),
        "/leaderboard/users/{userId}": user_rank([]),
        "/boards": {
            "get": {
                "summary": "Every board's settings and current period." + auth_note,
                "operationId": "boards",
                "parameters": [_REQUEST_ID],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Boards"}, "The boards."),
                    "401": unauthorized,
                },
            }
        },
        "/boards/{boardId}/": page([_BOARD_PARAMETER]),
        "/boards/{boardId}/events": events([_BOARD_PARAMETER]),
        "/boards/{boardId}/changes": changes([_BOARD_PARAMETER]),
        "/boards/{boardId}/leaderboard": leaderboard([_BOARD_PARAMETER]),
        "/boards/{boardId}/users/{userId}": user_rank([_BOARD_PARAMETER]),
        "/boards/{boardId}/periods": {
            "get": {
                "summary": "The board's periods, newest first (the current one, then those with scores), "
                "each with its top 3." + auth_note,
                "operationId": "periodsOfBoard",
                "parameters": [
                    _BOARD_PARAMETER,
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_LIMIT_MAX},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "Only periods before this one (the next page).",
                    },
                    _REQUEST_ID,
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Periods"}, "The periods."),
                    "400": _error("A bad limit, or before is not a period of the board (invalid_query)."),
                    "401": unauthorized,
                    "404": not_found,
                    "503": _error("The database is unavailable.", _RETRY_AFTER),
                },
            }
        },
        "/stats": {
            "get": {
                "summary": "This worker's own numbers (viewers, boards, frames, reconnects), for admins.",
                "operationId": "stats",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "greenlets", "in": "query", "required": False, "schema": {"enum": ["0", "1"]}},
                ],
                "responses": {
                    "200": _json({"type": "object"}, "Numbers."),
                    "401": _error("Missing, invalid or expired token."),
                    "403": _error("The token does not carry the admin role (forbidden)."),
                },
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
