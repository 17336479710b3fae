"""`make bench`: the benchmark harness. Writes BENCHMARKS.md and bench/results.json.

    python -m bench.run            # the full run (about 13 minutes on 2 cores)
    python -m bench.run --smoke    # tiny sizes, seconds: keeps the harness from rotting (tests/test_bench.py)

Everything runs as deployed: both services under gunicorn with gevent
workers and gunicorn.conf.py, PostgreSQL (its own database, synchronous
commit on) and Redis (database 10, a board and channel of the run's own).
Each comparison is made side by side in the same run, because the machine is
shared and noisy. Load generators are separate processes (wrk, bench.viewers,
bench.writer) and report their CPU time.
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import psycopg2
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app.leaderboard import Board, BoardCache, BoardDefaults, BoardKeys, BoardRegistry, Submitted
from app.leaderboard.ranks import COMPACT_AT_BACKLOG, rank_backlog
from app.leaderboard.rebuild import rebuild_board
from app.leaderboard.writes import submit_score
from bench.report import write_report
from bench.writer import paced
from config.settings import normalize_database_url
from tests.servers import ROOT, GunicornServer, flask_db_upgrade

ADMIN_URL = os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
SECRET = secrets.token_hex(32)


@dataclass(frozen=True)
class Sizes:
    """How much of everything: the full run, or the smoke run's crumbs."""

    write_connections: tuple[int, ...] = (16, 64, 256)
    write_seconds: int = 8
    write_rounds: int = 3  # runs of each side per connection count, alternating; the median run is reported
    write_users: int = 10_000
    viewer_counts: tuple[int, ...] = (1_000, 5_000, 10_000)
    change_rates: tuple[float, ...] = (1.0, 10.0)
    floor_rate: float = 5.0  # the floor: 10,000 viewers at 5 changes a second
    change_seconds: float = 8.0
    # flask-sse's viewers and their rates: at 5,000 viewers it takes minutes to settle 10 changes/s.
    flask_sse_stages: tuple[tuple[int, tuple[float, ...]], ...] = ((1_000, (1.0, 10.0)), (5_000, (1.0,)))
    e2e_viewers: int = 1_000
    e2e_rate: float = 200.0
    e2e_seconds: float = 15.0
    rank_users: int = 1_000_000
    rank_seconds: int = 10
    # Writes spread over many boards, beside the single board, at one connection count.
    spread_boards: int = 1_000
    spread_connections: int = 64
    # Viewers spread over many boards on one worker, the changes spread over them too.
    board_crowd: tuple[int, int, float] = (10_000, 100, 10.0)  # viewers, boards, changes a second in all


