"""The leaderboard domain: boards and their rules, submissions, ranks, rebuilds and moderation.

SQL is the source of truth; Redis holds a derived cache of each board's top
N, kept by one Lua script. Every function takes its clients (engine, cache,
registry) as arguments and nothing here imports Flask, so the views, the CLI,
the keeper and the tests share it. One module per concern:

- rules        how a submission changes a value, which value is better
- boards       Board, its Redis key names, and the BoardRegistry (SQL `boards`)
- standings    Standing and Submission, the values passed around
- records      the write path's SQL (upserts, ranks, Idempotency-Key records)
- cache        the Redis side: APPLY_SCRIPT and BoardCache
- writes       submit_score, submit_scores, group commit, publish
- rebuild      the SQL top N, rebuild_board, board_drift
- ranks        the SQL rank index: exact ranks, pages, around a user, friends
- changes      the change log (a Redis Stream per board): reading it, consumer groups
- names        display names from the token's `name` claim
- moderation   delete a board, remove an entry, erase a user
- errors       what the domain refuses
"""

from app.leaderboard.boards import Board, BoardDefaults, BoardKeys, BoardRegistry, channel_for
from app.leaderboard.cache import BoardCache
from app.leaderboard.errors import (
    BoardImmutable,
    BoardNotFound,
    BoardProtected,
    IdempotencyKeyReused,
    InvalidBoard,
    TotalLimitExceeded,
)
from app.leaderboard.records import Submitted
from app.leaderboard.standings import Standing, Submission

__all__ = [
    "Board",
    "BoardCache",
    "BoardDefaults",
    "BoardImmutable",
    "BoardKeys",
    "BoardNotFound",
    "BoardProtected",
    "BoardRegistry",
    "IdempotencyKeyReused",
    "InvalidBoard",
    "Standing",
    "Submission",
    "Submitted",
    "TotalLimitExceeded",
    "channel_for",
]
