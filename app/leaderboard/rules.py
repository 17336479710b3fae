"""A board's rules, in one place: how a submission changes a value, and which value is better.

Every layer derives its behaviour from here: the SQL upsert (`value_after`),
the rank key and the Redis sorted-set score (`ascending`, `redis_direction`),
the Lua script's admission (which compares row versions, so it needs no rule
of its own), and the bounds a submitted score must keep (`default_bounds`).

- `incr` adds the score to the value (the seed's rule); the value only grows.
- `best` keeps the better of the old value and the score, by the order.
- `set` replaces the value with the score, better or worse.

`desc` (higher is better) or `asc` (lower is better: lap times). The tie order
is the same for every board: the better value, then whoever reached it
first, then userId ascending by bytes.
"""

from __future__ import annotations

from typing import Final

OPERATORS: Final = ("incr", "best", "set")
ORDERS: Final = ("desc", "asc")

# The largest value that is exact as an IEEE double (Redis sorted-set scores,
# JavaScript): no value ever goes past it.
MAX_SAFE_TOTAL: Final = 2**53 - 1


def default_bounds(operator: str, max_increment: int) -> tuple[int, int]:
    """What one submitted score may be on a board with this operator, unless its settings say otherwise."""
    if operator == "incr":
        return 1, max_increment
    return 0, MAX_SAFE_TOTAL


def least_score(operator: str) -> int:
    """The smallest bound a board may set: an increment adds at least 1, a value is never negative."""
    return 1 if operator == "incr" else 0


def value_after(operator: str, ascending: bool) -> tuple[str, str]:
    """SQL for `ON CONFLICT DO UPDATE`: the row's new value, and when the row changes at all.

    `scores` is the stored row, `excluded` the submission. A submission that
    would not change the value (a worse `best`, the same `set`, an `incr`
    past MAX_SAFE_TOTAL) leaves the row, its time and its version alone.
    """
    if operator == "incr":
        return "scores.total + excluded.total", f"scores.total + excluded.total <= {MAX_SAFE_TOTAL}"
    if operator == "best":
        better = "<" if ascending else ">"
        return "excluded.total", f"excluded.total {better} scores.total"
    if operator == "set":
        return "excluded.total", "excluded.total <> scores.total"
    raise ValueError(f"unknown operator {operator!r}")


def would_change(operator: str, ascending: bool, current: int, submitted: int) -> bool:
    """Whether `submitted` changes a value of `current` (an increment always does, within MAX_SAFE_TOTAL)."""
    if operator == "incr":
        return current + submitted <= MAX_SAFE_TOTAL
    if operator == "best":
        return submitted < current if ascending else submitted > current
    return submitted != current


def redis_direction(ascending: bool) -> int:
    """Sorted-set score = direction x value, so Redis's ascending order puts the better value first."""
    return 1 if ascending else -1


def may_worsen(operator: str) -> bool:
    """Whether a user's newer value can be worse than an older one (then Redis must remember who left)."""
    return operator == "set"
