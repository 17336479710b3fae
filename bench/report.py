"""BENCHMARKS.md from the figures of one `make bench` run (bench/results.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FLOORS = "at least 1,200 POST /score per second with p99 at most 150 ms at 64 connections"


def _ms(us: float) -> str:
    return f"{us / 1000:.1f}"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _transport_medians(transports: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per rate: each transport's median p99 over its rounds, and whether every viewer reached the final."""
    return {
        rate: {
            **{transport: _median([run["p99_ms"] for run in runs]) for transport, runs in by_transport.items()},
            "all_final": all(run["at_final"] == run["viewers"] for runs in by_transport.values() for run in runs),
        }
        for rate, by_transport in transports["rates"].items()
    }


def _rounds(run: dict[str, Any]) -> str:
    """Every run's throughput of one side, in the order they ran."""
    return ", ".join(f"{rps:,.0f}" for rps in run.get("rounds_rps", [run["rps"]]))


def _floors(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    writes = {row["connections"]: row for row in results.get("writes", {}).get("rows", [])}
    if 64 in writes:
        ours = writes[64]["ours"]
        rows.append(
            (
                "≥ 1,200 POST/s, p99 ≤ 150 ms at 64 connections",
                f"{ours['rps']:,.0f}/s, p99 {_ms(ours['p99_us'])} ms",
                ours["rps"] >= 1200 and ours["p99_us"] <= 150_000,
            )
        )
    floor = [r for r in results.get("fanout", []) if r["viewers"] == 10_000 and r["rate"] == 5.0]
    if floor:
        row = floor[0]
        rows.append(
            (
                "10,000 viewers on one worker, p99 ≤ 500 ms at 5 changes/s, all at the final version",
                f"p99 {row['p99_ms']:.0f} ms, {row['at_final']:,}/{row['viewers']:,} at final",
                row["p99_ms"] <= 500 and row["at_final"] == row["viewers"],
            )
        )
    fanout = results.get("fanout", [])
    if fanout:
        connections = {row["redis_connections"] for row in fanout}
        rows.append(
            (
                "Redis connections independent of the number of viewers",
                f"{sorted(connections)} for {sorted({r['viewers'] for r in fanout})} viewers",
                len(connections) == 1,
            )
        )
        worst = max(row["rss_per_viewer_kb"] for row in fanout)
        rows.append(("≤ 40 KB RSS per idle viewer", f"at most {worst:.1f} KB", worst <= 40))
    if "end_to_end" in results:
        e2e = results["end_to_end"]
        rows.append(("end to end p99 ≤ 300 ms", f"p99 {e2e['p99_ms']:.0f} ms", e2e["p99_ms"] <= 300))
    if "spread_writes" in results:
        spread = results["spread_writes"]
        rows.append(
            (
                f"writes over {spread['boards']:,} boards within 10% of one board's, {spread['connections']} connections",
                f"medians {spread['spread_median']:,.0f}/s against {spread['single_median']:,.0f}/s:"
                f" {spread['ratio']:.2f}",
                spread["ratio"] >= 0.9,
            )
        )
    if "log_writes" in results:
        log = results["log_writes"]
        rows.append(
            (
                f"writes with the change log within 10% of without, {log['connections']} connections",
                f"medians {log['on_median']:,.0f}/s against {log['off_median']:,.0f}/s: {log['ratio']:.2f}",
                log["ratio"] >= 0.9,
            )
        )
    transports = results.get("transports")
    if transports:
        compared = _transport_medians(transports)
        rows.append(
            (
                f"fan-out with BOARD_TRANSPORT=streams within 10% of pubsub at {transports['viewers']:,} viewers"
                " (median p99 of alternating rounds, each rate), every viewer at the final version",
                "; ".join(
                    f"{rate}/s: {m['streams']:.0f} ms against {m['pubsub']:.0f} ms" for rate, m in compared.items()
                ),
                all(m["streams"] <= 1.1 * m["pubsub"] and m["all_final"] for m in compared.values()),
            )
        )
    if "board_crowd" in results:
        crowd = results["board_crowd"]
        rows.append(
            (
                f"{crowd['viewers']:,} viewers over {crowd['boards']} boards on one worker, {crowd['rate']:g} changes/s"
                " in all: p99 ≤ 250 ms, every viewer at its board's final version",
                f"p99 {crowd['p99_ms']:.0f} ms, {crowd['at_final']:,}/{crowd['viewers']:,} at final",
                crowd["p99_ms"] <= 250 and crowd["at_final"] == crowd["viewers"],
            )
        )
    if "ranks" in results:
        ranks = results["ranks"]
        for query, result in ranks.get("queries", {"rank": ranks}).items():
            runs = [result, *([result["backlog"]] if "backlog" in result else [])]
            worst = max(run["p99_us"] for run in runs)
            errors = sum(run["status_errors"] for run in runs)
            rows.append(
                (
                    f"{RANK_QUERY_NAMES.get(query, query)} on {ranks['users']:,} users: p99 ≤ 20 ms"
                    " (the worse of a fresh index and one with changes waiting)",
                    f"p99 {' and '.join(_ms(run['p99_us']) for run in runs)} ms, {errors} not 2xx",
                    worst <= 20_000 and errors == 0,
                )
            )
    return rows


RANK_QUERY_NAMES = {
    "rank": "a user's rank (`/leaderboard/users/<id>`)",
    "page": "a page (`?offset=&limit=10`)",
    "around": "around a user (`?around=&limit=10`)",
    "friends": "100 friends (`?users=`)",
}


def _per_write(run: dict[str, Any], cpu: str) -> str:
    """CPU milliseconds per request, or a dash for a run that did not measure it."""
    return f"{run[cpu] / run['rps'] * 1000:.2f}" if cpu in run and run["rps"] else "-"


# What changed after each earlier commit that `make bench` compares with, up to the next one (or now).
CHANGES_SINCE = {
    "ebefbd7": "the write path became fixed SQL on the pooled DBAPI connection, one statement in autocommit on"
    " PostgreSQL (`app/submissions.py`; SQLAlchemy's statement building cost more CPU than the rest of the"
    " request), the PostgreSQL pool became a fixed set (overflow connections were opened and closed per"
    " request under load), the rank count on the write path became an ordered index walk that stops at N (it"
    " had been planned as a bitmap scan over every row ahead, dead ones included), requests get a database"
    " connection in the order they came (`app.sql.FairGate`: the pool let newcomers jump the line, which made"
    " the p99), the rate limit went from two windows to one, and fan-out moved from one greenlet per viewer"
    " writing through gunicorn to the hub writing each frame to every socket without blocking"
    " (`app/board/hub.py`).",
    "72b1908": "group commit: the submissions without an Idempotency-Key that a worker holds at once are"
    " recorded in one statement and one commit, and applied to Redis in one script call that still publishes"
    " a message per submission (`app/batching.py`, `app.leaderboard.commit_submissions`).",
}


def _before_and_after(befores: list[dict[str, Any]], after: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Before and after: the hot paths rewritten",
        "",
        "Earlier commits measured with this same harness, on this machine, shortly before this run (the",
        "machine's speed varies from day to day, so only runs of one sitting compare). The reference app is the",
        "same code in every run, but it takes the service's engine settings, so pool and connection changes",
        "move it too. What changed after each:",
        "",
    ]
    for before in befores:
        commit = before.get("commit", "?")
        lines.append(
            f"- after `{commit}` (measured {before['started']}): {CHANGES_SINCE.get(commit, '(not described)')}"
        )
    lines += ["", "Where a write's time goes now: `docs/write-path-profile.md`.", ""]
    runs = [*befores, after]
    by_connections = [{row["connections"]: row for row in run.get("writes", {}).get("rows", [])} for run in runs]
    connections = [c for c in by_connections[-1] if all(c in rows for rows in by_connections)]
    if connections:
        names = [f"`{run.get('commit', '?')}`" for run in befores] + ["now"]
        lines += [
            "| connections | "
            + " | ".join(f"{name} req/s, p99 ms" for name in names)
            + " | now / "
            + " | now / ".join(names[:-1])
            + " | reference req/s, in the same order |",
            "|---|" + "---|" * (2 * len(names)),
        ]
        for c in connections:
            rows = [rows[c] for rows in by_connections]
            now = rows[-1]["ours"]["rps"]
            lines.append(
                f"| {c} | "
                + " | ".join(f"{row['ours']['rps']:,.0f}, {_ms(row['ours']['p99_us'])}" for row in rows)
                + " | "
                + " | ".join(f"{now / row['ours']['rps']:.2f}" for row in rows[:-1])
                + " | "
                + " / ".join(f"{row['reference']['rps']:,.0f}" for row in rows)
                + " |"
            )
        lines.append("")
    for before in befores:
        before_fanout = {(row["viewers"], row["rate"]): row for row in before.get("fanout", [])}
        rows = [row for row in after.get("fanout", []) if (row["viewers"], row["rate"]) in before_fanout]
        if not rows:
            continue
        lines += [
            f"Fan-out, `{before.get('commit', '?')}` and now:",
            "",
            "| viewers | changes/s | before p50 ms | before p99 ms | after p50 ms | after p99 ms | before worker CPU | after worker CPU |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            old = before_fanout[row["viewers"], row["rate"]]
            lines.append(
                f"| {row['viewers']:,} | {row['rate']:g} | {old['p50_ms']:.0f} | {old['p99_ms']:.0f} |"
                f" {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {old['server_cpu']:.2f} | {row['server_cpu']:.2f} |"
            )
        lines.append("")
    return lines


def write_report(
    results: dict[str, Any], path: Path, command: str, befores: list[dict[str, Any]] | None = None
) -> None:
    machine = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`{command}`) on {results['started']}, in {results['seconds']:.0f} s."
        + (" **Smoke run: tiny sizes, not figures to quote.**" if results.get("smoke") else ""),
        "Every comparison below ran side by side in this one run; the machine is shared and noisy, so",
        "quote ratios and medians, and rerun before drawing fine conclusions.",
        "",
        "## Machine",
        "",
        f"- {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, Linux {machine['kernel']}",
        f"- Python {machine['python']}; {machine['postgresql']}; {machine['redis']}; {machine['wrk']}",
        f"- file descriptors per process: {machine['fd_limit']}; PostgreSQL synchronous_commit:"
        f" {results.get('synchronous_commit')}, autovacuum: {results.get('autovacuum')}"
        + (" (so nothing is vacuumed or analyzed during the run)" if results.get("autovacuum") == "off" else ""),
        "- The load generators run on the same two cores as the services, PostgreSQL and Redis.",
        "",
        "## Floors",
        "",
        "| floor | measured | met |",
        "|---|---|---|",
    ]
    for name, measured, met in _floors(results):
        lines.append(f"| {name} | {measured} | {'yes' if met else '**no**'} |")

    writes = results.get("writes")
    if writes:
        lines += [
            "",
            "## 1. Writes: `POST /score`",
            "",
            f"wrk, 2 threads, {writes['seconds']} s per run after 2 s of warm-up, {writes.get('rounds', 1)} runs of each"
            " service per connection count, alternating which goes first; each row shows each service's run of"
            f" median throughput, the ratio is of the two medians, and the last column has every run. {writes['users']:,} distinct users'"
            ' tokens (each thread walks the list from a start of its own), `{"score": 1}`; before the first run,'
            " every token is sent once to each service (a deployment's clients send a token with many writes, so"
            " a service in use has seen it). Both services under gunicorn with",
            "gevent, one worker per core. *Reference* is `bench/reference_app.py`: the same JWT check, the same SQL",
            "upsert and the same Redis script, and nothing else (no validation, idempotency, rank, rate limit,",
            "metrics). Server CPU is both workers together (2.0 = two cores); PostgreSQL's is all its processes',",
            "per write; wrk's own CPU beside them. wrk gives up on a request after 2 s and leaves it out of the",
            "latencies: such timeouts are counted apart.",
            "",
            "| connections | ours req/s | p50 ms | p99 ms | reference req/s | p50 ms | p99 ms | ours / reference | server CPU (ours / ref) | PostgreSQL CPU ms per write (ours / ref) | wrk CPU | errors (ours / ref) | timeouts (ours / ref) | every run, req/s (ours; ref) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in writes["rows"]:
            ours, ref = row["ours"], row["reference"]
            errors = [run["status_errors"] + run["connect_errors"] + run["read_errors"] for run in (ours, ref)]
            lines.append(
                f"| {row['connections']} | {ours['rps']:,.0f} | {_ms(ours['p50_us'])} | {_ms(ours['p99_us'])} |"
                f" {ref['rps']:,.0f} | {_ms(ref['p50_us'])} | {_ms(ref['p99_us'])} | {row['ratio']:.2f} |"
                f" {ours['server_cpu']:.2f} / {ref['server_cpu']:.2f} |"
                f" {_per_write(ours, 'postgres_cpu')} / {_per_write(ref, 'postgres_cpu')} | {ours['generator_cpu']:.2f} |"
                f" {errors[0]} / {errors[1]} | {ours['timeouts']} / {ref['timeouts']} |"
                f" {_rounds(ours)}; {_rounds(ref)} |"
            )
        lines += ["", f"Command: `{writes['rows'][0]['ours']['command']}`"]
    spread = results.get("spread_writes")
    if spread:
        lines += [
            "",
            f"### Writes spread over {spread['boards']:,} boards",
            "",
            f"The same service and tokens, {spread['connections']} connections: `POST /boards/<one of"
            f" {spread['boards']:,}>/score` (`bench/wrk/boards.lua`: each user always on the same board, so as many"
            " rows are changed as on one board), alternating with `POST /score` on the default"
            f" board ({len(spread['spreads'])} runs over many boards, {len(spread['singles'])} on one board, the first"
            " being the table's above)."
            f" {spread['boards_written']:,} boards got writes; the boards were made as `PUT /admin/boards` makes them.",
            "",
            "| run | req/s | p50 ms | p99 ms | worker CPU ms per write | PostgreSQL CPU ms per write | errors |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {run['rps']:,.0f} | {_ms(run['p50_us'])} | {_ms(run['p99_us'])} |"
                f" {_per_write(run, 'server_cpu')} | {_per_write(run, 'postgres_cpu')} |"
                f" {run['status_errors'] + run['connect_errors'] + run['read_errors'] + run['timeouts']} |"
                for name, run in [
                    *((f"one board #{i + 1}", run) for i, run in enumerate(spread["singles"])),
                    *((f"{spread['boards']:,} boards #{i + 1}", run) for i, run in enumerate(spread["spreads"])),
                ]
            ),
            "",
            f"Medians: {spread['spread_median']:,.0f}/s spread, {spread['single_median']:,.0f}/s on one board:"
            f" {spread['ratio']:.2f}.",
        ]

    log = results.get("log_writes")
    if log:
        lines += [
            "",
            "### The change log on and off",
            "",
            f"The same service and tokens, {log['connections']} connections, `POST /score`: as deployed (every"
            " change appended to the board's change log by the Lua script) against a second instance with"
            f" `CHANGES_RETAIN=0`, alternating ({len(log['on'])} runs on, the first being the table's above;"
            f" {len(log['off'])} off).",
            "",
            "| run | req/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {run['rps']:,.0f} | {_ms(run['p50_us'])} | {_ms(run['p99_us'])} |"
                f" {run['status_errors'] + run['connect_errors'] + run['read_errors'] + run['timeouts']} |"
                for name, run in [
                    *((f"log on #{i + 1}", run) for i, run in enumerate(log["on"])),
                    *((f"log off #{i + 1}", run) for i, run in enumerate(log["off"])),
                ]
            ),
            "",
            f"Medians: {log['on_median']:,.0f}/s on, {log['off_median']:,.0f}/s off: {log['ratio']:.2f}.",
        ]

    def fanout_table(rows: list[dict[str, Any]]) -> list[str]:
        table = [
            "| viewers | changes/s | p50 ms | p99 ms | frames timed | at final version | RSS per idle viewer | Redis connections | worker CPU | generator CPU |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            table.append(
                f"| {row['viewers']:,} | {row['rate']:g} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} |"
                f" {row['frames_timed']:,} | {row['at_final']:,} of {row['viewers']:,} |"
                f" {row['rss_per_viewer_kb']:.1f} KB | {row['redis_connections']} | {row['server_cpu']:.2f} |"
                f" {row['generator_cpu']:.2f} |"
            )
        return table

    if results.get("fanout"):
        lines += [
            "",
            "## 2. Fan-out: viewers on one board worker",
            "",
            "One gunicorn gevent worker. `bench.viewers` processes hold the connections (at most 5,000 each, one epoll",
            "loop each); about 200 of the viewers time every frame they get: from the `ts` in the frame (Redis time",
            "of the PUBLISH) to its arrival. The board changes through the real Lua script at the given rate for",
            f"{results['fanout'][0].get('seconds', '')} the stage; afterwards every viewer must reach the final version.",
            "RSS per idle viewer: the worker's RSS with the crowd connected and idle, minus before, divided by the crowd.",
            "Worker CPU: 1.0 is one core, busy. Generator CPU: the viewer processes together.",
            "",
            "### Ours",
            "",
            *fanout_table(results["fanout"]),
        ]
    transports = results.get("transports")
    if transports:
        lines += [
            "",
            "### Pub/Sub against streams (`BOARD_TRANSPORT`)",
            "",
            f"Two workers, one of each transport, {transports['viewers']:,} viewers on each (on a board of its own),"
            " both crowds connected throughout; the boards change in turn, one round of"
            f" {transports['seconds']:g} s per transport and rate, the order swapped every round. p99 ms of each round:",
            "",
            "| changes/s | pubsub p99 ms | streams p99 ms | median pubsub | median streams | streams / pubsub |",
            "|---|---|---|---|---|---|",
        ]
        for rate, medians in _transport_medians(transports).items():
            runs = transports["rates"][rate]
            pubsub_runs = ", ".join(f"{run['p99_ms']:.0f}" for run in runs["pubsub"])
            streams_runs = ", ".join(f"{run['p99_ms']:.0f}" for run in runs["streams"])
            lines.append(
                f"| {rate} | {pubsub_runs} | {streams_runs} | {medians['pubsub']:.0f} |"
                f" {medians['streams']:.0f} | {medians['streams'] / max(medians['pubsub'], 1e-9):.2f} |"
            )
    if results.get("board_crowd"):
        crowd = results["board_crowd"]
        lines += [
            "",
            f"### Many boards: {crowd['viewers']:,} viewers over {crowd['boards']} boards on one worker",
            "",
            f"Viewer i watches board i mod {crowd['boards']} (`/boards/<id>/events`); the boards change in turn,"
            f" {crowd['rate']:g} changes a second in all, each a real submission (SQL, then the Lua script).",
            "Every viewer must reach its own board's final version; the worker holds one Redis subscription",
            "connection for all the boards.",
            "",
            *fanout_table([crowd]),
        ]
    if results.get("flask_sse"):
        lines += [
            "",
            "### flask-sse (same machine, same run)",
            "",
            "flask-sse 1.0.0 from PyPI as its README sets it up (`bench/flask_sse_app.py`): one Redis connection and",
            "subscription per viewer. Fed the same messages at the same rates on its own channel. Not run at 10,000",
            "viewers: that needs 10,000 Redis connections, the server's `maxclients` (the same shared Redis serves us).",
            "",
            *fanout_table(results["flask_sse"]),
        ]
    if "end_to_end" in results:
        e2e = results["end_to_end"]
        lines += [
            "",
            "## 3. End to end",
            "",
            f"{e2e['viewers']:,} viewers on one board worker, `bench.writer` sending {e2e['rate']:g} `POST /score` a second",
            f"(open loop; achieved {e2e['achieved_rate']:.0f}/s, {e2e['accepted']:,} accepted, failed: {e2e['failed'] or 'none'})"
            " for 50 players on a top 50, so every write changes the board. Latency: from sending the POST to the",
            f"first frame at a timing viewer that shows the new total ({e2e['samples']:,} samples).",
            "",
            "| p50 ms | p99 ms | viewers at final version | writer CPU s | viewers CPU s |",
            "|---|---|---|---|---|",
            f"| {e2e['p50_ms']:.0f} | {e2e['p99_ms']:.0f} | {e2e['at_final']:,} of {e2e['viewers']:,} |"
            f" {e2e['writer_cpu_seconds']:.1f} | {e2e['viewers_cpu_seconds']:.1f} |",
        ]
    if "ranks" in results:
        ranks = results["ranks"]
        queries = ranks.get("queries", {"rank": ranks})
        lines += [
            "",
            "## 4. Ranks and ranking queries",
            "",
            f"A board of {ranks['users']:,} users (bulk-loaded in {ranks['load_seconds']:.0f} s with the trigger off,"
            f" then `flask compact-ranks`: {ranks['compaction']}), wrk with 4 connections for"
            f" {ranks['duration_us'] / 1e6:.0f} s per query against the board service (one worker per core),"
            " `bench/wrk/rank.lua`: random users; pages at random offsets, a twentieth of them past the end;",
            "windows of 10 around a random user; friends lists of 100 ids of which a tenth have no score.",
            "",
            "| query | requests/s | p50 ms | p90 ms | p99 ms | errors | one at a time: p50 ms | p99 ms |"
            f" {ranks.get('changes_waiting', 0):,} changes waiting: req/s | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {RANK_QUERY_NAMES.get(query, query)} | {run['rps']:,.0f} | {_ms(run['p50_us'])} |"
                f" {_ms(run['p90_us'])} | {_ms(run['p99_us'])} | {run['status_errors'] + run['timeouts']} |"
                + (
                    f" {_ms(run['alone']['p50_us'])} | {_ms(run['alone']['p99_us'])} |"
                    if "alone" in run
                    else " - | - |"
                )
                + (
                    f" {run['backlog']['rps']:,.0f} | {_ms(run['backlog']['p50_us'])} | {_ms(run['backlog']['p99_us'])} |"
                    if "backlog" in run
                    else " - | - | - |"
                )
                for query, run in queries.items()
            ),
            "",
            "The floors are read at 4 connections, where the two cores are saturated (wrk, the workers and",
            "PostgreSQL share them) and a query waits behind the others; one at a time shows a query's own time.",
            "The changes waiting are made by one UPDATE after the other runs, and served by a board service",
            "started after it (one that has run for a minute compacts a board at the first change it sees):"
            f" {ranks.get('changes_waiting_at_the_end', '?')} of them were still waiting at the end.",
        ]
    if befores:
        lines += _before_and_after(befores, results)
    lines += [
        "",
        "The figures are also in `bench/results.json`"
        + (" (and the earlier commits' in `bench/before/`)." if befores else "."),
        "",
    ]
    path.write_text("\n".join(lines))
