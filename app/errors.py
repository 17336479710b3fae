"""The one JSON error envelope, and the handlers that put every failure in it.

Every error any route returns reads `{"error": {"code": ..., "message": ...}}`:
our own API errors, werkzeug's HTTP errors (404, 405, 413, ...), JWT
failures (see app.auth), database and Redis outages, and anything unexpected.
"""

from __future__ import annotations

import logging
import re

import redis
from flask import Flask, Response, jsonify
from gunicorn.http.errors import ParseException as ServerParseError
from redis.exceptions import RedisClusterException
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from app.extensions import db
from app.leaderboard import (
    BoardImmutable,
    BoardNotFound,
    BoardProtected,
    IdempotencyKeyReused,
    InvalidBoard,
    TotalLimitExceeded,
)
from app.leaderboard.seasons import PeriodNotBegun, UnknownPeriod

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error the API answers on purpose; subclasses fix status and code."""

    status = 400
    code = "bad_request"
    message = "The request could not be understood."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = headers or {}


class MalformedJSON(APIError):
    status, code = 400, "malformed_json"
    message = "The request body is not valid JSON."


class InvalidHeader(APIError):
    status, code = 400, "invalid_header"


class IncompleteBody(APIError):
    status, code = 400, "incomplete_body"
    message = "The request body ended before its Content-Length or its last chunk; nothing was recorded."


class Unauthorized(APIError):
    status, code = 401, "invalid_token"
    message = "The bearer token is missing or invalid."


class Forbidden(APIError):
    status, code = 403, "forbidden"
    message = "This token may not do that."


class NotFound(APIError):
    status, code = 404, "not_found"
    message = "Not found."


class UserNotFound(NotFound):
    code = "user_not_found"


class InvalidQuery(APIError):
    status, code = 400, "invalid_query"


class PayloadTooLarge(APIError):
    status, code = 413, "body_too_large"


class UnsupportedMediaType(APIError):
    status, code = 415, "unsupported_media_type"
    message = "Send the body as JSON with 'Content-Type: application/json'."


class InvalidBody(APIError):
    status, code = 422, "invalid_body"


class InvalidScore(APIError):
    status, code = 422, "invalid_score"


class RateLimited(APIError):
    status, code = 429, "rate_limited"

    def __init__(self, limit: str, wait: int) -> None:
        super().__init__(
            f"Too many scores for this user ({limit}); retry in {wait} s.", headers={"Retry-After": str(wait)}
        )


class ServiceUnavailable(APIError):
    status, code = 503, "service_unavailable"
    message = "The service is temporarily unavailable; try again shortly."


# Werkzeug's HTTP errors keep their status; these get a friendlier code.
_HTTP_CODES = {413: "body_too_large", 405: "method_not_allowed", 404: "not_found"}


def body_too_large_message(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The envelope, as a response."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def register_error_handlers(app: Flask) -> None:
    """Route every failure of `app` through the envelope."""

    @app.errorhandler(APIError)
    def api_error(error: APIError) -> Response:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        if status == 413:
            message = body_too_large_message(app.extensions["settings"].max_content_length)
        else:
            message = error.description or error.name
        return error_response(status, _HTTP_CODES.get(status, _snake(error.name)), message, headers)

    @app.errorhandler(TotalLimitExceeded)
    def total_limit(error: TotalLimitExceeded) -> Response:
        return error_response(
            422, "total_limit_exceeded", "This score would take the total past the largest exact value (2^53 - 1)."
        )

    @app.errorhandler(BoardNotFound)
    def board_not_found(error: BoardNotFound) -> Response:
        return error_response(404, "board_not_found", f"There is no board {error.board_id!r}.")

    @app.errorhandler(UnknownPeriod)
    def unknown_period(error: UnknownPeriod) -> Response:
        return error_response(400, "invalid_query", f"{str(error)!r} is not the id of one of the board's periods.")

    @app.errorhandler(PeriodNotBegun)
    def period_not_begun(error: PeriodNotBegun) -> Response:
        return error_response(404, "period_not_found", f"Period {str(error)!r} of the board has not begun.")

    @app.errorhandler(InvalidBoard)
    def invalid_board(error: InvalidBoard) -> Response:
        return error_response(422, "invalid_board", str(error))

    @app.errorhandler(BoardImmutable)
    def board_immutable(error: BoardImmutable) -> Response:
        return error_response(409, "board_immutable", str(error))

    @app.errorhandler(BoardProtected)
    def board_protected(error: BoardProtected) -> Response:
        return error_response(409, "board_protected", str(error))

    @app.errorhandler(IdempotencyKeyReused)
    def idempotency_conflict(error: IdempotencyKeyReused) -> Response:
        return error_response(
            422, "idempotency_conflict", "This Idempotency-Key was already used with a different request body."
        )

    @app.errorhandler(SQLAlchemyError)
    def database_error(error: SQLAlchemyError) -> Response:
        db.session.rollback()
        # The driver's first line says what failed (no SQL parameters, no credentials).
        cause = str(getattr(error, "orig", None) or error).strip().splitlines()[0][:200]
        log.warning("database unavailable: %s: %s", error.__class__.__name__, cause)
        return error_response(
            503, "database_unavailable", "The database is unavailable; try again shortly.", {"Retry-After": "1"}
        )

    @app.errorhandler(redis.RedisError)
    @app.errorhandler(RedisClusterException)
    def redis_error(error: Exception) -> Response:
        log.warning("redis unavailable: %s", error.__class__.__name__)
        return error_response(
            503, "redis_unavailable", "Redis is unavailable; try again shortly.", {"Retry-After": "1"}
        )

    @app.errorhandler(ServerParseError)
    def malformed_request(error: Exception) -> Response:
        # gunicorn's parser raises these while the app reads a chunked body (a
        # bad chunk size, extension or terminator): the client's framing, not
        # our fault. gunicorn's own refusals of a request have the same code
        # (JsonErrorsGeventWorker in gunicorn.conf.py).
        log.warning("malformed request body: %s", error.__class__.__name__)
        return error_response(400, "malformed_request", f"The request cannot be parsed: {str(error)[:200]}.")

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")
