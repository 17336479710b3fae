"""REDIS_URL's three forms, parsed (not connected): one server, Sentinel, or Cluster.

- `redis://`, `rediss://`, `unix://`: one server, as redis-py reads it.
- `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<primary name>[/db]`:
  the sentinels (port 26379 unless given) that name the primary; the password
  is the primary's.
- `redis+cluster://[[user]:password@]host[:port][,host[:port]...]`: any nodes of
  the cluster (port 6379 unless given), from which the rest is discovered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

SINGLE = "single"
SENTINEL = "sentinel"
CLUSTER = "cluster"

_SINGLE_SCHEMES = ("redis", "rediss", "unix")
_SCHEMES = {"redis+sentinel": (SENTINEL, 26379), "redis+cluster": (CLUSTER, 6379)}
_HOST = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?$")
_SERVICE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class BadRedisUrl(ValueError):
    """The URL is none of the three forms; the message says what is wrong."""


@dataclass(frozen=True)
class RedisTarget:
    url: str
    mode: str  # SINGLE, SENTINEL or CLUSTER
    nodes: tuple[tuple[str, int], ...] = ()  # the sentinels, or the cluster's seed nodes
    service: str = ""  # Sentinel: the primary's name
    db: int = 0
    username: str | None = None
    password: str | None = None

    def describe(self) -> str:
        """The URL without its password, for logs and answers."""
        nodes = ",".join(f"{host}:{port}" for host, port in self.nodes)
        if self.mode == SENTINEL:
            return f"sentinel {self.service} via {nodes}"
        if self.mode == CLUSTER:
            return f"cluster via {nodes}"
        return re.sub(r"//[^@/]*@", "//", self.url)


def parse_redis_url(url: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise BadRedisUrl("must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://")
    if scheme in _SINGLE_SCHEMES:
        return RedisTarget(url=url, mode=SINGLE)
    if scheme not in _SCHEMES:
        raise BadRedisUrl(f"unknown scheme {scheme}://")
    mode, default_port = _SCHEMES[scheme]
    credentials, _, location = rest.rpartition("@")
    username, password = _credentials(credentials)
    hosts, _, path = location.partition("/")
    nodes = tuple(_node(part, default_port) for part in hosts.split(","))
    parts = [part for part in path.split("/") if part] if path else []
    service, db = "", 0
    if mode == SENTINEL:
        if not parts or not _SERVICE.match(parts[0]):
            raise BadRedisUrl("a Sentinel URL names the primary after the hosts: redis+sentinel://host:26379/<name>")
        service, parts = unquote(parts[0]), parts[1:]
    if len(parts) > 1 or (parts and not parts[0].isdigit()):
        raise BadRedisUrl(f"{path!r} is not a database number")
    db = int(parts[0]) if parts else 0
    if mode == CLUSTER and db != 0:
        raise BadRedisUrl("a cluster has database 0 only")
    return RedisTarget(url=url, mode=mode, nodes=nodes, service=service, db=db, username=username, password=password)


def _credentials(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    user, sep, password = text.partition(":")
    return (unquote(user) or None), (unquote(password) if sep else None)


def _node(text: str, default_port: int) -> tuple[str, int]:
    found = _HOST.match(text)
    if found is None:
        raise BadRedisUrl(f"{text!r} is not host or host:port")
    port = int(found["port"] or default_port)
    if not 0 < port < 65536:
        raise BadRedisUrl(f"{text!r}: port out of range")
    return found["host"].strip("[]"), port
