"""JWT settings and loaders: who the caller is, and every refusal in the envelope.

flask-jwt-extended does the decoding with the algorithm pinned by settings
(HS256 with a shared secret, or RS256 with a public key). The loaders here
add what it leaves open: `exp` is required, `sub` must be a usable user id,
and each failure is a 401 in the one error envelope (its default is a 422).
"""

from __future__ import annotations

import re
import time
import unicodedata
from datetime import timedelta
from typing import Any

from flask import Flask, Response, current_app
from flask_jwt_extended import create_access_token, get_jwt, get_jwt_identity, verify_jwt_in_request

from app.errors import Forbidden, error_response
from app.extensions import jwt
from app.leaderboard.names import display_name
from app.models import USER_ID_MAX_LENGTH
from config.settings import format_duration

# An issuer's clock may run a little ahead of ours: a token minted for exactly
# JWT_MAX_LIFETIME is still fine when measured from our now.
CLOCK_SKEW_SECONDS = 60

# The common case, checked first: visible ASCII. ':' is fine (Redis members
# split on the first one only).
_ASCII_USER_ID = re.compile(rf"[\x21-\x7e]{{1,{USER_ID_MAX_LENGTH}}}")
# Beyond ASCII, characters of these Unicode categories are refused: controls
# (Cc), format characters (Cf: zero width space, bidi overrides, BOM), lone
# surrogates (Cs: no database can store them), private use (Co) and spaces
# (Zs, Zl, Zp). Each either hides inside an id that looks like another one or
# cannot be shown. Unassigned code points (Cn) pass: the character database of
# the Python running here lags behind the devices that send ids, and refusing
# a new emoji would lock its users out.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zs", "Zl", "Zp"})
# The format characters that words and emoji need: zero width non-joiner and
# joiner (Persian and Indic words, 👩‍💻), allowed only between two visible
# non-ASCII characters, where they join or part them and cannot hide.
_JOINERS = frozenset("\u200c\u200d")
# A subdivision flag is a black flag, tag characters (Cf) and a cancel tag.
_EMOJI_TAG_SEQUENCE = re.compile("\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f")


def _visible(char: str) -> bool:
    code = ord(char)
    if code < 0x80:
        return 0x21 <= code <= 0x7E
    noncharacter = 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE
    return not noncharacter and unicodedata.category(char) not in _REFUSED_CATEGORIES


def is_valid_user_id(value: object) -> bool:
    """True for 1 to USER_ID_MAX_LENGTH printable characters: no space, control
    or invisible character; letters of any script and emoji are fine."""
    if not isinstance(value, str) or not 1 <= len(value) <= USER_ID_MAX_LENGTH:
        return False
    if _ASCII_USER_ID.fullmatch(value):
        return True
    chars = _EMOJI_TAG_SEQUENCE.sub("\U0001f3f4", value)
    for i, char in enumerate(chars):
        if char in _JOINERS:
            between = chars[i - 1 : i + 2] if i > 0 else ""
            if len(between) != 3 or not all(ord(c) >= 0x80 and _visible(c) for c in between[::2]):
                return False
        elif not _visible(char):
            return False
    return True


def current_user_id() -> str:
    """The authenticated caller (the token's `sub`), inside a protected view."""
    return str(get_jwt_identity())


def current_display_name() -> str | None:
    """The caller's display name (the JWT_NAME_CLAIM claim), when the token carries a usable one."""
    return display_name(get_jwt().get(current_app.extensions["settings"].jwt_name_claim))


def is_admin(claims: dict[str, Any]) -> bool:
    """Whether the claims carry the admin role (ADMIN_CLAIM equal to, or a list holding, ADMIN_ROLE)."""
    settings = current_app.extensions["settings"]
    role = claims.get(settings.admin_claim)
    return role == settings.admin_role or (isinstance(role, list) and settings.admin_role in role)


def require_admin() -> None:
    """Inside a view: a valid token (else 401) that carries the admin role (else 403)."""
    verify_jwt_in_request()
    if not is_admin(get_jwt()):
        raise Forbidden("This needs a token with the admin role.")


