"""The benchmark harness still runs: `python -m bench.run --smoke`, tiny sizes (not figures to quote)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)
def test_the_harness_runs_every_section_and_writes_its_report(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "wrk is needed (Debian package wrk; .ci/run installs it)"
    befores = sorted(str(path) for path in (ROOT / "bench" / "before").glob("*.json"))
    command = [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)]
    command += ["--before", *befores] if befores else []
    subprocess.run(command, cwd=ROOT, check=True)
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert results["smoke"] is True
    assert results["synchronous_commit"] == "on"
    [writes] = results["writes"]["rows"]
    assert writes["ours"]["requests"] > 0
    assert writes["reference"]["requests"] > 0
    assert writes["ours"]["status_errors"] == 0
    for row in results["fanout"] + results["flask_sse"]:
        assert row["at_final"] == row["viewers"]
        assert row["frames_timed"] > 0
    # The hub's subscription and the pool for reads, whatever the viewers: one pooled connection,
    # or two when the keeper's round met a board read in the same moment (seen once in a smoke run).
    assert all(2 <= row["redis_connections"] <= 3 for row in results["fanout"]), results["fanout"]
    spread = results["spread_writes"]
    assert all(run["requests"] > 0 and run["status_errors"] == 0 for run in spread["spreads"])
    assert spread["boards_written"] > 1
    crowd = results["board_crowd"]
    assert crowd["at_final"] == crowd["viewers"]
    assert crowd["frames_timed"] > 0
    assert results["end_to_end"]["samples"] > 0
    for query, run in results["ranks"]["queries"].items():
        assert run["requests"] > 0, query
        assert run["status_errors"] == 0, query
    report = (tmp_path / "BENCHMARKS.md").read_text()
    headings = ("## Floors", "## 1. Writes", "### Writes spread over", "## 2. Fan-out", "### Many boards",
                "## 3. End to end", "## 4. Ranks and ranking queries")  # fmt: skip
    for heading in headings:
        assert heading in report
    assert "Smoke run" in report
    assert ("## Before and after" in report) == bool(befores)
    for before in befores:  # each earlier commit is named, with what changed after it
        commit = json.loads(Path(before).read_text())["commit"]
        assert f"- after `{commit}`" in report
        assert "(not described)" not in report