SMOKE = Sizes(
    write_connections=(4,),
    write_seconds=1,
    write_rounds=1,
    write_users=2_000,  # enough that no one user meets the rate limit even at thousands of writes a second
    viewer_counts=(20,),
    change_rates=(5.0,),
    floor_rate=5.0,
    change_seconds=1.0,
    flask_sse_stages=((20, (5.0,)),),
    e2e_viewers=20,
    e2e_rate=20.0,
    e2e_seconds=2.0,
    rank_users=2_000,
    rank_seconds=1,
    spread_boards=20,
    spread_connections=4,
    board_crowd=(40, 4, 8.0),
)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """utime + stime of every PostgreSQL process on this machine (the benchmark's is local)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        if text[text.index("(") + 1 : text.rindex(")")] == "postgres":
            total += cpu_seconds(int(stat.parent.name))
    return total


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_pids(master: GunicornServer) -> list[int]:
    assert master.process is not None
    children = Path(f"/proc/{master.process.pid}/task/{master.process.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def send_each_once(url: str, tokens: list[str], connections: int = 16) -> None:
    """POST /score once with each token, over `connections` connections kept alive."""
    address = urlsplit(url)

    def send(share: list[str]) -> None:
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
        try:
            for token in share:
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
                connection.request("POST", "/score", body=b'{"score": 1}', headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"warm-up write answered {response.status}")
        finally:
            connection.close()

    with ThreadPoolExecutor(connections) as pool:
        for sent in [pool.submit(send, tokens[i::connections]) for i in range(connections)]:
            sent.result()


class Run:
    def __init__(self, sizes: Sizes, workdir: Path) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.tag = f"bench{secrets.token_hex(3)}"
        self.database = f"lb_{self.tag}"
        self.redis = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.results: dict[str, Any] = {}
        self.env = {
            "APP_ENV": "production",
            "JWT_SECRET_KEY": SECRET,
            "DATABASE_URL": ADMIN_URL.rsplit("/", 1)[0] + "/" + self.database,
            "REDIS_URL": REDIS_URL,
            "LEADERBOARD_ID": self.tag,
            "REDIS_CHANNEL": f"leaderboard:updated:{self.tag}",
            "LOG_LEVEL": "WARNING",
            "SSE_MAX_VIEWERS_PER_IP": "100000",  # every viewer comes from 127.0.0.1
        }

    # -- setup -----------------------------------------------------------

    @contextmanager
    def database_of_our_own(self) -> Iterator[None]:
        admin = psycopg2.connect(ADMIN_URL)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.database}"')
            cur.execute("SHOW synchronous_commit")
            self.results["synchronous_commit"] = cur.fetchone()[0]
            cur.execute("SHOW autovacuum")
            self.results["autovacuum"] = cur.fetchone()[0]
        try:
            flask_db_upgrade(self.env)
            self.engine = create_engine(normalize_database_url(self.env["DATABASE_URL"]))
            yield
            self.engine.dispose()
        finally:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            admin.close()
            for key in self.redis.scan_iter(match=f"lb:{{{self.tag}*"):
                self.redis.delete(key)
            self.redis.close()

    def tokens(self, users: int, prefix: str = "user") -> dict[str, str]:
        expires = datetime.now(UTC) + timedelta(hours=2)
        return {
            f"{prefix}{i}": jwt.encode({"sub": f"{prefix}{i}", "exp": expires}, SECRET, algorithm="HS256")
            for i in range(users)
        }

    def registry(self, default_id: str | None = None) -> BoardRegistry:
        """The run's boards, as a service with LEADERBOARD_ID `default_id` sees them."""
        defaults = BoardDefaults(
            default_id=default_id or self.tag,
            default_channel=self.env["REDIS_CHANNEL"],
            top_n=10,
            max_increment=1_000_000,
        )
        return BoardRegistry(self.engine, defaults)

    def make_boards(self, prefix: str, count: int, **settings: Any) -> list[Board]:
        """Boards created as PUT /admin/boards/<id> creates them: in SQL, then built (empty) in Redis."""
        registry = self.registry()
        cache = BoardCache(redis.Redis.from_url(REDIS_URL, decode_responses=True))
        boards = [registry.put(f"{prefix}{i}", {"top_n": 10, **settings})[0] for i in range(count)]
        with Session(self.engine) as session:
            for board in boards:
                rebuild_board(session, cache, board)
        cache.redis.close()
        return boards

    def serve(self, module: str, workers: int, **overrides: str) -> GunicornServer:
        return GunicornServer(module, {**self.env, **overrides}, workers=workers).start(timeout=60)

    # -- 1. writes -------------------------------------------------------

    def wrk(self, url: str, script: str, connections: int, seconds: int, **env: str) -> dict[str, Any]:
        argv = [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(ROOT / "bench/wrk" / script),
        ]
        environ = {**os.environ, "WRK_REPORT": str(ROOT / "bench/wrk/report.lua"), **env}
        process = subprocess.Popen([*argv, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environ)
        _, status, usage = os.wait4(process.pid, 0)
        output = process.stdout.read().decode() if process.stdout else ""
        found = re.search(r"^WRK_JSON (\{.*\})$", output, flags=re.MULTILINE)
        if status != 0 or not found:
            raise RuntimeError(f"wrk failed:\n{output}")
        result: dict[str, Any] = json.loads(found.group(1))
        wall = result["duration_us"] / 1e6
        result["rps"] = result["requests"] / wall
        result["generator_cpu"] = (usage.ru_utime + usage.ru_stime) / wall
        result["command"] = " ".join([*argv, "URL"])
        return result

    def writes(self) -> None:
        sizes = self.sizes
        tokens = self.tokens(sizes.write_users)
        token_file = self.workdir / "tokens.lua"
        token_file.write_text("return {\n" + ",\n".join(f'"{t}"' for t in tokens.values()) + "\n}\n")
        ours = self.serve("wsgi_increment", workers=os.cpu_count() or 2)
        reference = self.serve("bench.reference_app", workers=os.cpu_count() or 2, LEADERBOARD_ID=f"{self.tag}ref")
        rows = []
        try:
            # Every user's token once, on both, before anything is measured: a client sends
            # its token with many writes (one per session), so a service in use has seen it
            # before. Without this, the first run (16 connections) met mostly unseen tokens
            # and the later ones mostly seen, so their ratios compared different states.
            for server in (ours, reference):
                send_each_once(server.url, list(tokens.values()))
            for connections in sizes.write_connections:
                row: dict[str, Any] = {"connections": connections}
                runs: dict[str, list[dict[str, Any]]] = {"ours": [], "reference": []}
                sides = [("ours", ours), ("reference", reference)]
                for round_ in range(sizes.write_rounds):
                    # Alternating which side goes first, so a host that speeds up or slows
                    # down during the rounds favours neither.
                    for name, server in sides if round_ % 2 == 0 else sides[::-1]:
                        runs[name].append(self.write_run(name, server, connections, token_file))
                for name, done in runs.items():
                    by_rate = sorted(done, key=lambda run: run["rps"])
                    row[name] = by_rate[len(by_rate) // 2] | {"rounds_rps": [run["rps"] for run in done]}
                row["ratio"] = row["ours"]["rps"] / row["reference"]["rps"]
                rows.append(row)
                if connections == sizes.spread_connections:
                    self.results["spread_writes"] = self.spread_writes(ours, token_file, row["ours"])
                    self.results["log_writes"] = self.log_writes(ours, token_file, row["ours"])
                ours_row, reference_row = row["ours"], row["reference"]
                print(
                    f"writes c={connections}: ours {ours_row['rps']:.0f}/s p99 {ours_row['p99_us'] / 1000:.1f} ms,"
                    f" reference {reference_row['rps']:.0f}/s ({row['ratio']:.2f})",
                    flush=True,
                )
        finally:
            ours.stop()
            reference.stop()
        self.results["writes"] = {
            "users": sizes.write_users,
            "seconds": sizes.write_seconds,
            "rounds": sizes.write_rounds,
            "rows": rows,
        }

    def write_run(self, name: str, server: GunicornServer, connections: int, token_file: Path) -> dict[str, Any]:
        """One wrk run of `POST /score` after its warm-up, with the CPU of the workers and of PostgreSQL."""
        sizes = self.sizes
        warm_up = 1 if sizes.write_seconds < 5 else 2
        self.wrk(server.url, "score.lua", connections, warm_up, WRK_TOKENS=str(token_file))
        pids = worker_pids(server)
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        postgres_before = postgres_cpu_seconds()
        result = self.wrk(server.url, "score.lua", connections, sizes.write_seconds, WRK_TOKENS=str(token_file))
        result["server_cpu"] = (sum(cpu_seconds(pid) for pid in pids) - cpu_before) / sizes.write_seconds
        result["postgres_cpu"] = (postgres_cpu_seconds() - postgres_before) / sizes.write_seconds
        if result["status_errors"]:
            # A side that answers errors answers fast: its throughput compares with nothing.
            raise RuntimeError(
                f"{name} answered {result['status_errors']} of {result['requests']} writes"
                f" with an error at {connections} connections:\n{server.log()[-2000:]}"
            )
        return result

    def log_writes(self, ours: GunicornServer, token_file: Path, logged: dict[str, Any]) -> dict[str, Any]:
        """The same writes with the change log off (CHANGES_RETAIN=0), alternating with it on."""
        sizes = self.sizes
        silent = self.serve("wsgi_increment", workers=os.cpu_count() or 2, CHANGES_RETAIN="0")
        warm_up = 1 if sizes.write_seconds < 5 else 2
        connections = sizes.spread_connections
        try:
            self.wrk(silent.url, "score.lua", connections, warm_up, WRK_TOKENS=str(token_file))
            on, off = [logged], []
            for _ in range(SPREAD_PAIRS):
                off.append(
                    self.wrk(silent.url, "score.lua", connections, sizes.write_seconds, WRK_TOKENS=str(token_file))
                )
                on.append(self.wrk(ours.url, "score.lua", connections, sizes.write_seconds, WRK_TOKENS=str(token_file)))
        finally:
            silent.stop()

        def median(runs: list[dict[str, Any]]) -> float:
            return sorted(run["rps"] for run in runs)[len(runs) // 2]

        result = {
            "connections": connections,
            "on": on,
            "off": off,
            "on_median": median(on),
            "off_median": median(off),
            "ratio": median(on) / median(off),
        }
        print(
            f"writes c={connections} with the change log {[round(r['rps']) for r in on]}/s, without"
            f" {[round(r['rps']) for r in off]}/s; medians {result['ratio']:.2f}",
            flush=True,
        )
        return result

    def spread_writes(self, ours: GunicornServer, token_file: Path, single: dict[str, Any]) -> dict[str, Any]:
        """The same writes spread over many boards (POST /boards/<id>/score), alternating with one board's."""
        sizes = self.sizes
        prefix = f"{self.tag}s"
        self.make_boards(prefix, sizes.spread_boards)
        warm_up = 1 if sizes.write_seconds < 5 else 2
        spread_env = {"WRK_TOKENS": str(token_file), "WRK_BOARDS": str(sizes.spread_boards), "WRK_PREFIX": prefix}
        self.wrk(ours.url, "boards.lua", sizes.spread_connections, warm_up, **spread_env)
        singles, spreads = [single], []
        for _ in range(SPREAD_PAIRS):
            spreads.append(
                self.wrk(ours.url, "boards.lua", sizes.spread_connections, sizes.write_seconds, **spread_env)
            )
            singles.append(
                self.wrk(
                    ours.url, "score.lua", sizes.spread_connections, sizes.write_seconds, WRK_TOKENS=str(token_file)
                )
            )
        with self.engine.connect() as connection:
            written = connection.exec_driver_sql(
                "SELECT count(DISTINCT board) FROM scores WHERE board LIKE %s", (prefix + "%",)
            ).scalar_one()

        def median(runs: list[dict[str, Any]]) -> float:
            return sorted(run["rps"] for run in runs)[len(runs) // 2]

        result = {
            "boards": sizes.spread_boards,
            "boards_written": written,
            "connections": sizes.spread_connections,
            "singles": singles,
            "spreads": spreads,
            "single_median": median(singles),
            "spread_median": median(spreads),
            "ratio": median(spreads) / median(singles),
        }
        print(
            f"writes over {sizes.spread_boards} boards c={sizes.spread_connections}:"
            f" {[round(run['rps']) for run in spreads]}/s; one board {[round(run['rps']) for run in singles]}/s;"
            f" medians {result['ratio']:.2f}",
            flush=True,
        )
        return result

    # -- 2. fan-out -------------------------------------------------------

    def crowd(
        self, url: str, count: int, sample: int, ready: str = "frame", boards: int = 1
    ) -> list[subprocess.Popen[str]]:
        """Viewer processes, split so that each holds at most 5,000 connections (viewer i on board i mod `boards`)."""
        parts = max(1, -(-count // 5000))
        processes = []
        for index in range(parts):
            share = count // parts + (1 if index < count % parts else 0)
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.viewers",
                        "--url",
                        url,
                        "--count",
                        str(share),
                        "--sample",
                        str(sample),
                        "--ready",
                        ready,
                        "--boards",
                        str(boards),
                    ],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for process in processes:
            line = process.stdout.readline() if process.stdout else ""
            if not line.startswith("ready"):
                raise RuntimeError(f"viewers did not connect: {line!r}")
        return processes

    def collect(self, processes: list[subprocess.Popen[str]], final: int | list[int]) -> dict[str, Any]:
        """End a round: every viewer process waits for `final` (or its board's, from a list), then reports."""
        finals = final if isinstance(final, list) else [final]
        command = f"finals {','.join(map(str, finals))}" if isinstance(final, list) else f"final {final}"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(command + "\n")
            process.stdin.flush()
        parts = [json.loads(process.stdout.readline()) for process in processes if process.stdout]
        versions = [version for part in parts for version in part["versions"]]
        boards = [board for part in parts for board in part["boards"]]
        return {
            "viewers": len(versions),
            "at_final": sum(1 for version, board in zip(versions, boards, strict=True) if version == finals[board]),
            "open": sum(part["open"] for part in parts),
            "sampled": [frames for part in parts for frames in part["sampled"]],
            "generator_cpu_seconds": sum(part["cpu_seconds"] for part in parts),
        }

    @staticmethod
    def tell(processes: list[subprocess.Popen[str]], command: str) -> None:
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(command + "\n")
            process.stdin.flush()

    def dismiss(self, processes: list[subprocess.Popen[str]]) -> None:
        self.tell(processes, "quit")
        for process in processes:
            process.wait(30)

    def publish_changes(self, cache: BoardCache, boards: list[Board], rate: float, seconds: float) -> list[int]:
        """Change the boards, in turn, `rate` times a second in all, as submissions do (SQL, then the Lua
        script); returns each board's last version."""
        for index in paced(max(1, int(rate * seconds)), rate):
            board = boards[index % len(boards)]
            submit_score(self.engine, cache, Submitted(board, f"player{index // len(boards) % 10}", 1 + index % 7))
        return [int(cache.redis.get(board.keys.version) or 0) for board in boards]

    @staticmethod
    def latencies(sampled: list[list[list[Any]]], after: float) -> list[float]:
        """Publish-to-viewer seconds of every frame the sampled viewers got after `after`."""
        return [received - ts for frames in sampled for received, _, ts, _ in frames if ts >= after]

    def fanout_rounds(
        self,
        url: str,
        count: int,
        rates: tuple[float, ...],
        worker: int,
        publish: Any,
        redis_connections: Any,
        subscribed: Any = None,
        boards: int = 1,
    ) -> list[dict[str, Any]]:
        """Connect `count` viewers once, measure them idle, then one round per rate of board changes.

        `subscribed(count)`, when given, tells when the server holds every viewer (for a
        server that sends nothing until the first change).
        """
        sample = max(1, count // 200)  # about 200 viewers time every frame
        time.sleep(1)
        rss_before = rss_kb(worker)
        processes = self.crowd(url, count, sample, ready="frame" if subscribed is None else "connected", boards=boards)
        deadline = time.monotonic() + 120
        while subscribed is not None and not subscribed(count) and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            time.sleep(2)
            rss_idle = rss_kb(worker)
            connections = redis_connections()
            rows = []
            for rate in rates:
                self.tell(processes, "mark")
                started = time.time()
                cpu_before = cpu_seconds(worker)
                final = publish(rate, self.sizes.change_seconds)
                cpu = (cpu_seconds(worker) - cpu_before) / self.sizes.change_seconds
                outcome = self.collect(processes, final)
                latencies = self.latencies(outcome["sampled"], started)
                rows.append(
                    {
                        "viewers": count,
                        "rate": rate,
                        "seconds": self.sizes.change_seconds,
                        "rss_per_viewer_kb": (rss_idle - rss_before) / count,
                        "redis_connections": connections,
                        "server_cpu": cpu,
                        "at_final": outcome["at_final"],
                        "open": outcome["open"],
                        "p50_ms": (percentile(latencies, 50) or 0) * 1000,
                        "p99_ms": (percentile(latencies, 99) or 0) * 1000,
                        "frames_timed": len(latencies),
                        "generator_cpu": outcome["generator_cpu_seconds"] / self.sizes.change_seconds,
                    }
                )
                row = rows[-1]
                print(
                    f"{url.rsplit('/', 1)[1]} {count} viewers on {boards} board(s) at {rate:g}/s:"
                    f" p50 {row['p50_ms']:.0f} ms"
                    f" p99 {row['p99_ms']:.0f} ms, {row['at_final']}/{count} at final,"
                    f" {row['rss_per_viewer_kb']:.1f} KB/viewer, {row['redis_connections']} Redis connections",
                    flush=True,
                )
            return rows
        finally:
            self.dismiss(processes)

    def our_connections(self, worker: int) -> int:
        """The Redis connections a board worker holds (its clients are named `...-<pid>`)."""
        return sum(1 for c in self.redis.client_list() if c.get("name", "").endswith(f"-{worker}"))

    def fanout(self) -> None:
        sizes = self.sizes
        (fan,) = self.make_boards(f"{self.tag}fan", 1)
        board = self.serve("wsgi_board", workers=1, SSE_MAX_VIEWERS="12000")
        cache = BoardCache(redis.Redis.from_url(REDIS_URL, decode_responses=True))
        worker = worker_pids(board)[0]
        ours_rows: list[dict[str, Any]] = []

        def publish(rate: float, seconds: float) -> int:
            return self.publish_changes(cache, [fan], rate, seconds)[0]

        try:
            for count in sizes.viewer_counts:
                rates = sizes.change_rates + ((sizes.floor_rate,) if count == max(sizes.viewer_counts) else ())
                ours_rows += self.fanout_rounds(
                    f"{board.url}/boards/{fan.id}/events",
                    count,
                    rates,
                    worker,
                    publish,
                    lambda: self.our_connections(worker),
                )
        finally:
            board.stop()
            cache.redis.close()
        self.results["fanout"] = ours_rows
        self.results["transports"] = self.transports()

    def transports(self) -> dict[str, Any]:
        """Pub/Sub against streams: a crowd on a worker of each, both connected, their boards changing
        in turn, round after round (so both meet the same host), at the floor rate and the highest."""
        sizes = self.sizes
        count = max(sizes.viewer_counts)
        rates = sorted({sizes.floor_rate, max(sizes.change_rates)})
        boards = self.make_boards(f"{self.tag}tr", 2)
        cache = BoardCache(redis.Redis.from_url(REDIS_URL, decode_responses=True))
        for board in boards:  # a frame before the viewers come
            submit_score(self.engine, cache, Submitted(board, "player0", 1))
        servers = {
            transport: self.serve("wsgi_board", workers=1, SSE_MAX_VIEWERS="12000", BOARD_TRANSPORT=transport)
            for transport in TRANSPORTS
        }
        crowds: dict[str, list[subprocess.Popen[str]]] = {}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {f"{rate:g}": {t: [] for t in TRANSPORTS} for rate in rates}
        try:
            for (transport, server), board in zip(servers.items(), boards, strict=True):
                crowds[transport] = self.crowd(f"{server.url}/boards/{board.id}/events", count, max(1, count // 200))
            time.sleep(2)
            for round_ in range(TRANSPORT_PAIRS):
                for rate in rates:
                    order = TRANSPORTS if round_ % 2 == 0 else TRANSPORTS[::-1]
                    for transport in order:
                        board = boards[TRANSPORTS.index(transport)]
                        self.tell(crowds[transport], "mark")
                        started = time.time()
                        (final,) = self.publish_changes(cache, [board], rate, sizes.change_seconds)
                        outcome = self.collect(crowds[transport], final)
                        latencies = self.latencies(outcome["sampled"], started)
                        runs[f"{rate:g}"][transport].append(
                            {
                                "p50_ms": (percentile(latencies, 50) or 0) * 1000,
                                "p99_ms": (percentile(latencies, 99) or 0) * 1000,
                                "at_final": outcome["at_final"],
                                "viewers": count,
                            }
                        )
            for rate, by_transport in runs.items():
                print(
                    f"transports, {count} viewers at {rate}/s, p99 ms: "
                    + "; ".join(f"{t} {[round(r['p99_ms']) for r in rows]}" for t, rows in by_transport.items()),
                    flush=True,
                )
        finally:
            for processes in crowds.values():
                self.dismiss(processes)
            for server in servers.values():
                server.stop()
            cache.redis.close()
        return {"viewers": count, "seconds": sizes.change_seconds, "rates": runs}

    def board_crowd(self) -> None:
        """Viewers of many boards on one worker, each board changing now and then."""
        count, board_count, rate = self.sizes.board_crowd
        prefix = f"{self.tag}crowd"
        boards = self.make_boards(prefix, board_count)
        server = self.serve("wsgi_board", workers=1, SSE_MAX_VIEWERS="12000")
        cache = BoardCache(redis.Redis.from_url(REDIS_URL, decode_responses=True))
        worker = worker_pids(server)[0]
        for board in boards:  # every board has a frame before the viewers come
            submit_score(self.engine, cache, Submitted(board, "player0", 1))
        try:
            rows = self.fanout_rounds(
                f"{server.url}/boards/{prefix}{{board}}/events",
                count,
                (rate,),
                worker,
                lambda rate, seconds: self.publish_changes(cache, boards, rate, seconds),
                lambda: self.our_connections(worker),
                boards=board_count,
            )
        finally:
            server.stop()
            cache.redis.close()
        self.results["board_crowd"] = {"boards": board_count, **rows[0]}

    def flask_sse(self) -> None:
        self.results["flask_sse"] = self.flask_sse_rows()

    def flask_sse_rows(self) -> list[dict[str, Any]]:
        sizes = self.sizes
        server = self.serve("bench.flask_sse_app", workers=1)
        worker = worker_pids(server)[0]
        publisher = redis.Redis.from_url(REDIS_URL)
        version = [int(time.time() * 1e6)]

        def publish(rate: float, seconds: float) -> int:
            for _ in paced(max(1, int(rate * seconds)), rate):
                version[0] += 1
                message = {
                    "type": "update",
                    "top": [[f"player{i}", str(1000 - i)] for i in range(10)],
                    "version": version[0],
                    "ts": time.time(),
                }
                publisher.publish("sse", json.dumps({"data": json.dumps(message), "id": version[0]}))
            return version[0]

        def connections() -> int:
            # Each flask-sse viewer holds a Redis connection for its own subscription.
            return int(self.redis.pubsub_numsub("sse")[0][1])

        def release_gone_viewers() -> None:
            # A flask-sse stream notices its viewer left only when it next writes:
            # until a message comes, its subscription stays. One more message, so
            # the next stage starts from no subscriptions.
            deadline = time.monotonic() + 60
            while connections() and time.monotonic() < deadline:
                publisher.publish("sse", json.dumps({"data": "{}", "type": "release"}))
                time.sleep(0.5)

        rows = []
        try:
            for count, rates in sizes.flask_sse_stages:
                release_gone_viewers()
                rows += self.fanout_rounds(
                    f"{server.url}/stream",
                    count,
                    rates,
                    worker,
                    publish,
                    connections,
                    subscribed=lambda n: self.redis.pubsub_numsub("sse")[0][1] >= n,
                )
        finally:
            server.stop()
            publisher.close()
        return rows

    # -- 3. end to end ----------------------------------------------------

    def end_to_end(self) -> None:
        sizes = self.sizes
        players = 50
        overrides = {"TOP_N": str(players), "LEADERBOARD_ID": f"{self.tag}e2e", "RATE_LIMIT_PER_USER": "off"}
        increment = self.serve("wsgi_increment", workers=os.cpu_count() or 2, **overrides)
        board = self.serve("wsgi_board", workers=1, **overrides)
        token_file = self.workdir / "e2e-tokens.json"
        token_file.write_text(json.dumps(self.tokens(players, prefix="player")))
        try:
            processes = self.crowd(f"{board.url}/events", sizes.e2e_viewers, max(1, sizes.e2e_viewers // 100))
            writer = subprocess.run(
                [sys.executable, "-m", "bench.writer", "--url", increment.url, "--tokens", str(token_file),
                 "--rate", str(sizes.e2e_rate), "--seconds", str(sizes.e2e_seconds)],
                cwd=ROOT, capture_output=True, text=True, check=True,
            )  # fmt: skip
            written = json.loads(writer.stdout)
            final = int(self.redis.get(BoardKeys.for_board(f"{self.tag}e2e").version) or 0)
            outcome = self.collect(processes, final)
            self.dismiss(processes)
        finally:
            increment.stop()
            board.stop()
        latencies = []
        for frames in outcome["sampled"]:
            # Per user, in arrival order: when this viewer saw which total (totals only grow).
            seen: dict[str, tuple[list[int], list[float]]] = {}
            for received, _, _, top in frames:
                for user, score in top:
                    totals, times = seen.setdefault(user, ([], []))
                    if not totals or int(score) > totals[-1]:
                        totals.append(int(score))
                        times.append(received)
            for sent, user, total in written["accepted"]:
                totals, times = seen.get(user, ([], []))
                first = bisect.bisect_left(totals, total)
                if first < len(totals):
                    latencies.append(times[first] - sent)
        self.results["end_to_end"] = {
            "viewers": sizes.e2e_viewers,
            "rate": sizes.e2e_rate,
            "accepted": len(written["accepted"]),
            "failed": written["failed"],
            "achieved_rate": len(written["accepted"]) / written["seconds"],
            "at_final": outcome["at_final"],
            "p50_ms": (percentile(latencies, 50) or 0) * 1000,
            "p99_ms": (percentile(latencies, 99) or 0) * 1000,
            "samples": len(latencies),
            "writer_cpu_seconds": written["cpu_seconds"],
            "viewers_cpu_seconds": outcome["generator_cpu_seconds"],
        }
        e2e = self.results["end_to_end"]
        print(f"end to end: p50 {e2e['p50_ms']:.0f} ms p99 {e2e['p99_ms']:.0f} ms over {e2e['samples']}", flush=True)

    # -- 4. ranks ---------------------------------------------------------

    def rank_backlog(self, board: str) -> int:
        with self.engine.connect() as connection:
            return rank_backlog(connection, board, limit=self.sizes.rank_users)

    def ranks(self) -> None:
        sizes = self.sizes
        board = f"{self.tag}ranks"
        self.registry(default_id=board).ensure_default()
        started = time.monotonic()
        connection = psycopg2.connect(self.env["DATABASE_URL"])
        with connection, connection.cursor() as cur:
            # A bulk import: the trigger off, then one compaction builds the rank index from the rows.
            cur.execute("ALTER TABLE scores DISABLE TRIGGER USER")
            cur.execute(
                "INSERT INTO scores (board, user_id, total, reached_at, version) "
                "SELECT %s, 'user' || g, (random() * 1000000)::bigint, now() - random() * interval '30 days', 1 "
                "FROM generate_series(1, %s) g",
                (board, sizes.rank_users),
            )
            cur.execute("ALTER TABLE scores ENABLE TRIGGER USER")
        connection.autocommit = True
        with connection.cursor() as cur:
            cur.execute("VACUUM ANALYZE scores")
            # Write the load out now, not under the first query's measurement (a checkpoint's
            # writes stalled it: max 429 ms against 77 ms for the next query, measured).
            cur.execute("CHECKPOINT")
        connection.close()
        loaded = time.monotonic() - started
        compact = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi_board", "compact-ranks"],
            cwd=ROOT, env={**os.environ, **self.env, "LEADERBOARD_ID": board, "FLASK_SKIP_DOTENV": "1"},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        server = self.serve("wsgi_board", workers=os.cpu_count() or 2, LEADERBOARD_ID=board)
        queries = {}
        try:
            for query in RANK_QUERIES:
                env = {"WRK_USERS": str(sizes.rank_users), "WRK_QUERY": query}
                self.wrk(server.url, "rank.lua", 4, 2, **env)  # warm up
                queries[query] = self.wrk(server.url, "rank.lua", 4, sizes.rank_seconds, **env)
                # One at a time: what a query takes when it does not wait behind others.
                queries[query]["alone"] = self.wrk(server.url, "rank.lua", 1, sizes.rank_seconds, **env)
                result, alone = queries[query], queries[query]["alone"]
                print(
                    f"ranks, {query}: p50 {result['p50_us'] / 1000:.1f} ms p99 {result['p99_us'] / 1000:.1f} ms"
                    f" ({result['rps']:.0f}/s, {result['status_errors']} not 2xx); one at a time"
                    f" p50 {alone['p50_us'] / 1000:.1f} ms p99 {alone['p99_us'] / 1000:.1f} ms",
                    flush=True,
                )
        finally:
            server.stop()
        # With changes waiting in the index, as between two compactions under writes:
        # half the backlog that starts one (each change is a key gone and a key come).
        # A service that has run for a minute compacts a board at the first change it
        # sees (app.keeper), so a new one serves this part: it waits a minute first.
        changed = min(sizes.rank_users, COMPACT_AT_BACKLOG // 4)
        with psycopg2.connect(self.env["DATABASE_URL"]) as connection, connection.cursor() as cur:
            cur.execute(
                "UPDATE scores SET total = total + 1 WHERE board = %s AND user_id IN"
                " (SELECT 'user' || (random() * %s)::bigint FROM generate_series(1, %s))",
                (board, sizes.rank_users, changed),
            )
            # What autovacuum does after as many changes (migrations/versions/0001 sets its
            # threshold for rank_deltas); this machine runs PostgreSQL with autovacuum off.
            cur.execute("ANALYZE rank_deltas")
            cur.execute("CHECKPOINT")  # as after the load: the update's writes not under a measurement
        server = self.serve("wsgi_board", workers=os.cpu_count() or 2, LEADERBOARD_ID=board)
        try:
            backlog = self.rank_backlog(board)
            for query in RANK_QUERIES:
                env = {"WRK_USERS": str(sizes.rank_users), "WRK_QUERY": query}
                self.wrk(server.url, "rank.lua", 4, 1, **env)  # each worker prepares the statement
                queries[query]["backlog"] = self.wrk(server.url, "rank.lua", 4, sizes.rank_seconds, **env)
                result = queries[query]["backlog"]
                print(
                    f"ranks, {query}, {backlog} changes waiting: p50 {result['p50_us'] / 1000:.1f} ms"
                    f" p99 {result['p99_us'] / 1000:.1f} ms ({result['rps']:.0f}/s)",
                    flush=True,
                )
            # Compacted meanwhile, they were not waiting for all of it: the report says so.
            still_waiting = self.rank_backlog(board)
        finally:
            server.stop()
        self.results["ranks"] = {
            "users": sizes.rank_users,
            "load_seconds": loaded,
            "compaction": compact.stdout.strip(),
            "changes_waiting": backlog,
            "changes_waiting_at_the_end": still_waiting,
            **queries["rank"],
            "queries": queries,
        }


# What bench/wrk/rank.lua asks for (WRK_QUERY): a user's rank; a page at a random offset
# (past the end now and then); ten around a random user; a friends list of 100 (a tenth unknown).
RANK_QUERIES = ("rank", "page", "around", "friends")

# The board workers' two ways of hearing of updates, and how many rounds of each are compared.
TRANSPORTS = ("pubsub", "streams")
TRANSPORT_PAIRS = 3

# Runs of writes over many boards, each beside a run on one board (medians compared).
SPREAD_PAIRS = 3

SECTIONS = ["writes", "fanout", "board_crowd", "flask_sse", "end_to_end", "ranks"]


def machine() -> dict[str, Any]:
    def first(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": first(["psql", "--version"]),
        "redis": first(["redis-server", "--version"]),
        "wrk": first(["wrk", "--version"]),
        "fd_limit": first(["sh", "-c", "ulimit -n"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the harness works")
    parser.add_argument("--out", type=Path, default=ROOT, help="where BENCHMARKS.md and bench/results.json go")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="run only these sections (for profiling)"
    )
    parser.add_argument(
        "--before",
        type=Path,
        nargs="+",
        default=[],
        help="earlier runs' results.json, oldest first: the report compares with them (see BENCHMARKS.md)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    sizes = SMOKE if args.smoke else Sizes()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="leaderboard-bench-") as workdir:
        run = Run(sizes, Path(workdir))
        run.results["started"] = datetime.now(UTC).isoformat(timespec="seconds")
        run.results["machine"] = machine()
        run.results["smoke"] = args.smoke
        run.results["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        with run.database_of_our_own():
            run.results["section_seconds"] = {}
            for section in args.only:
                began = time.monotonic()
                getattr(run, section)()
                run.results["section_seconds"][section] = round(time.monotonic() - began)
        run.results["seconds"] = time.monotonic() - started
    results_file = args.out / "bench" / "results.json"
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(run.results, indent=2) + "\n")
    befores = [json.loads(path.read_text()) for path in args.before]
    write_report(run.results, args.out / "BENCHMARKS.md", " ".join(["python -m bench.run", *sys.argv[1:]]), befores)
    print(f"done in {run.results['seconds']:.0f} s: {args.out / 'BENCHMARKS.md'}, {results_file}")


if __name__ == "__main__":
    main()
