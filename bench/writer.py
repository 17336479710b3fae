"""A paced writer for the end-to-end benchmark: POST /score at a fixed rate, open loop.

    python -m bench.writer --url http://127.0.0.1:8000 --tokens tokens.json --rate 200 --seconds 15

Sends on schedule whatever the answers do (a slow server does not slow the
load down), from a few threads each holding a keep-alive connection
(http.client: light, so the writer is not the bottleneck), and prints one
JSON line: for every accepted write, when it was sent, for whom, and the
total it produced; plus its own CPU time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import random
import resource
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

THREADS = 16


def paced(count: int, rate: float) -> Iterator[int]:
    """Yield 0 .. count - 1, each at its own moment on a steady `rate` a second from now (open loop)."""
    started = time.monotonic()
    for index in range(count):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", required=True, help="JSON object: user id -> token")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    with open(args.tokens) as handle:
        tokens: dict[str, str] = json.load(handle)
    users = sorted(tokens)
    address = urlsplit(args.url)
    jobs: queue.Queue[str | None] = queue.Queue()
    accepted: list[tuple[float, str, int]] = []
    failed: dict[str, int] = {}
    lock = threading.Lock()

    def sender() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        while (user := jobs.get()) is not None:
            body = json.dumps({"score": random.randint(1, 50)})
            headers = {"Authorization": f"Bearer {tokens[user]}", "Content-Type": "application/json"}
            sent = time.time()
            try:
                connection.request("POST", "/score", body, headers)
                answer = connection.getresponse()
                payload = answer.read()
                outcome = str(answer.status)
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                outcome = type(exc).__name__
            with lock:
                if outcome == "200":
                    accepted.append((sent, user, json.loads(payload)["score"]))
                else:
                    failed[outcome] = failed.get(outcome, 0) + 1
        connection.close()

    threads = [threading.Thread(target=sender) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    for index in paced(int(args.rate * args.seconds), args.rate):
        jobs.put(users[index % len(users)])
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "accepted": accepted,
                "failed": failed,
                "seconds": time.monotonic() - started,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