def mint_token(user_id: str, expires_in: timedelta, *, admin: bool = False, name: str | None = None) -> str:
    """A signed access token for `user_id` that lives `expires_in`, for scripts, demos and tests, with
    the admin role or a display name if asked; ValueError for an unusable id or a lifetime over
    JWT_MAX_LIFETIME."""
    if not is_valid_user_id(user_id):
        raise ValueError(f"user id must be 1 to {USER_ID_MAX_LENGTH} printable characters without spaces")
    longest = _max_lifetime()
    if longest is not None and expires_in > longest:
        raise ValueError(
            f"a lifetime of {format_duration(expires_in)} is longer than JWT_MAX_LIFETIME ({format_duration(longest)})"
        )
    settings = current_app.extensions["settings"]
    claims: dict[str, Any] = {}
    if admin:
        claims[settings.admin_claim] = settings.admin_role
    if name is not None:
        if display_name(name) is None:
            raise ValueError("a name must be 1 to 64 printable characters")
        claims[settings.jwt_name_claim] = display_name(name)
    return str(create_access_token(identity=user_id, expires_delta=expires_in, additional_claims=claims))


def _max_lifetime() -> timedelta | None:
    lifetime: timedelta | None = current_app.extensions["settings"].jwt_max_lifetime
    return lifetime


def _lives_within_max_lifetime(payload: dict[str, Any]) -> bool:
    """`exp` at most JWT_MAX_LIFETIME after `iat` (when given) and after now."""
    longest = _max_lifetime()
    if longest is None:
        return True
    seconds = longest.total_seconds()
    try:  # as PyJWT reads them (it has refused what int() cannot take, but be sure)
        exp = int(payload["exp"])
        issued = int(payload["iat"]) if "iat" in payload else None
    except (TypeError, ValueError, OverflowError):
        return False
    if exp - time.time() > seconds + CLOCK_SKEW_SECONDS:
        return False
    return issued is None or exp - issued <= seconds


def _unauthorized(code: str, message: str) -> Response:
    return error_response(401, code, message, {"WWW-Authenticate": 'Bearer realm="leaderboard"'})


def init_auth(app: Flask) -> None:
    """Bind flask-jwt-extended to `app` with our checks and our envelope."""
    jwt.init_app(app)


@jwt.unauthorized_loader
def _missing_token(reason: str) -> Response:
    return _unauthorized("missing_token", "Send a bearer token: 'Authorization: Bearer <JWT>'.")


@jwt.invalid_token_loader
def _invalid_token(reason: str) -> Response:
    return _unauthorized("invalid_token", "The bearer token is not valid.")


@jwt.expired_token_loader
def _expired_token(header: dict[str, Any], payload: dict[str, Any]) -> Response:
    return _unauthorized("expired_token", "The bearer token has expired.")


@jwt.token_verification_loader
def _token_is_acceptable(header: dict[str, Any], payload: dict[str, Any]) -> bool:
    return "exp" in payload and is_valid_user_id(payload.get("sub")) and _lives_within_max_lifetime(payload)


@jwt.token_verification_failed_loader
def _token_not_acceptable(header: dict[str, Any], payload: dict[str, Any]) -> Response:
    if "exp" in payload and is_valid_user_id(payload.get("sub")):
        longest = format_duration(_max_lifetime() or timedelta())
        return _unauthorized("invalid_token", f"The token lives longer than JWT_MAX_LIFETIME ({longest}) allows.")
    return _unauthorized(
        "invalid_token",
        f"The token needs an 'exp' claim and a 'sub' of 1 to {USER_ID_MAX_LENGTH} printable characters.",
    )


@jwt.needs_fresh_token_loader
def _needs_fresh(header: dict[str, Any], payload: dict[str, Any]) -> Response:
    return _unauthorized("invalid_token", "A fresh token is required.")


@jwt.revoked_token_loader
def _revoked(header: dict[str, Any], payload: dict[str, Any]) -> Response:
    return _unauthorized("invalid_token", "The bearer token has been revoked.")


@jwt.user_lookup_error_loader
def _user_lookup_failed(header: dict[str, Any], payload: dict[str, Any]) -> Response:
    return _unauthorized("invalid_token", "The token's user is unknown.")
