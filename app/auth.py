"""JWT settings and loaders: who the caller is, and every refusal in the envelope.

flask-jwt-extended does the decoding with the algorithm pinned by settings
(HS256 with a shared secret, or RS256 with a public key). The loaders here
add what it leaves open: `exp` is required, `sub` must be a usable user id,
and each failure is a 401 in the one error envelope (its default is a 422).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from flask import Flask, Response, current_app
from flask_jwt_extended import create_access_token, get_jwt, get_jwt_identity, verify_jwt_in_request

from app.errors import Forbidden, error_response
from app.extensions import jwt
from app.leaderboard.names import display_name
from app.models import USER_ID_MAX_LENGTH

# Printable, no whitespace or control characters; ':' is fine (Redis members
# split on the first one only).
_USER_ID = re.compile(rf"^[\x21-\x7e\u00a0-\U0010ffff]{{1,{USER_ID_MAX_LENGTH}}}$")


def is_valid_user_id(value: object) -> bool:
    return isinstance(value, str) and _USER_ID.match(value) is not None


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
    """A signed access token for `user_id`, for scripts, demos and tests; with the admin role, a name."""
    if not is_valid_user_id(user_id):
        raise ValueError(f"user id must be 1 to {USER_ID_MAX_LENGTH} printable characters without spaces")
    settings = current_app.extensions["settings"]
    claims: dict[str, Any] = {}
    if admin:
        claims[settings.admin_claim] = settings.admin_role
    if name is not None:
        if display_name(name) is None:
            raise ValueError("a name must be 1 to 64 printable characters")
        claims[settings.jwt_name_claim] = display_name(name)
    return str(create_access_token(identity=user_id, expires_delta=expires_in, additional_claims=claims))


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
    return "exp" in payload and is_valid_user_id(payload.get("sub"))


@jwt.token_verification_failed_loader
def _token_not_acceptable(header: dict[str, Any], payload: dict[str, Any]) -> Response:
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
