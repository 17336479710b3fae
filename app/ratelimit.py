"""RATE_LIMIT_PER_USER: the `limits` library's sliding-window counter, for many requests in one Redis call.

Each user has one budget for every route that submits. The counting is the
library's: its keys (`RateLimitItem.key_for`, wrapped as its RedisStorage
wraps them) and its own Lua script (`acquire_sliding_window.lua`, run
verbatim for each key). What is ours is only the batching. The checks that
a worker's requests make at the same moment go to Redis together
(app.batching.GroupCommit), in one script call. Checked one request at a
time through Flask-Limiter, the check was a quarter of a write's CPU, half
of it the Redis round trip and half the resolving of the route's limits
(docs/write-path-profile.md).

With several windows (`10/second;300/minute`), a user's windows are tried
in that order, and the first one that is full stops the rest: as
Flask-Limiter did, a refused request spends nothing in the windows after it.

Redis unreachable: the check counts in this process's memory meanwhile
(the library's MemoryStorage, same strategy), rather than refuse every
score. Redis is tried again after REDIS_RETRY_SECONDS, doubling while it
stays down, up to REDIS_RETRY_MOST.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence

import redis
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, RedisClusterStorage, RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from app.batching import GroupCommit
from app.leaderboard.cache import REDIS_ERRORS

log = logging.getLogger(__name__)

SCOPE = "scores"
REDIS_RETRY_SECONDS = 1.0
REDIS_RETRY_MOST = 30.0
MAX_BATCH = 256

# KEYS: each check's two window keys (previous, current), one limit after
# another for one user, then the next user's. ARGV[1]: the number of limits
# per user, then for each limit its amount and expiry (s). Returns one entry
# per user: 0 when every window took the request, else the (1-based) limit
# that was full. The library's script is the body of `acquire`, unchanged.
_ACQUIRE_MANY = (
    "local function acquire(KEYS, ARGV)\n"
    + RedisStorage.SCRIPT_ACQUIRE_SLIDING_WINDOW.decode()
    + """
end
local per_user = tonumber(ARGV[1])
local refused = {}
for user = 0, #KEYS / (2 * per_user) - 1 do
    refused[user + 1] = 0
    for limit = 1, per_user do
        local first = 2 * (user * per_user + limit) - 1
        local args = {ARGV[2 * limit], ARGV[2 * limit + 1], 1}
        if not acquire({KEYS[first], KEYS[first + 1]}, args) then
            refused[user + 1] = limit
            break
        end
    end
end
return refused
"""
)


def key_prefix(leaderboard_id: str) -> str:
    """The first identifier of a deployment's rate-limit keys (as Flask-Limiter's RATELIMIT_KEY_PREFIX was)."""
    return f"lb:{{{leaderboard_id}}}:ratelimit"


class UserRateLimit:
    """`check(user_id)`: None when the user may go on, else the limit they are over and seconds to wait."""

    def __init__(self, client: redis.Redis, limits: str, prefix: str, *, cluster_url: str = "") -> None:
        """`client` is the app's; `cluster_url` is REDIS_URL when it names a cluster (the library's
        cluster storage is built from it: a `redis+cluster://` URL is the library's form too).

        A user's keys all share the prefix's hash tag, so on a cluster every
        window of a batch lives on one shard and the batch is one call there.
        """
        self.items: list[RateLimitItem] = sorted(parse_many(limits))
        self._args: list[int] = [len(self.items)]  # ARGV of _ACQUIRE_MANY: the same for every batch
        for item in self.items:
            self._args += [item.amount, item.get_expiry()]
        self.prefix = prefix
        self._script = client.register_script(_ACQUIRE_MANY)
        # The library's storage on the same Redis, for the windows' state of a refused request.
        self._storage: RedisStorage = (
            RedisClusterStorage(cluster_url)
            if cluster_url
            else RedisStorage("redis://", connection_pool=client.connection_pool)
        )
        self._in_redis = SlidingWindowCounterRateLimiter(self._storage)
        self._in_memory = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._retry_redis_at = 0.0
        self._retry_after = REDIS_RETRY_SECONDS
        self._lock = threading.Lock()
        self._batches: GroupCommit[str, RateLimitItem | None] = GroupCommit(
            self._acquire, key=lambda user_id: user_id, max_size=MAX_BATCH, concurrency=2
        )

    def check(self, user_id: str) -> tuple[RateLimitItem, int] | None:
        """Spend one request of `user_id`'s budget: None if it had one, else (the full limit, seconds to wait)."""
        full = self._batches.submit(user_id)
        if full is None:
            return None
        return full, self._seconds_to_wait(full, user_id)

    def _identifiers(self, user_id: str) -> tuple[str, str, str]:
        return (self.prefix, user_id, SCOPE)

    def _window_keys(self, item: RateLimitItem, user_id: str) -> list[str]:
        """The previous and the current window's keys, as limits' RedisStorage names them."""
        key = item.key_for(*self._identifiers(user_id))
        storage = self._storage
        return [
            storage.prefixed_key(storage._previous_window_key(key)),
            storage.prefixed_key(storage._current_window_key(key)),
        ]

    def _acquire(self, user_ids: Sequence[str]) -> list[RateLimitItem | None]:
        if time.monotonic() >= self._retry_redis_at:
            try:
                refused = self._acquire_in_redis(user_ids)
            except REDIS_ERRORS as error:
                self._redis_failed(error)
            else:
                self._retry_after = REDIS_RETRY_SECONDS
                return refused
        return [self._acquire_in_memory(user_id) for user_id in user_ids]

    def _acquire_in_redis(self, user_ids: Sequence[str]) -> list[RateLimitItem | None]:
        keys = [key for user_id in user_ids for item in self.items for key in self._window_keys(item, user_id)]
        refused = self._script(keys=keys, args=self._args)
        return [self.items[int(limit) - 1] if int(limit) else None for limit in refused]

    def _acquire_in_memory(self, user_id: str) -> RateLimitItem | None:
        for item in self.items:
            if not self._in_memory.hit(item, *self._identifiers(user_id)):
                return item
        return None

    def _redis_failed(self, error: Exception) -> None:
        with self._lock:
            if time.monotonic() < self._retry_redis_at:
                return
            log.warning(
                "rate limit counting in memory: Redis unreachable (%s); trying it again in %.0f s",
                type(error).__name__,
                self._retry_after,
            )
            self._retry_redis_at = time.monotonic() + self._retry_after
            self._retry_after = min(2 * self._retry_after, REDIS_RETRY_MOST)

    def _seconds_to_wait(self, item: RateLimitItem, user_id: str) -> int:
        """Until the full window frees a slot, by the library's own reading of it (at least 1 s)."""
        limiter = self._in_memory if time.monotonic() < self._retry_redis_at else self._in_redis
        try:
            reset = limiter.get_window_stats(item, *self._identifiers(user_id)).reset_time
        except REDIS_ERRORS:
            return 1
        return max(1, math.ceil(int(reset + 1) - time.time()))
