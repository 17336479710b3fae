"""BoardKeeper: the background upkeep of every gevent worker, in either service.

- About every second, it makes Redis agree with SQL. Every board missing from
  Redis (new, flushed, evicted, restarted empty, or built from another
  database) is rebuilt within about three seconds (one round trip tells
  which), the default board within one. A board whose
  entries Redis still gets wrong one check later (a write whose Redis update
  was lost while Redis was unreachable) is rebuilt too. The entries are
  compared for the default board every round, for the boards whose update
  failed in this process, and for a few others in turn, so every board is
  looked at within minutes even if the process that lost its update died.
  So the live boards converge to SQL within a few seconds of Redis
  answering again, with no operator action and no write needed.
- When another Redis server answers than in the last round (a Sentinel or
  Cluster failover promoted a replica that may lack the last writes, or Redis
  restarted from an older save), every board is compared with SQL at once,
  and each that differs is rebuilt then, not a round later.
- At each period's end on a board with resets (it wakes for it), it switches
  the live board to the new period: Redis is rebuilt from SQL for that period
  (empty, or holding what was already submitted in it) and published, so
  every viewer gets it. Every worker of every instance tries; APPLY_SCRIPT's
  rebuild mode lets exactly one of them do it, and refuses to go back to an
  earlier period.
- About every two seconds, it compacts the rank index of the boards where
  that is due.
- Once a new `scores` table holds a few rows, it gives PostgreSQL statistics
  for it if autovacuum has not yet (app.leaderboard.records.give_scores_statistics).

Every worker runs one; they do not coordinate. Rebuilds are idempotent and
never move a value backwards, and compaction takes a lock, so overlapping
work is only wasted, never wrong. Never imports Flask.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import gevent
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.leaderboard.boards import Board, BoardRegistry
from app.leaderboard.cache import REDIS_ERRORS, BoardCache
from app.leaderboard.ranks import (
    COMPACT_AT_AGE_SECONDS,
    COMPACT_AT_BACKLOG,
    Compaction,
    backlogs,
    compact_rank_index,
)
from app.leaderboard.rebuild import Drift, board_drift, rebuild_board
from app.leaderboard.records import give_scores_statistics

log = logging.getLogger(__name__)

RECONCILE_EVERY_SECONDS = 1.0
# How long after a period's end the keeper wakes to switch: past the end by
# the database's clock even with a few milliseconds of error in the skew.
PERIOD_SWITCH_DELAY_SECONDS = 0.05
COMPACTION_CHECK_EVERY = 2  # reconcile rounds (the check is one statement, app.leaderboard.ranks.backlogs)
# Reconcile rounds between two reads of every board's settings: well within
# BoardRegistry.TTL, so a request never waits for SQL to look a board up.
REGISTRY_EVERY = 2
# Rounds between two checks that Redis holds every board (the default board,
# and boards this process failed to update, are checked every round).
ALL_BOARDS_EVERY = 3
# Boards besides the default and the stale ones whose entries one round compares with SQL.
SWEEP_PER_ROUND = 5

# A board without buckets (a few hundred users) never reads its changes: they
# are only cleared now and then, so a thousand small boards cost little. It is
# compacted sooner once it holds enough users to want buckets.
UNREAD_CHANGES_KEPT_SECONDS = 600.0


class BoardKeeper:
    """Reconciles Redis with SQL and compacts the rank index, in one greenlet."""

    def __init__(self, engine: Engine, cache: BoardCache, registry: BoardRegistry) -> None:
        self.engine = engine
        self.cache = cache
        self.registry = registry
        self.rebuilds = 0
        self._boards: list[Board] = []
        self._rounds = 0
        self._sweep_at = 0
        self._suspects: dict[str, Drift] = {}
        self._last_compaction: dict[tuple[str, str], float] = {}
        self._started = time.monotonic()
        self._greenlet: gevent.Greenlet[Any] | None = None
        self._failing_since: float | None = None
        self._server: str | None = None  # the run id of the Redis server that answered last
        self._scores_have_statistics = False

    def start(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            # Jittered, so the workers of a fleet do not all check at once;
            # but awake right after a period ends, to switch to the next one.
            gevent.sleep(min(RECONCILE_EVERY_SECONDS * random.uniform(0.8, 1.2), self._until_next_period()))
            try:
                self.reconcile()
                if self._rounds % COMPACTION_CHECK_EVERY == 0:
                    self.compact_rank_indexes_if_due()
                self.give_scores_statistics_if_new()
                self._failing_since = None
            except (*REDIS_ERRORS, SQLAlchemyError) as exc:
                # An outage: say so once, then keep trying quietly.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("board upkeep paused: %s; retrying every second", exc.__class__.__name__)
            except Exception:
                log.exception("board upkeep failed; retrying")

    def _until_next_period(self) -> float:
        """Seconds until the earliest end of a current period (a little after it), or a day."""
        ends = [board.period.end for board in self._boards if board.period is not None]
        if not ends:
            return 86_400.0
        return max(0.0, (min(ends) - self.registry.clock.now()).total_seconds()) + PERIOD_SWITCH_DELAY_SECONDS

    def reconcile(self) -> dict[str, str]:
        """One round: what was done per board looked at ("ok", "watching", "rebuilt", "switched" to a
        new period, or "ahead": Redis is at a later period than this process's clock says)."""
        if self._rounds % REGISTRY_EVERY == 0 or not self._boards:
            self._boards = self.registry.all()
        self._boards = [self.registry.current(board) for board in self._boards]
        self._rounds += 1
        by_id = {board.id: board for board in self._boards}
        outcome: dict[str, str] = self.switch_periods()
        server = self.cache.server_identity()
        if self._server is not None and server != self._server:
            log.warning("Redis is another server now (a failover or a restart): every board compared with SQL")
            outcome |= {board.id: self.check(board, at_once=True) for board in self._boards if board.id not in outcome}
        self._server = server  # after the comparison: one cut short by a failure is made again next round
        if self._rounds % ALL_BOARDS_EVERY == 1 or len(self._boards) == 1:
            built = self.cache.built(self._boards)
            for board in self._boards:
                if board.id in outcome:  # just switched to its new period (or found Redis past it)
                    continue
                if not built[board.id] and not self.cache.is_built(board):  # another worker may just have
                    outcome[board.id] = self._rebuild(board, "missing", "missing from Redis")
        compare = [self.registry.default_id, *sorted(self.cache.stale_boards), *self._sweep()]
        for board_id in dict.fromkeys(compare):
            compared = by_id.get(board_id)
            if compared is not None and board_id not in outcome:
                outcome[board_id] = self.check(compared)
        return outcome

    def switch_periods(self) -> dict[str, str]:
        """Every board with resets whose live board is not of its current period yet: switched to it."""
        with_resets = [board for board in self._boards if board.period is not None]
        if not with_resets:
            return {}
        built = self.cache.built(with_resets)
        switched = {}
        for board in with_resets:
            if not built[board.id]:
                with Session(self.engine) as session:
                    result = rebuild_board(session, self.cache, board, reason="period")
                if result.status == "ended":
                    # Redis is at a later period than this process thinks it is: its idea
                    # of the database's clock is behind; measure it again.
                    self.registry.clock.sync()
                    switched[board.id] = "ahead"
                else:
                    log.info("board %s: period %s", board.id, board.period_id)
                    switched[board.id] = "switched"
        return switched

    def _sweep(self) -> list[str]:
        """The next few boards in turn, so each is compared with SQL now and then."""
        if not self._boards:
            return []
        start = self._sweep_at % len(self._boards)
        taken = (self._boards[start:] + self._boards[:start])[:SWEEP_PER_ROUND]
        self._sweep_at = start + SWEEP_PER_ROUND
        return [board.id for board in taken]

    def check(self, board: Board, *, at_once: bool = False) -> str:
        """Compare one board with SQL: "ok", "watching" (a difference seen once) or "rebuilt".

        A difference is rebuilt when the next check sees it again (the first
        may be a write on its way), or `at_once` (Redis lost writes, surely).
        """
        with Session(self.engine) as session:
            drift = board_drift(session, self.cache, board)
        if drift is None:
            return self._rebuild(board, "missing", "missing from Redis")
        if drift and at_once:
            return self._rebuild(board, "failover", f"{len(drift)} entries wrong in Redis after it changed servers")
        suspects = self._suspects.get(board.id, set())
        if not (drift & suspects):
            if drift:
                self._suspects[board.id] = drift
                return "watching"
            self._suspects.pop(board.id, None)
            self.cache.stale_boards.discard(board.id)
            return "ok"
        return self._rebuild(board, "drift", f"{len(drift)} entries wrong in Redis")

    def _rebuild(self, board: Board, reason: str, why: str) -> str:
        with Session(self.engine) as session:
            rebuild_board(session, self.cache, board, reason=reason)
        self._suspects.pop(board.id, None)
        self.cache.stale_boards.discard(board.id)
        self.rebuilds += 1
        log.warning("rebuilt board %s from SQL: %s", board.id, why)
        return "rebuilt"

    def give_scores_statistics_if_new(self) -> None:
        """Until `scores` has statistics, see whether it is time to give it some (one statement)."""
        if not self._scores_have_statistics:
            self._scores_have_statistics = give_scores_statistics(self.engine)

    def compact_rank_indexes_if_due(self) -> dict[tuple[str, str], Compaction | None]:
        """Compact the rank index of every board's period with enough changes waiting, or with any
        for long enough; answers by (board, period)."""
        done: dict[tuple[str, str], Compaction | None] = {}
        for backlog in backlogs(self.engine):
            part = (backlog.board, backlog.period)
            waited = time.monotonic() - self._last_compaction.get(part, self._started)
            if backlog.bucketed:
                due = backlog.waiting >= COMPACT_AT_BACKLOG or waited >= COMPACT_AT_AGE_SECONDS
            else:
                due = backlog.outgrown or waited >= UNREAD_CHANGES_KEPT_SECONDS
            if due:
                done[part] = self.compact_rank_index(*part)
        return done

    def compact_rank_index(self, board: str, period: str = "") -> Compaction | None:
        started = time.monotonic()
        result = compact_rank_index(self.engine, board, period=period)
        self._last_compaction[board, period] = time.monotonic()
        if result is not None:
            log.info(
                "rank index of %s: folded %d changes into %d buckets%s in %.2fs",
                f"{board} ({period})" if period else board,
                result.folded,
                result.buckets,
                " (recut)" if result.recut else "",
                time.monotonic() - started,
            )
        return result
