"""config.settings: defaults for `make run`, URL forms, and refusing bad values at startup."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from config.settings import (
    DEVELOPMENT_JWT_SECRET,
    PROJECT_ROOT,
    VARIABLES,
    ConfigError,
    Settings,
    normalize_database_url,
)

STRONG = "s" * 32


def test_defaults_work_without_any_environment() -> None:
    settings = Settings.from_env({})
    assert settings.env == "development"
    assert settings.database_url.startswith("sqlite:///")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.top_n == 10
    assert settings.score_max_increment == 1_000_000
    assert settings.redis_channel == "leaderboard:updated"
    assert settings.jwt_secret_key == DEVELOPMENT_JWT_SECRET


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgres://u:p@db.example.com:5432/lb", "postgresql+psycopg2://u:p@db.example.com:5432/lb"),
        ("postgresql://u@localhost/lb?sslmode=require", "postgresql+psycopg2://u@localhost/lb?sslmode=require"),
        ("postgresql+psycopg2://u@h/lb", "postgresql+psycopg2://u@h/lb"),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
    ],
)
def test_hosting_platform_database_urls_use_psycopg2(given: str, used: str) -> None:
    assert normalize_database_url(given) == used
    assert Settings.from_env({"DATABASE_URL": given}).database_url == used


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "APP_ENV": "production",
            "DATABASE_URL": "postgres://h/db",
            "REDIS_URL": "redis://r:6380/2",
            "LEADERBOARD_ID": "weekly",
            "REDIS_CHANNEL": "lb:chan",
            "TOP_N": "25",
            "SCORE_MAX_INCREMENT": "5_000",
            "MAX_CONTENT_LENGTH": "2048",
            "JWT_SECRET_KEY": STRONG,
            "JWT_ISSUER": "https://id.example.com",
            "JWT_AUDIENCE": "leaderboard",
            "DB_POOL_SIZE": "20",
            "DB_TIMEOUT_SECONDS": "2.5",
            "REDIS_TIMEOUT_SECONDS": "0.5",
            "LOG_LEVEL": "DEBUG",
        }
    )
    assert (settings.env, settings.leaderboard_id, settings.top_n, settings.score_max_increment) == (
        "production",
        "weekly",
        25,
        5000,
    )
    assert (settings.redis_url, settings.redis_channel, settings.max_content_length) == (
        "redis://r:6380/2",
        "lb:chan",
        2048,
    )
    assert (settings.jwt_issuer, settings.jwt_audience) == ("https://id.example.com", "leaderboard")
    assert (settings.db_pool_size, settings.db_timeout_seconds, settings.redis_timeout_seconds) == (20, 2.5, 0.5)
    config = settings.flask_config()
    assert config["JWT_DECODE_ALGORITHMS"] == ["HS256"]
    assert config["JWT_DECODE_ISSUER"] == "https://id.example.com"
    assert config["SQLALCHEMY_ENGINE_OPTIONS"]["pool_pre_ping"] is False  # app.sql.check_when_handed_out
    assert "statement_timeout=2500" in config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"]["options"]


@pytest.mark.parametrize(
    ("environ", "mentions"),
    [
        ({"TOP_N": "0"}, "TOP_N"),
        ({"TOP_N": "1001"}, "TOP_N"),
        ({"TOP_N": "ten"}, "TOP_N"),
        ({"SCORE_MAX_INCREMENT": "0"}, "SCORE_MAX_INCREMENT"),
        ({"SCORE_MAX_INCREMENT": str(2**53)}, "SCORE_MAX_INCREMENT"),
        ({"APP_ENV": "prod"}, "APP_ENV"),
        ({"LEADERBOARD_ID": "has space"}, "LEADERBOARD_ID"),
        ({"LEADERBOARD_ID": "a{b}"}, "LEADERBOARD_ID"),
        ({"JWT_ALGORITHM": "none"}, "JWT_ALGORITHM"),
        ({"JWT_ALGORITHM": "RS256"}, "JWT_PUBLIC_KEY"),
        ({"JWT_SECRET_KEY": "short"}, "JWT_SECRET_KEY"),
        ({"DB_TIMEOUT_SECONDS": "-1"}, "DB_TIMEOUT_SECONDS"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ],
)
def test_bad_values_stop_startup_with_the_variable_named(environ: dict[str, str], mentions: str) -> None:
    with pytest.raises(ConfigError, match=mentions):
        Settings.from_env(environ)


@pytest.mark.parametrize("secret", [None, "", "too-short", DEVELOPMENT_JWT_SECRET])
def test_production_refuses_a_missing_or_weak_secret(secret: str | None) -> None:
    environ = {"APP_ENV": "production"} | ({"JWT_SECRET_KEY": secret} if secret is not None else {})
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        Settings.from_env(environ)


def test_production_accepts_a_strong_secret() -> None:
    assert Settings.from_env({"APP_ENV": "production", "JWT_SECRET_KEY": STRONG}).env == "production"


def _variables_read_by_settings() -> set[str]:
    source = (PROJECT_ROOT / "config" / "settings.py").read_text()
    return set(re.findall(r'reader\.\w+\(\s*"([A-Z0-9_]+)"', source))


def test_variables_lists_exactly_what_settings_read() -> None:
    assert set(VARIABLES) == _variables_read_by_settings()


def test_readme_table_documents_every_variable() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert documented == set(VARIABLES)


def test_env_example_lists_every_variable() -> None:
    example = (PROJECT_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert listed == set(VARIABLES)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("'self'", "'self'"),
        ("self", "'self'"),
        ("self, https://dash.example.com", "'self' https://dash.example.com"),
        ("none", "'none'"),
        ("https://a.example https://b.example", "https://a.example https://b.example"),
    ],
)
def test_frame_ancestors_become_a_valid_csp_source_list(given: str, used: str) -> None:
    assert Settings.from_env({"BOARD_FRAME_ANCESTORS": given}).board_frame_ancestors == used


@pytest.mark.parametrize(
    ("given", "lifetime"),
    [
        (None, timedelta(days=7)),
        ("30s", timedelta(seconds=30)),
        ("90", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("30d", timedelta(days=30)),
        ("off", None),
        ("OFF", None),
    ],
)
def test_jwt_max_lifetime_takes_a_duration_or_off(given: str | None, lifetime: timedelta | None) -> None:
    environ = {} if given is None else {"JWT_MAX_LIFETIME": given}
    assert Settings.from_env(environ).jwt_max_lifetime == lifetime


@pytest.mark.parametrize("given", ["0", "0s", "-1h", "7 days", "1w", "1.5h", "forever"])
def test_a_bad_jwt_max_lifetime_stops_startup(given: str) -> None:
    with pytest.raises(ConfigError, match="JWT_MAX_LIFETIME"):
        Settings.from_env({"JWT_MAX_LIFETIME": given})
