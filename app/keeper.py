"""BoardKeeper: the background upkeep of every gevent worker, in either service.

- About every second, it makes Redis agree with SQL: a board missing from
  Redis (new, flushed, evicted, restarted empty) is rebuilt at once; an entry
  of SQL's top N that Redis still gets wrong one check later (a write whose
  Redis update was lost while Redis was unreachable) triggers a rebuild too.
  So the live board converges to SQL within a few seconds of Redis answering
  again, with no operator action and no write needed.
- About every ten seconds, it compacts the rank index when that is due.

Every worker runs one; they do not coordinate. Rebuilds are idempotent and
never move a total backwards, and compaction takes a lock, so overlapping
work is only wasted, never wrong. Never imports Flask.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import gevent
import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.leaderboard import BoardCache, board_drift, rebuild_board
from app.ranks import COMPACT_AT_AGE_SECONDS, COMPACT_AT_BACKLOG, Compaction, compact_rank_index, rank_backlog

log = logging.getLogger(__name__)

RECONCILE_EVERY_SECONDS = 1.0
COMPACTION_CHECK_EVERY = 10  # reconcile rounds


class BoardKeeper:
    """Reconciles Redis with SQL and compacts the rank index, in one greenlet."""

    def __init__(self, engine: Engine, cache: BoardCache) -> None:
        self.engine = engine
        self.cache = cache
        self.rebuilds = 0
        self._suspects: set[tuple[str, int, int | None]] = set()
        self._last_compaction = time.monotonic()
        self._greenlet: gevent.Greenlet[Any] | None = None
        self._failing_since: float | None = None

    def start(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        rounds = 0
        while True:
            # Jittered, so the workers of a fleet do not all check at once.
            gevent.sleep(RECONCILE_EVERY_SECONDS * random.uniform(0.8, 1.2))
            rounds += 1
            try:
                self.reconcile()
                if rounds % COMPACTION_CHECK_EVERY == 0:
                    self.compact_rank_index_if_due()
                self._failing_since = None
            except (redis.RedisError, SQLAlchemyError) as exc:
                # An outage: say so once, then keep trying quietly.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("board upkeep paused: %s; retrying every second", exc.__class__.__name__)
            except Exception:
                log.exception("board upkeep failed; retrying")

    def reconcile(self) -> str:
        """One check: "ok", "watching" (a difference seen once) or "rebuilt"."""
        with Session(self.engine) as session:
            drift = board_drift(session, self.cache)
            if drift is not None and not (drift & self._suspects):
                self._suspects = drift
                return "watching" if drift else "ok"
            reason = "missing from Redis" if drift is None else f"{len(drift)} entries wrong in Redis"
            rebuild_board(session, self.cache, reason="missing" if drift is None else "drift")
        self._suspects = set()
        self.rebuilds += 1
        log.warning("rebuilt board %s from SQL: %s", self.cache.board.name, reason)
        return "rebuilt"

    def compact_rank_index_if_due(self) -> Compaction | None:
        with self.engine.connect() as connection:
            backlog = rank_backlog(connection, self.cache.board.name)
        waited = time.monotonic() - self._last_compaction
        if not (backlog >= COMPACT_AT_BACKLOG or (backlog and waited >= COMPACT_AT_AGE_SECONDS)):
            return None
        started = time.monotonic()
        result = compact_rank_index(self.engine, self.cache.board.name)
        self._last_compaction = time.monotonic()
        if result is not None:
            log.info(
                "rank index of %s: folded %d changes into %d buckets%s in %.2fs",
                self.cache.board.name,
                result.folded,
                result.buckets,
                " (recut)" if result.recut else "",
                time.monotonic() - started,
            )
        return result
