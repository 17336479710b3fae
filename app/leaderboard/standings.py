"""The values the domain passes around: a user's standing on a board, and a submission's answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1)

# Width of the zero-padded microsecond timestamp that starts a Redis member.
REACHED_WIDTH = 17


@dataclass(frozen=True)
class Standing:
    """A user's value on a board, when they reached it and the row's version, as SQL holds them."""

    user_id: str
    total: int
    reached_at: datetime
    version: int = 0
    name: str | None = None  # the display name, when known and to be shown
    rank_key: str | None = None  # set when read from SQL
    # Set for a submission's standing, for the change log: the value before it
    # (None: the user's first on the board), the rank SQL answered (None past
    # N) and the row version it replaced.
    previous: int | None = None
    rank: int | None = None
    previous_version: int | None = None

    @property
    def reached_us(self) -> int:
        return (self.reached_at - EPOCH) // timedelta(microseconds=1)

    @property
    def member(self) -> str:
        """The sorted-set member: byte order of members is the tie order."""
        return f"{self.reached_us:0{REACHED_WIDTH}d}:{self.user_id}"


@dataclass(frozen=True)
class Submission:
    """What a submission answers: the user's value on the board after it, and their rank."""

    user_id: str
    total: int
    rank: int | None
    improved: bool = True  # whether the submission changed the user's value
    replayed: bool = False
    period: str | None = None  # on a board with resets: the period it counted in

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "status": "ok",
            "userId": self.user_id,
            "score": self.total,
            "rank": self.rank,
            "improved": self.improved,
        }
        if self.period is not None:
            answer["period"] = self.period
        return answer

    @classmethod
    def from_json(cls, answer: dict[str, Any], *, replayed: bool = False) -> Submission:
        """An answer stored with an Idempotency-Key (before boards, without `improved`)."""
        return cls(
            user_id=answer["userId"],
            total=answer["score"],
            rank=answer["rank"],
            improved=answer.get("improved", True),
            replayed=replayed,
            period=answer.get("period"),
        )
