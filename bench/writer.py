"""A paced writer for the end-to-end benchmark: POST /score at a fixed rate, open loop.

    python -m bench.writer --url http://127.0.0.1:8000 --tokens tokens.json --rate 200 --seconds 15

Sends on schedule whatever the answers do (a slow server does not slow the
load down), and prints one JSON line: for every accepted write, when it was
sent, for whom, and the total it produced; plus its own CPU time.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests


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
    local = threading.local()
    accepted: list[tuple[float, str, int]] = []
    failed: dict[str, int] = {}
    lock = threading.Lock()

    def send(user: str) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        sent = time.time()
        try:
            answer = local.session.post(
                f"{args.url}/score",
                json={"score": random.randint(1, 50)},
                headers={"Authorization": f"Bearer {tokens[user]}"},
                timeout=10,
            )
            outcome = str(answer.status_code)
        except requests.RequestException as exc:
            outcome = type(exc).__name__
        with lock:
            if outcome == "200":
                accepted.append((sent, user, answer.json()["score"]))
            else:
                failed[outcome] = failed.get(outcome, 0) + 1

    total = int(args.rate * args.seconds)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        for index in range(total):
            delay = started + index / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, users[index % len(users)])
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
