"""The deploy recipes work: nginx takes the site and streams SSE through it unbuffered."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import auth
from tests.servers import ROOT, GunicornServer, free_port
from tests.sse_client import Swarm, Viewer

DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx running our site file, with the upstreams and port swapped for the test's own."""

    def __init__(self, workdir: Path, increment: GunicornServer, board: GunicornServer) -> None:
        self.board_id = increment.env["LEADERBOARD_ID"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        site = (DEPLOY / "nginx" / "leaderboard.conf").read_text()
        site = site.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{increment.port};")
        site = site.replace("server 127.0.0.1:8001;", f"server 127.0.0.1:{board.port};")
        (workdir / "site.conf").write_text(site)
        self.config = workdir / "nginx.conf"
        self.config.write_text(
            f"""
            daemon off;
            pid {workdir}/nginx.pid;
            error_log {workdir}/error.log;
            events {{ worker_connections 1024; }}
            http {{
                access_log off;
                client_body_temp_path {workdir}/body;
                proxy_temp_path {workdir}/proxy;
                fastcgi_temp_path {workdir}/fastcgi;
                uwsgi_temp_path {workdir}/uwsgi;
                scgi_temp_path {workdir}/scgi;
                gzip on;
                gzip_types text/event-stream application/json;
                include {workdir}/site.conf;
            }}
            """
        )
        self.process: subprocess.Popen[bytes] | None = None

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([NGINX, "-t", "-c", str(self.config)], capture_output=True, text=True)

    def start(self) -> Nginx:
        self.process = subprocess.Popen([NGINX, "-c", str(self.config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/healthz", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def through_nginx(tmp_path: Path, base_env: dict[str, str], engine: object) -> Iterator[Nginx]:
    assert Path(NGINX).exists(), "nginx is needed (Debian package nginx; .ci/run installs it)"
    env = {**base_env, "TRUSTED_PROXIES": "1", "SSE_HEARTBEAT_SECONDS": "1"}
    increment = GunicornServer("wsgi_increment", env, workers=1).start()
    board = GunicornServer("wsgi_board", env, workers=1).start()
    nginx = Nginx(tmp_path, increment, board)
    try:
        yield nginx
    finally:
        nginx.stop()
        increment.stop()
        board.stop()


@pytest.mark.e2e
def test_nginx_takes_the_site_and_streams_every_frame_at_once(
    through_nginx: Nginx, request: pytest.FixtureRequest
) -> None:
    checked = through_nginx.check()
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr
    nginx = through_nginx.start()

    viewer = Viewer(f"{nginx.url}/events", {"Accept-Encoding": "gzip"})
    swarm = Swarm([viewer])
    request.addfinalizer(swarm.close)
    assert swarm.wait_until(lambda: bool(viewer.frames), timeout=5)
    assert "content-encoding" not in viewer.response_headers  # gzip is on for the site, never for the stream
    assert viewer.response_headers["x-request-id"]  # nginx's $request_id, passed to the service

    for score in (10, 20, 30):
        started = time.monotonic()
        answer = requests.post(f"{nginx.url}/score", json={"score": score}, headers=auth("via-nginx"), timeout=10)
        assert answer.status_code == 200
        total = answer.json()["score"]
        arrived = swarm.wait_until(
            lambda t=total: viewer.frames[-1].json["top"][:1] == [["via-nginx", str(t)]], timeout=2
        )
        assert arrived, "the frame did not come through nginx"
        assert time.monotonic() - started < 1, "nginx held the frame back (buffering)"

    pings = len(viewer.comments)
    swarm.pump(2.5)
    assert len(viewer.comments) >= pings + 2, "heartbeats did not come through one by one"
    assert requests.get(f"{nginx.url}/metrics", timeout=5).status_code == 404
    assert requests.get(f"{nginx.url}/stats", headers=auth("ops", role="admin"), timeout=5).status_code == 404
    assert requests.get(f"{nginx.url}/leaderboard", timeout=5).json()["top"][0]["userId"] == "via-nginx"

    # Another board: created, written and streamed through the same site.
    admin = auth("ops", role="admin")
    board_id = f"{through_nginx.board_id}-nginx"
    assert requests.put(f"{nginx.url}/admin/boards/{board_id}", json={}, headers=admin, timeout=10).status_code == 201
    other = Viewer(f"{nginx.url}/boards/{board_id}/events")
    swarm.add(other)
    assert swarm.wait_until(lambda: bool(other.frames), timeout=5)
    both = {"scores": {board_id: 7, through_nginx.board_id: 1}}
    assert requests.post(f"{nginx.url}/scores", json=both, headers=auth("via-nginx"), timeout=10).status_code == 200
    answer = requests.post(f"{nginx.url}/boards/{board_id}/score", json={"score": 3}, headers=auth("b"), timeout=10)
    assert answer.json()["rank"] == 2
    assert swarm.wait_until(lambda: other.frames[-1].json["top"] == [["via-nginx", "7"], ["b", "3"]], timeout=2)


def test_the_systemd_units_run_what_the_repository_has() -> None:
    for name in ("leaderboard-increment.service", "leaderboard-board.service", "leaderboard-prune.service"):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read(DEPLOY / "systemd" / name)
        command = unit["Service"]["ExecStart"].split()
        assert command[0].startswith("/opt/leaderboard/.venv/bin/")
        for word in command:
            if word.endswith(":app"):
                assert (ROOT / (word.split(":")[0] + ".py")).exists()
            if word.endswith(".py"):
                assert (ROOT / word).exists()
    timer = configparser.ConfigParser()
    timer.read(DEPLOY / "systemd" / "leaderboard-prune.timer")
    assert timer["Timer"]["OnCalendar"] == "daily"


def test_the_procfile_runs_both_services_and_migrates_on_release() -> None:
    processes = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line)
    assert processes["release"] == "flask --app wsgi_increment db upgrade"
    assert "wsgi_increment:app" in processes["increment"]
    assert "wsgi_board:app" in processes["board"]
    assert all("-c gunicorn.conf.py" in processes[name] for name in ("increment", "board"))
