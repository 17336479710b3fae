"""Run the services as deployed: gunicorn, gevent workers, our gunicorn.conf.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from config.settings import VARIABLES

ROOT = Path(__file__).resolve().parent.parent


def service_env(overrides: dict[str, str]) -> dict[str, str]:
    """The environment for a child process: ours, minus any leaderboard settings
    (and .env) of the developer's shell, plus `overrides`."""
    inherited = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return {**inherited, "FLASK_SKIP_DOTENV": "1", **overrides}


def flask_db_upgrade(env: dict[str, str]) -> None:
    """Migrate the database `env` names, as an operator does: `flask --app wsgi_increment db upgrade`."""
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi_increment", "db", "upgrade"],
        cwd=ROOT,
        env=service_env(env),
        check=True,
        capture_output=True,
    )


def rss_kb(pid: int) -> int:
    """A process's resident memory, in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: each is held until all are picked, so none comes twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class GunicornServer:
    """One gunicorn master for `wsgi_module:app` on a free loopback port."""

    def __init__(self, wsgi_module: str, env: dict[str, str], workers: int = 2, extra_args: list[str] | None = None):
        self.wsgi_module = wsgi_module
        self.env = env
        self.workers = workers
        self.extra_args = extra_args or []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = ROOT / ".pytest_cache" / f"gunicorn-{wsgi_module}-{self.port}.log"

    def start(self, timeout: float = 20.0) -> GunicornServer:
        self.log_path.parent.mkdir(exist_ok=True)
        self._log_file = log = self.log_path.open("wb")
        argv = [
            sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
            "--access-logfile", "/dev/null", *self.extra_args, f"{self.wsgi_module}:app",
        ]  # fmt: skip
        env = service_env(self.env)
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"gunicorn exited early:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as an orchestrator would; returns gunicorn's exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the instance's /metrics, pooled over its workers (0 when absent)."""
        body = requests.get(f"{self.url}/metrics", timeout=10).text
        found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", body, flags=re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
