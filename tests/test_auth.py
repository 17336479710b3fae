"""JWT hardening: issuer and audience, RS256 with a public key, usable user ids, and no secret in any log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from app.auth import mint_token
from tests.conftest import JWT_SECRET, make_token

ISSUER, AUDIENCE = "https://id.example.com", "leaderboard"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def rs256_token(key: rsa.RSAPrivateKey, sub: str = "alice", **claims: Any) -> str:
    now = datetime.now(UTC)
    return pyjwt.encode({"sub": sub, "iat": now, "exp": now + timedelta(hours=1), **claims}, key, algorithm="RS256")


def hs256_signed_with(secret: bytes, payload: dict[str, Any]) -> str:
    """An HS256 token made by hand: PyJWT itself refuses a public key as an HMAC secret."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def post(app: Flask, token: str, score: int = 5) -> Any:
    return app.test_client().post("/score", json={"score": score}, headers={"Authorization": f"Bearer {token}"})


def refused(response: Any) -> bool:
    return response.status_code == 401 and response.get_json()["error"]["code"] in ("invalid_token", "expired_token")


def test_issuer_and_audience_are_checked_when_configured(
    make_app: Callable[..., Flask], board_state: Callable[[], Any]
) -> None:
    app = make_app(JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE)
    assert post(app, make_token("alice", iss=ISSUER, aud=AUDIENCE)).status_code == 200
    before = board_state()
    for token in (
        make_token("alice"),  # neither
        make_token("alice", iss=ISSUER),  # no audience
        make_token("alice", aud=AUDIENCE),  # no issuer
        make_token("alice", iss="https://evil.example.com", aud=AUDIENCE),
        make_token("alice", iss=ISSUER, aud="another-service"),
        make_token("alice", iss=ISSUER, aud=[AUDIENCE + "x"]),
    ):
        assert refused(post(app, token))
    assert board_state() == before


def test_rs256_takes_the_issuers_tokens_and_nothing_else(
    make_app: Callable[..., Flask], board_state: Callable[[], Any]
) -> None:
    issuer_key, other_key = rsa_key(), rsa_key()
    pem = public_pem(issuer_key)
    app = make_app(JWT_ALGORITHM="RS256", JWT_PUBLIC_KEY=pem.replace("\n", "\\n"))  # as a .env file holds it
    assert post(app, rs256_token(issuer_key)).get_json()["userId"] == "alice"
    before = board_state()
    confused = hs256_signed_with(pem.encode(), {"sub": "alice", "exp": int(time.time()) + 3600})
    for token in (
        rs256_token(other_key),  # signed by someone else
        make_token("alice", secret=JWT_SECRET),  # HS256 where RS256 is pinned
        confused,  # the public key used as an HMAC secret
        rs256_token(issuer_key, exp=datetime.now(UTC) - timedelta(minutes=5)),
        rs256_token(issuer_key, sub=""),
    ):
        assert refused(post(app, token))
    assert board_state() == before


def test_the_token_command_refuses_rs256(make_app: Callable[..., Flask]) -> None:
    app = make_app(JWT_ALGORITHM="RS256", JWT_PUBLIC_KEY=public_pem(rsa_key()))
    result = app.test_cli_runner().invoke(args=["token", "alice"])
    assert result.exit_code != 0
    assert "identity provider" in result.output


