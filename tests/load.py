"""Writers for the fault tests: submissions retried with their Idempotency-Key until acknowledged."""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import requests


class Poster(Protocol):
    def post(
        self, user: str, score: int, key: str | None = None, timeout: float = 10, board: str | None = None
    ) -> requests.Response: ...


@dataclass
class Submission:
    user: str
    score: int
    key: str | None
    board: str | None = None  # None: the default board (POST /score)
    acked: bool = False
    attempts: int = 0
    total: int | None = None  # the answer's new total


@dataclass
class Load:
    """Writers that retry every submission with its Idempotency-Key until it gets a 200,
    or, `keyed=False`, send each once without a key (group commit's path)."""

    stack: Poster
    users: list[str]
    keyed: bool = True
    boards: list[str | None] = field(default_factory=lambda: [None])
    submissions: list[Submission] = field(default_factory=list)
    statuses: dict[int | str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit_until_acked(self, submission: Submission, deadline: float) -> None:
        while not submission.acked and time.monotonic() < deadline:
            submission.attempts += 1
            try:
                answer = self.stack.post(
                    submission.user, submission.score, submission.key, timeout=10, board=submission.board
                )
                status: int | str = answer.status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                submission.acked = True
                submission.total = answer.json()["score"]
            else:
                assert status in (503, "ConnectionError", "ReadTimeout"), f"unexpected answer {status}"
                time.sleep(random.uniform(0.05, 0.3))
                if submission.key is None:
                    return  # without a key a retry could count twice: the client gives up

    def writer(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            key = uuid.uuid4().hex if self.keyed else None
            submission = Submission(rng.choice(self.users), rng.randint(1, 500), key, rng.choice(self.boards))
            with self.lock:
                self.submissions.append(submission)
            self.submit_until_acked(submission, deadline=time.monotonic() + 30)

    def expected_totals(self) -> dict[tuple[str | None, str], int]:
        """(board, user) -> the sum of what was submitted: what SQL must hold."""
        expected: dict[tuple[str | None, str], int] = {}
        for submission in self.submissions:
            where = (submission.board, submission.user)
            expected[where] = expected.get(where, 0) + submission.score
        return expected
