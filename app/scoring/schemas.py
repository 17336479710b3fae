"""Strict parsing of `POST /score` requests.

The standard library's `json` is lenient where we must not be: it accepts
NaN and Infinity, silently keeps the last of duplicate keys, and turns
`1e3` into a float. The hooks below refuse all three, so a body is either
exactly `{"score": <integer>}` or a clear 4xx.
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug.datastructures import Headers
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Request

from app.errors import (
    IncompleteBody,
    InvalidBody,
    InvalidHeader,
    InvalidScore,
    MalformedJSON,
    PayloadTooLarge,
    UnsupportedMediaType,
    body_too_large_message,
)
from app.models import IDEMPOTENCY_KEY_MAX_LENGTH

ALLOWED_FIELDS = frozenset({"score"})
# Longer integer literals are out of range anyway; don't spend CPU on them.
_MAX_INT_DIGITS = 30


class _NotAnInteger:
    """Stands in for a JSON number with a fraction or exponent."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


class _Oversized:
    """Stands in for an integer literal too long to be in range."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate keys")
    return dict(pairs)


def _parse_int(literal: str) -> int | _Oversized:
    return _Oversized(literal) if len(literal) > _MAX_INT_DIGITS else int(literal)


def read_body(request: Request, limit: int) -> bytes:
    """The whole request body if it is at most `limit` bytes, chunked bodies included;
    IncompleteBody when the client stopped sending before the body's end.

    The app reads at most `limit + 1` bytes (see MAX_CONTENT_LENGTH in
    config.settings); getting more than `limit` means the body is too large.
    """
    try:
        body = request.get_data(cache=False)
    except ClientDisconnected:  # the connection ended inside a chunked body
        raise IncompleteBody() from None
    if len(body) > limit:
        raise PayloadTooLarge(body_too_large_message(limit))
    # Under gunicorn the stream ends quietly at a hang-up, however many bytes
    # Content-Length promised (werkzeug trusts the server to end it), so a
    # body cut short could still parse as a complete JSON document.
    if request.content_length is not None and len(body) < request.content_length:
        raise IncompleteBody()
    return body


def parse_json(body: bytes) -> Any:
    """Decode a UTF-8 JSON document strictly; raise MalformedJSON otherwise."""
    if not body.strip():
        raise MalformedJSON('The request body is empty; send {"score": <integer>}.')
    try:
        text = body.decode("utf-8")
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_NotAnInteger,
            parse_int=_parse_int,
            object_pairs_hook=_unique_keys,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedJSON() from None


def check_content_type(mimetype: str, charset: str | None) -> None:
    if mimetype != "application/json":
        raise UnsupportedMediaType()
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise UnsupportedMediaType("JSON bodies must be UTF-8.")


def parse_score(document: Any, low: int, high: int) -> int:
    """The score in a `{"score": n}` document, within [low, high], or an InvalidBody/InvalidScore."""
    if not isinstance(document, dict):
        raise InvalidBody('The body must be a JSON object like {"score": 10}.')
    unknown = sorted(set(document) - ALLOWED_FIELDS)
    if unknown:
        raise InvalidBody(f"Unknown field(s): {', '.join(unknown)}. Only 'score' is accepted.")
    if "score" not in document:
        raise InvalidBody('The body needs a "score" field, like {"score": 10}.')
    return checked_score(document["score"], low, high)


def checked_score(score: Any, low: int, high: int, where: str = "score") -> int:
    """A JSON integer within [low, high], or InvalidScore naming `where`."""
    in_range = f"between {low} and {high}"
    if isinstance(score, _Oversized) or (type(score) is int and not low <= score <= high):
        raise InvalidScore(f"{where} must be an integer {in_range}.")
    if type(score) is not int:  # bool is an int subclass; true is not a score
        raise InvalidScore(f"{where} must be a JSON integer {in_range} (no quotes, fraction or exponent).")
    return score


def parse_scores(document: Any, most: int) -> dict[str, Any]:
    """The `{"scores": {"<boardId>": <score>, ...}}` of POST /scores: 1 to `most` boards, scores unchecked."""
    example = '{"scores": {"weekly": 10, "level-1": 250}}'
    if not isinstance(document, dict) or set(document) != {"scores"}:
        raise InvalidBody(f"The body must be a JSON object like {example}.")
    scores = document["scores"]
    if not isinstance(scores, dict) or not 1 <= len(scores) <= most:
        raise InvalidBody(f'"scores" must map 1 to {most} board ids to scores, like {example}.')
    return scores


def parse_idempotency_key(headers: Headers) -> str | None:
    """The Idempotency-Key header: absent, or 1-255 visible ASCII characters."""
    values = headers.getlist("Idempotency-Key")
    if not values:
        return None
    if len(values) > 1:
        raise InvalidHeader("Send at most one Idempotency-Key header.")
    key: str = values[0]
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH or not all("\x21" <= ch <= "\x7e" for ch in key):
        raise InvalidHeader(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} visible ASCII characters (no spaces)."
        )
    return key
