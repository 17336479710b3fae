"""REDIS_URL's three forms: what each one names, and what startup refuses."""

from __future__ import annotations

import pytest

from config.redis_url import CLUSTER, SENTINEL, SINGLE, parse_redis_url
from config.settings import ConfigError, Settings


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@cache.example.com:6380/2", "unix:///run/redis.sock"]
)
def test_one_server_urls_are_left_to_redis_py(url: str) -> None:
    target = parse_redis_url(url)
    assert (target.mode, target.url) == (SINGLE, url)


def test_a_sentinel_url_names_the_sentinels_the_primary_and_the_database() -> None:
    target = parse_redis_url("redis+sentinel://:s%40cret@10.0.0.1,10.0.0.2:26380,[::1]:26381/leaderboard/3")
    assert target.mode == SENTINEL
    assert target.nodes == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert (target.service, target.db, target.username, target.password) == ("leaderboard", 3, None, "s@cret")
    assert target.describe() == "sentinel leaderboard via 10.0.0.1:26379,10.0.0.2:26380,::1:26381"


def test_a_cluster_url_names_its_seed_nodes() -> None:
    target = parse_redis_url("redis+cluster://app:pw@10.0.0.1:7000,10.0.0.2")
    assert target.mode == CLUSTER
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379))
    assert (target.username, target.password, target.db) == ("app", "pw", 0)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:6379", "must start with"),
        ("memcached://127.0.0.1", "unknown scheme"),
        ("redis+sentinel://127.0.0.1:26379", "names the primary"),
        ("redis+sentinel://127.0.0.1:26379/", "names the primary"),
        ("redis+sentinel://127.0.0.1:26379/main/x", "not a database number"),
        ("redis+sentinel://127.0.0.1:26379/main/1/2", "not a database number"),
        ("redis+sentinel://127.0.0.1:99999/main", "port out of range"),
        ("redis+sentinel://127.0.0.1:26379,,h/main", "is not host or host:port"),
        ("redis+cluster://127.0.0.1:7000/1", "database 0 only"),
        ("redis+cluster://a b:7000", "is not host or host:port"),
    ],
)
def test_a_bad_redis_url_stops_startup_saying_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=f"REDIS_URL: .*{says}"):
        Settings.from_env({"REDIS_URL": url})


def test_a_cluster_refuses_the_streams_transport() -> None:
    with pytest.raises(ConfigError, match=r"BOARD_TRANSPORT=streams .* use BOARD_TRANSPORT=pubsub"):
        Settings.from_env({"REDIS_URL": "redis+cluster://127.0.0.1:7000", "BOARD_TRANSPORT": "streams"})
    assert Settings.from_env({"REDIS_URL": "redis+cluster://127.0.0.1:7000"}).redis.mode == "cluster"
