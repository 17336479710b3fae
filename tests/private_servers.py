"""Redis and PostgreSQL servers of a test's own, which it may stop and start again.

The machine's shared servers are never stopped; fault tests run against
these instead, on free loopback ports, with their data in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import redis

from tests.conftest import wait_until
from tests.servers import free_port, free_ports


class PrivateRedis:
    """A redis-server without persistence: a restart comes back empty, as the spec's worst case."""

    def __init__(self, workdir: Path, replica_of: PrivateRedis | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.replica_of = replica_of
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (scripts/ensure-services.sh installs it)"
        replication = ["--replicaof", "127.0.0.1", str(self.replica_of.port)] if self.replica_of else []
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), *replication],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        assert wait_until(lambda: _redis_answers(client), timeout=10), "redis-server did not start"
        client.close()
        return self

    def stop(self) -> None:
        """As abrupt as a crash: nothing is saved."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """Unreachable but not gone: connections hang, data stays (a network partition)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


class PrivateSentinels:
    """A primary, its replica and three sentinels watching them, all on loopback.

    The sentinels call the primary down after `down_after_ms` without an
    answer and promote the replica (a quorum of two agrees).
    """

    SERVICE = "lbprimary"

    def __init__(self, workdir: Path, down_after_ms: int = 1000) -> None:
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.primary = PrivateRedis(self._dir("primary"))
        self.replica = PrivateRedis(self._dir("replica"), replica_of=self.primary)
        self.sentinel_ports = free_ports(3)
        self.sentinels: list[subprocess.Popen[bytes]] = []
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self) -> PrivateSentinels:
        self.primary.start()
        self.replica.start()
        replica = self.replica.client()
        assert wait_until(lambda: replica.info("replication").get("master_link_status") == "up", timeout=10)
        replica.close()
        binary = shutil.which("redis-server")
        assert binary
        for index, port in enumerate(self.sentinel_ports):
            config = self._dir(f"sentinel{index}") / "sentinel.conf"  # sentinels rewrite their own file
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {config.parent}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} 10000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            self.sentinels.append(subprocess.Popen([binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL))
        # Ready when every sentinel knows the replica and the two others.
        assert wait_until(lambda: all(self._sentinel_sees_all(port) for port in self.sentinel_ports), timeout=20)
        return self

    def _sentinel_sees_all(self, port: int) -> bool:
        client = redis.Redis(port=port, decode_responses=True)
        try:
            primary = client.sentinel_master(self.SERVICE)
            return int(primary["num-slaves"]) == 1 and int(primary["num-other-sentinels"]) == 2
        except redis.RedisError:
            return False
        finally:
            client.close()

    def primary_port(self) -> int | None:
        """The port of the primary the sentinels name now (None while none of them answers)."""
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, decode_responses=True)
            try:
                return int(client.sentinel_get_master_addr_by_name(self.SERVICE)[1])
            except (redis.RedisError, TypeError):
                continue
            finally:
                client.close()
        return None

    def stop(self) -> None:
        for process in self.sentinels:
            process.kill()
            process.wait()
        self.sentinels = []
        self.replica.stop()
        self.primary.stop()


class PrivateCluster:
    """A Redis Cluster of three primaries, each with one replica, on loopback (`redis-cli --cluster create`)."""

    def __init__(self, workdir: Path, node_timeout_ms: int = 1000) -> None:
        self.workdir = workdir
        self.node_timeout_ms = node_timeout_ms
        # Bus ports set, not port + 10000 (past 65535 for a high port).
        picked = free_ports(12)
        self.ports, self.bus_ports = picked[:6], picked[6:]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    def start(self) -> PrivateCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (scripts/ensure-services.sh installs it)"
        for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
            folder = self.workdir / str(port)
            folder.mkdir(parents=True, exist_ok=True)
            self.processes[port] = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(folder), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-port", str(bus_port),
                 "--cluster-node-timeout", str(self.node_timeout_ms)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        for port in self.ports:
            client = redis.Redis(port=port)
            assert wait_until(lambda client=client: _redis_answers(client), timeout=10), "redis-server did not start"
            client.close()
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        assert wait_until(self._formed, timeout=30), "the cluster did not form"

    def _formed(self) -> bool:
        for port in self.ports:
            client = redis.Redis(port=port, decode_responses=True)
            try:
                info = client.cluster("INFO")
                if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != 6:
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True)

    def primaries(self) -> list[int]:
        """The ports of the nodes that are primaries now."""
        found = []
        for port, process in self.processes.items():
            if process.poll() is not None:
                continue
            client = self.client(port)
            try:
                if client.info("replication")["role"] == "master":
                    found.append(port)
            finally:
                client.close()
        return sorted(found)

    def kill(self, port: int) -> None:
        process = self.processes[port]
        process.kill()
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _redis_answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary folder (initdb), with trust auth on loopback."""

    def __init__(self) -> None:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        assert versions, "PostgreSQL server binaries are needed (scripts/ensure-services.sh installs them)"
        self.bin = versions[-1].parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="lb-test-pg-"))
        self.data = self.root / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        # initdb refuses to run as root: run the server as the postgres user then.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            self.root.chmod(0o755)
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True)

    def init(self) -> PrivatePostgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
        return self.start()

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "start")
        assert wait_until(self._answers, timeout=20), "PostgreSQL did not start"
        return self

    def stop(self) -> None:
        """An immediate stop: like a crash, in-flight transactions are gone and clients are cut."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _answers(self) -> bool:
        try:
            psycopg2.connect(self.url, connect_timeout=1).close()
            return True
        except psycopg2.OperationalError:
            return False