def test_no_token_or_secret_is_ever_logged(make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(LOG_LEVEL="DEBUG")
    good, expired = make_token("alice"), make_token("alice", exp=datetime.now(UTC) - timedelta(minutes=1))
    forged = make_token("alice", secret="forged-" + "f" * 60)
    client = app.test_client()
    with caplog.at_level(logging.DEBUG):
        for token in (good, expired, forged, good + "x", "not.a.token"):
            client.post("/score", json={"score": 1}, headers={"Authorization": f"Bearer {token}"})
            client.post(
                "/score", data=b"{", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            )
        client.get("/readyz")
    text = caplog.text + "".join(str(record.args) for record in caplog.records)
    for secret in (JWT_SECRET, good, expired, forged, good.split(".")[2], forged.split(".")[2]):
        assert secret not in text


# A `sub` the README's "printable characters without spaces" rules out; each
# looks like (or hides inside) an ordinary id, or cannot be stored at all.
UNUSABLE_SUBS = {
    "lone surrogate U+D800": "al\ud800ice",
    "no-break space U+00A0": "al\u00a0ice",
    "em space U+2003": "al\u2003ice",
    "ideographic space U+3000": "al\u3000ice",
    "line separator U+2028": "al\u2028ice",
    "paragraph separator U+2029": "al\u2029ice",
    "zero width space U+200B": "al\u200bice",
    "right-to-left override U+202E": "\u202ealice",
    "byte order mark U+FEFF": "\ufeffalice",
    "soft hyphen U+00AD": "al\u00adice",
    "zero width joiner between ASCII letters": "al\u200dice",
    "trailing zero width joiner": "\u0639\u200d",
    "delete U+007F": "alice\x7f",
    "next line U+0085": "alice\x85",
    "private use U+E000": "alice\ue000",
    "noncharacter U+FFFF": "alice\uffff",
    "only a space": " ",
    "129 characters": "x" * 129,
}

# Ids that are and stay fine: ASCII, any script (with its combining marks and
# joiners), emoji sequences, ':'.
USABLE_SUBS = [
    "alice",
    "o'brien;id:42",
    "x" * 128,
    "Zoë",
    "игрок",
    "玩家一号",
    "プレイヤー",
    "لاعب",
    "खिलाड़ी",
    "می\u200cخواهم",  # Persian: a zero width non-joiner inside a word
    "\U0001f469\u200d\U0001f4bb",  # woman technologist: a zero width joiner sequence
    "\U0001f44d\U0001f3fd",  # thumbs up, medium skin tone
    "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # flag of Scotland (tags)
    "\U0001fae8",  # shaking face (Unicode 15, newer than some Pythons' character database)
]


@pytest.mark.parametrize("sub", UNUSABLE_SUBS.values(), ids=UNUSABLE_SUBS.keys())
def test_a_sub_that_is_not_a_printable_id_is_refused_at_the_door(
    sub: str, app: Flask, board_state: Callable[[], Any]
) -> None:
    before = board_state()
    response = post(app, make_token(sub))
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_token"
    assert board_state() == before
    with app.app_context(), pytest.raises(ValueError, match="printable characters"):
        mint_token(sub, timedelta(minutes=5))


def test_ids_of_any_script_and_emoji_stay_usable(app: Flask) -> None:
    for sub in USABLE_SUBS:
        response = post(app, make_token(sub))
        assert response.status_code == 200, (sub, response.get_json())
        assert response.get_json()["userId"] == sub
        with app.app_context():
            assert pyjwt.decode(mint_token(sub, timedelta(minutes=5)), JWT_SECRET, algorithms=["HS256"])["sub"] == sub


def test_a_token_that_lives_longer_than_jwt_max_lifetime_is_refused(
    make_app: Callable[..., Flask], board_state: Callable[[], Any]
) -> None:
    app = make_app(JWT_MAX_LIFETIME="1h")
    now = datetime.now(UTC)
    assert post(app, make_token("alice", exp=now + timedelta(minutes=59))).status_code == 200
    half_spent = make_token("alice", iat=now - timedelta(minutes=30), exp=now + timedelta(minutes=30))
    assert post(app, half_spent).status_code == 200
    before = board_state()
    for token in (
        make_token("alice", exp=2**70),  # as good as never expires
        make_token("alice", exp=now + timedelta(days=365)),
        make_token("alice", iat=None, exp=now + timedelta(hours=2)),  # no iat: measured from now
        make_token("alice", iat=now - timedelta(hours=2), exp=now + timedelta(minutes=5)),  # issued for 2 h 5 min
    ):
        response = post(app, token)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "invalid_token"
    assert board_state() == before


def test_the_default_max_lifetime_is_a_week_and_off_lifts_it(make_app: Callable[..., Flask]) -> None:
    now = datetime.now(UTC)
    assert post(make_app(), make_token("alice", exp=now + timedelta(days=6))).status_code == 200
    assert post(make_app(), make_token("alice", exp=now + timedelta(days=8))).status_code == 401
    assert post(make_app(JWT_MAX_LIFETIME="off"), make_token("alice", exp=2**70)).status_code == 200


def test_the_token_command_refuses_a_lifetime_over_the_max(make_app: Callable[..., Flask]) -> None:
    runner = make_app(JWT_MAX_LIFETIME="1d").test_cli_runner()
    assert runner.invoke(args=["token", "alice", "--expires", "1d"]).exit_code == 0
    result = runner.invoke(args=["token", "alice", "--expires", "25h"])
    assert result.exit_code != 0
    assert "longer than JWT_MAX_LIFETIME (1d)" in result.output
    unlimited = make_app(JWT_MAX_LIFETIME="off").test_cli_runner()
    assert unlimited.invoke(args=["token", "alice", "--expires", "365d"]).exit_code == 0


def test_a_verified_token_is_remembered_only_until_its_exp_and_only_by_its_app(
    make_app: Callable[..., Flask], board_state: Callable[[], Any]
) -> None:
    """Tokens a worker verified are taken again without a new signature check (the write path's
    CPU), but never past their `exp`, never with another signature, and never by an app with
    other keys."""
    app = make_app()
    short = make_token("alice", exp=datetime.now(UTC) + timedelta(seconds=2))
    assert post(app, short).status_code == 200
    assert post(app, short).status_code == 200
    assert short in app.extensions["verified_tokens"]
    header, payload, signature = short.split(".")
    assert refused(post(app, f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"))
    assert refused(post(make_app(JWT_SECRET_KEY="another-secret-of-32-bytes-or-more-0123456789"), short))
    time.sleep(2.1)
    before = board_state()
    expired = post(app, short)
    assert expired.status_code == 401
    assert expired.get_json()["error"]["code"] == "expired_token"
    assert short not in app.extensions["verified_tokens"]
    assert board_state() == before
