"""Settings: the only module that reads the environment.

`Settings.from_env()` reads and checks every variable at once, so a bad value
stops the process at startup with a message that names the variable, instead
of surfacing as a strange failure on the first request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from limits import parse_many

from config.redis_url import CLUSTER, BadRedisUrl, RedisTarget, parse_redis_url

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Flask-SQLAlchemy puts relative SQLite paths under the app's instance folder.
INSTANCE_DIR = PROJECT_ROOT / "instance"

# Used when JWT_SECRET_KEY is unset outside production, so `make run` works
# with no configuration. Production refuses it (see `_check_production`).
DEVELOPMENT_JWT_SECRET = "dev-only-secret-change-me-0123456789abcdef"  # noqa: S105
MIN_SECRET_BYTES = 32

# Totals stay exact as IEEE doubles (Redis sorted-set scores, JavaScript).
MAX_SAFE_TOTAL = 2**53 - 1

ENVIRONMENTS = ("development", "testing", "production")
_BOARD_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CLAIM = re.compile(r"^[A-Za-z0-9_:/.-]{1,100}$")
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_DURATION_UNITS = {"": "seconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


# Every variable `Settings.from_env` reads; the README's table and
# .env.example list exactly these (tests/config/test_settings.py checks).
VARIABLES = (
    "APP_ENV",
    "DATABASE_URL",
    "REDIS_URL",
    "LEADERBOARD_ID",
    "REDIS_CHANNEL",
    "CHANGES_RETAIN",
    "BOARD_TRANSPORT",
    "TOP_N",
    "SCORE_MAX_INCREMENT",
    "MAX_CONTENT_LENGTH",
    "JWT_SECRET_KEY",
    "JWT_ALGORITHM",
    "JWT_PUBLIC_KEY",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_NAME_CLAIM",
    "ADMIN_CLAIM",
    "ADMIN_ROLE",
    "JWT_MAX_LIFETIME",
    "DB_POOL_SIZE",
    "DB_TIMEOUT_SECONDS",
    "REDIS_TIMEOUT_SECONDS",
    "LOG_LEVEL",
    "SSE_RETRY_MS",
    "SSE_HEARTBEAT_SECONDS",
    "SSE_COALESCE_MS",
    "SSE_WRITE_TIMEOUT_SECONDS",
    "SSE_MAX_VIEWERS",
    "BOARD_REQUIRE_AUTH",
    "BOARD_CORS_ORIGINS",
    "BOARD_FRAME_ANCESTORS",
    "RATE_LIMIT_PER_USER",
    "SSE_MAX_VIEWERS_PER_IP",
    "TRUSTED_PROXIES",
    "PROMETHEUS_MULTIPROC_DIR",
    "PGOPTIONS",
)


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Every setting of both services, with the defaults `make run` needs."""

    env: str = "development"
    database_url: str = "sqlite:///leaderboard.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    leaderboard_id: str = "default"
    redis_channel: str = "leaderboard:updated"
    top_n: int = 10
    score_max_increment: int = 1_000_000
    # Entries each board's change log (a Redis Stream) keeps; 0 turns the log off.
    changes_retain: int = 10_000
    # How board workers hear of updates: "pubsub" (the seed's) or "streams" (resumable).
    board_transport: str = "pubsub"
    max_content_length: int = 4096
    jwt_secret_key: str = DEVELOPMENT_JWT_SECRET
    jwt_algorithm: str = "HS256"
    jwt_public_key: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_name_claim: str = "name"
    admin_claim: str = "role"
    admin_role: str = "admin"
    # Longest a token may live (from its iat, and from now); None: no limit.
    jwt_max_lifetime: timedelta | None = timedelta(days=7)
    db_pool_size: int = 10
    db_timeout_seconds: float = 5.0
    redis_timeout_seconds: float = 2.0
    log_level: str = "INFO"
    sse_retry_ms: int = 2000
    sse_heartbeat_seconds: float = 15.0
    sse_coalesce_ms: int = 100
    sse_write_timeout_seconds: float = 10.0
    sse_max_viewers: int = 10_000
    board_require_auth: bool = False
    board_cors_origins: tuple[str, ...] = ()
    board_frame_ancestors: str = "'self'"
    # One window: each window is a Redis round trip on every score (BENCHMARKS.md).
    rate_limit_per_user: str = "10/second"
    sse_max_viewers_per_ip: int = 50
    trusted_proxies: int = 0
    prometheus_multiproc_dir: str | None = None
    # libpq's own variable, which the services' connection options would
    # otherwise shadow: added to them (e.g. "-c leaderboard.clock_offset=3600"
    # moves the database clock the services see, app.sql).
    pg_options: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def redis(self) -> RedisTarget:
        """Where REDIS_URL points: one server, Sentinel or Cluster."""
        return parse_redis_url(self.redis_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        app_env = reader.choice("APP_ENV", cls.env, ENVIRONMENTS)
        settings = cls(
            env=app_env,
            database_url=normalize_database_url(reader.text("DATABASE_URL", cls.database_url)),
            redis_url=reader.redis_url("REDIS_URL", cls.redis_url),
            leaderboard_id=reader.matching("LEADERBOARD_ID", cls.leaderboard_id, _BOARD_ID),
            redis_channel=reader.text("REDIS_CHANNEL", cls.redis_channel),
            top_n=reader.integer("TOP_N", cls.top_n, low=1, high=1000),
            changes_retain=reader.integer("CHANGES_RETAIN", cls.changes_retain, low=0, high=10_000_000),
            board_transport=reader.choice("BOARD_TRANSPORT", cls.board_transport, ("pubsub", "streams")),
            score_max_increment=reader.integer(
                "SCORE_MAX_INCREMENT", cls.score_max_increment, low=1, high=MAX_SAFE_TOTAL
            ),
            max_content_length=reader.integer("MAX_CONTENT_LENGTH", cls.max_content_length, low=64, high=1_048_576),
            jwt_secret_key=reader.text("JWT_SECRET_KEY", "" if app_env == "production" else cls.jwt_secret_key),
            jwt_algorithm=reader.choice("JWT_ALGORITHM", cls.jwt_algorithm, ("HS256", "RS256")),
            jwt_public_key=reader.pem("JWT_PUBLIC_KEY"),
            jwt_issuer=reader.optional("JWT_ISSUER"),
            jwt_audience=reader.optional("JWT_AUDIENCE"),
            jwt_name_claim=reader.matching("JWT_NAME_CLAIM", cls.jwt_name_claim, _CLAIM),
            admin_claim=reader.matching("ADMIN_CLAIM", cls.admin_claim, _CLAIM),
            admin_role=reader.text("ADMIN_ROLE", cls.admin_role),
            jwt_max_lifetime=reader.duration("JWT_MAX_LIFETIME", cls.jwt_max_lifetime),
            db_pool_size=reader.integer("DB_POOL_SIZE", cls.db_pool_size, low=1, high=500),
            db_timeout_seconds=reader.number("DB_TIMEOUT_SECONDS", cls.db_timeout_seconds, low=0.1, high=300),
            redis_timeout_seconds=reader.number("REDIS_TIMEOUT_SECONDS", cls.redis_timeout_seconds, low=0.1, high=300),
            log_level=reader.choice("LOG_LEVEL", cls.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")),
            sse_retry_ms=reader.integer("SSE_RETRY_MS", cls.sse_retry_ms, low=100, high=600_000),
            sse_heartbeat_seconds=reader.number("SSE_HEARTBEAT_SECONDS", cls.sse_heartbeat_seconds, low=0.05, high=15),
            sse_coalesce_ms=reader.integer("SSE_COALESCE_MS", cls.sse_coalesce_ms, low=0, high=10_000),
            sse_write_timeout_seconds=reader.number(
                "SSE_WRITE_TIMEOUT_SECONDS", cls.sse_write_timeout_seconds, low=0.1, high=300
            ),
            sse_max_viewers=reader.integer("SSE_MAX_VIEWERS", cls.sse_max_viewers, low=0, high=100_000),
            board_require_auth=reader.boolean("BOARD_REQUIRE_AUTH", cls.board_require_auth),
            board_cors_origins=reader.words("BOARD_CORS_ORIGINS"),
            board_frame_ancestors=_csp_sources(reader.text("BOARD_FRAME_ANCESTORS", cls.board_frame_ancestors)),
            rate_limit_per_user=reader.rate_limits("RATE_LIMIT_PER_USER", cls.rate_limit_per_user),
            sse_max_viewers_per_ip=reader.integer(
                "SSE_MAX_VIEWERS_PER_IP", cls.sse_max_viewers_per_ip, low=1, high=100_000
            ),
            trusted_proxies=reader.integer("TRUSTED_PROXIES", cls.trusted_proxies, low=0, high=5),
            pg_options=reader.text("PGOPTIONS", cls.pg_options),
            prometheus_multiproc_dir=reader.optional("PROMETHEUS_MULTIPROC_DIR"),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse combinations that would only fail later, at request time."""
        if self.redis.mode == CLUSTER and self.board_transport == "streams":
            raise ConfigError(
                "BOARD_TRANSPORT=streams follows every board on one connection, which a cluster's "
                "boards on several shards do not allow: use BOARD_TRANSPORT=pubsub (sharded Pub/Sub) on a cluster"
            )
        if self.jwt_algorithm == "RS256" and not self.jwt_public_key:
            raise ConfigError("JWT_ALGORITHM=RS256 needs JWT_PUBLIC_KEY (a PEM public key)")
        if self.jwt_algorithm == "HS256":
            if self.env == "production" and (
                len(self.jwt_secret_key.encode()) < MIN_SECRET_BYTES or self.jwt_secret_key == DEVELOPMENT_JWT_SECRET
            ):
                raise ConfigError(
                    f"JWT_SECRET_KEY must be set to a random secret of at least {MIN_SECRET_BYTES} bytes "
                    "in production (for example: python -c 'import secrets; print(secrets.token_hex(32))')"
                )
            if len(self.jwt_secret_key.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(f"JWT_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes long")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def flask_config(self) -> dict[str, Any]:
        """The Flask and extension configuration these settings imply."""
        # No ping before each use on PostgreSQL: app.sql.check_when_handed_out
        # looks at a pooled connection's socket instead, and pings only one the
        # server has said something on (closing it, after a restart), so no
        # request meets a dead connection and a live one costs no round trip.
        engine_options: dict[str, Any] = {"pool_pre_ping": self.is_sqlite}
        if self.is_sqlite:
            # SQLite serialises writers; wait for the lock instead of failing at once.
            engine_options["connect_args"] = {"timeout": self.db_timeout_seconds}
        else:
            timeout_ms = int(self.db_timeout_seconds * 1000)
            engine_options.update(
                # A fixed set, no overflow: overflow connections are closed when
                # returned to a full pool, so a busy worker would open (fork a
                # PostgreSQL backend for) a connection per request. Requests
                # beyond the pool wait for a connection, up to the timeout.
                pool_size=self.db_pool_size,
                max_overflow=0,
                pool_timeout=self.db_timeout_seconds,
                pool_recycle=1800,
                connect_args={
                    "connect_timeout": max(1, round(self.db_timeout_seconds)),
                    # Every query here is a short walk of an index. With stale
                    # statistics PostgreSQL may plan a bitmap scan that reads a
                    # whole index range before a LIMIT (app.leaderboard.records),
                    # or start parallel workers for a count it overestimates:
                    # their start costs more than the walk (app.leaderboard.ranks).
                    # The ranking queries are prepared once per connection and
                    # planned for any parameters (their plans are written to be
                    # good for all): planning them per call took two thirds of
                    # a page's SQL time on a million users (0.9 against 0.3 ms,
                    # measured: prepared calls from Python).
                    "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
                    " -c enable_bitmapscan=off -c max_parallel_workers_per_gather=0"
                    " -c plan_cache_mode=force_generic_plan" + (f" {self.pg_options}" if self.pg_options else ""),
                    "application_name": "leaderboard",
                    # A server that vanished without closing the connection (a
                    # partition, a dead host) is given up on too, not waited for.
                    "keepalives": 1,
                    "keepalives_idle": 10,
                    "keepalives_interval": 5,
                    "keepalives_count": 3,
                    "tcp_user_timeout": timeout_ms,
                },
            )
        config: dict[str, Any] = {
            "TESTING": self.env == "testing",
            "SQLALCHEMY_DATABASE_URI": self.database_url,
            "SQLALCHEMY_ENGINE_OPTIONS": engine_options,
            "SQLALCHEMY_TRACK_MODIFICATIONS": False,
            # One byte over the limit: werkzeug cuts a chunked body off at this
            # length without an error, so reading one byte past our limit is
            # how a body that fits is told from one that does not
            # (app.scoring.schemas.read_body).
            "MAX_CONTENT_LENGTH": self.max_content_length + 1,
            "JWT_SECRET_KEY": self.jwt_secret_key,
            "JWT_ALGORITHM": self.jwt_algorithm,
            "JWT_DECODE_ALGORITHMS": [self.jwt_algorithm],
            "JWT_PUBLIC_KEY": self.jwt_public_key,
            "JWT_TOKEN_LOCATION": ["headers"],
            "JWT_ENCODE_ISSUER": self.jwt_issuer,
            "JWT_DECODE_ISSUER": self.jwt_issuer,
            "JWT_ENCODE_AUDIENCE": self.jwt_audience,
            "JWT_DECODE_AUDIENCE": self.jwt_audience,
            "JWT_ACCESS_TOKEN_EXPIRES": timedelta(hours=1),
            "JWT_ERROR_MESSAGE_KEY": "message",
        }
        config.update(self.extra)
        return config


def normalize_database_url(url: str) -> str:
    """Map the URL forms hosting platforms hand out onto psycopg2.

    SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3, and no longer
    accepts `postgres://` at all; both mean psycopg2 here.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def parse_duration(text: str) -> timedelta:
    """'90', '90s', '15m', '1h' or '7d' as a timedelta; ValueError for anything else (or zero)."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 1h or 7d")
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


def format_duration(duration: timedelta) -> str:
    """The shortest form `parse_duration` reads back: 7d, 36h, 90m, 45s."""
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _csp_sources(value: str) -> str:
    """CSP source list: `self` and `none` get the quotes CSP needs (shells and .env files eat them)."""
    sources = [word for word in re.split(r"[,\s]+", value) if word]
    return " ".join(f"'{word}'" if word in ("self", "none") else word for word in sources)


class _Reader:
    """Typed access to an environment mapping; errors name the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        return value

    def matching(self, name: str, default: str, pattern: re.Pattern[str]) -> str:
        value = self.text(name, default)
        if not pattern.match(value):
            raise ConfigError(f"{name}={value!r} must match {pattern.pattern}")
        return value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} must be between {low} and {high}")
        return value

    def pem(self, name: str) -> str | None:
        """A PEM block; `\\n` escapes (as .env files and dashboards hold it) become newlines."""
        value = self.optional(name)
        if value is None:
            return None
        value = value.replace("\\n", "\n")
        if not value.startswith("-----BEGIN ") or "-----END " not in value:
            raise ConfigError(f"{name} must be a PEM block (-----BEGIN PUBLIC KEY----- ...)")
        return value + "\n" if not value.endswith("\n") else value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        value = raw.lower()
        if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"{name}={raw!r} is not true or false")
        return value in ("1", "true", "yes", "on")

    def redis_url(self, name: str, default: str) -> str:
        """One server's URL, or a Sentinel or Cluster URL (config.redis_url)."""
        value = self.text(name, default)
        try:
            parse_redis_url(value)
        except BadRedisUrl as error:
            raise ConfigError(f"{name}: {error}") from None
        return value

    def rate_limits(self, name: str, default: str) -> str:
        """Limits like "10/second;300/minute" (checked by the `limits` library); "off" disables."""
        value = self.text(name, default)
        if value.lower() == "off":
            return ""
        try:
            parse_many(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a rate limit like 10/second;300/minute (or off)") from None
        return value

    def duration(self, name: str, default: timedelta | None) -> timedelta | None:
        """A duration like 30s, 15m, 1h or 7d; "off" for none."""
        raw = self.optional(name)
        if raw is None:
            return default
        if raw.lower() == "off":
            return None
        try:
            return parse_duration(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a duration like 30s, 15m, 1h or 7d (or off)") from None

    def words(self, name: str) -> tuple[str, ...]:
        """A comma- or space-separated list."""
        return tuple(word for word in re.split(r"[,\s]+", self.optional(name) or "") if word)

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} must be between {low} and {high}")
        return value
