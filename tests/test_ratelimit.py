"""The per-user rate limit (app.ratelimit) against real Redis: the `limits` library's counting, batched."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from app.ratelimit import SCOPE, UserRateLimit
from tests.private_servers import PrivateRedis


@pytest.fixture
def prefix(redis_conn: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    tag = f"lb:{{rl{secrets.token_hex(4)}}}:ratelimit"
    yield tag
    for key in redis_conn.scan_iter(match=f"LIMITS:{{LIMITER/{tag}*"):
        redis_conn.delete(key)


def at_once(count: int, work: Callable[[int], Any]) -> list[Any]:
    """`work(i)` for i in range(count), each on its own thread, all released together."""
    start, results = threading.Barrier(count), [None] * count

    def run(i: int) -> None:
        start.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_concurrent_checks_count_exactly_and_share_redis_calls(redis_conn: redis.Redis, prefix: str) -> None:
    """120 checks at once, 4 for each of 30 users under 3/minute: exactly 3 pass per user,
    and the checks that arrive together go to Redis together (fewer script calls than checks)."""
    limit = UserRateLimit(redis_conn, "3/minute", prefix)
    before = evalsha_calls(redis_conn)
    results = at_once(120, lambda i: (f"user{i % 30}", limit.check(f"user{i % 30}")))
    calls = evalsha_calls(redis_conn) - before
    passed = Counter(user for user, full in results if full is None)
    assert passed == {f"user{i}": 3 for i in range(30)}
    refused = [full for _, full in results if full is not None]
    assert len(refused) == 30
    assert all(str(item) == "3 per 1 minute" and 1 <= wait <= 120 for item, wait in refused)
    assert calls < 120, "every check made its own Redis call"


def test_the_count_is_the_librarys_own(redis_conn: redis.Redis, prefix: str) -> None:
    """What a check spends, the `limits` library reads back from its own keys, by its own strategy."""
    limit = UserRateLimit(redis_conn, "5/minute", prefix)
    for _ in range(2):
        assert limit.check("alice") is None
    library = SlidingWindowCounterRateLimiter(RedisStorage("redis://", connection_pool=redis_conn.connection_pool))
    assert library.get_window_stats(parse("5/minute"), prefix, "alice", SCOPE).remaining == 3
    assert library.get_window_stats(parse("5/minute"), prefix, "bob", SCOPE).remaining == 5


def test_a_refused_request_spends_nothing_in_the_windows_after_the_full_one(
    redis_conn: redis.Redis, prefix: str
) -> None:
    limit = UserRateLimit(redis_conn, "1/second;5/minute", prefix)
    assert limit.check("alice") is None
    full = limit.check("alice")
    assert full is not None
    assert str(full[0]) == "1 per 1 second"
    library = SlidingWindowCounterRateLimiter(RedisStorage("redis://", connection_pool=redis_conn.connection_pool))
    assert library.get_window_stats(parse("5/minute"), prefix, "alice", SCOPE).remaining == 4


def test_with_redis_unreachable_it_counts_in_memory_and_goes_back_to_redis(
    tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis gone: the limit still holds, per process, with one warning; Redis answering again
    (after the retry delay), the count is in Redis again."""
    server = PrivateRedis(tmp_path).start()
    client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=1, socket_connect_timeout=1)
    limit = UserRateLimit(client, "3/minute", prefix)
    try:
        assert limit.check("alice") is None
        server.stop()
        with caplog.at_level(logging.WARNING, logger="app.ratelimit"):
            assert [limit.check("bob") is None for _ in range(4)] == [True, True, True, False]
        assert len([r for r in caplog.records if "counting in memory" in r.getMessage()]) == 1
        server.start()
        time.sleep(1.1)
        assert limit.check("carol") is None
        library = SlidingWindowCounterRateLimiter(RedisStorage("redis://", connection_pool=client.connection_pool))
        assert library.get_window_stats(parse("3/minute"), prefix, "carol", SCOPE).remaining == 2
    finally:
        client.close()
        server.stop()
