"""make demo: a dozen players sending random scores through the real `POST /score`.

Mints each player a token the way `flask token` does (same settings, read from
the environment), then submits a few scores a second, at random times, to the
Increment Service until `--count` submissions or Ctrl-C. Prints one line per
submission.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import requests

# Run as a file (python scripts/demo.py): `app` and `config` live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PLAYERS = ("ada", "grace", "linus", "guido", "alan", "ken", "barbara", "dennis", "frances", "bjarne", "radia", "tim")


def mint_tokens(players: Sequence[str], lifetime: timedelta) -> dict[str, str]:
    """A bearer token per player, signed with the Increment Service's own settings."""
    from app import create_increment_app
    from app.auth import mint_token

    with create_increment_app().app_context():
        return {player: mint_token(player, lifetime) for player in players}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the Increment Service")
    parser.add_argument("--players", type=int, default=12, choices=range(1, len(PLAYERS) + 1), metavar="1-12")
    parser.add_argument("--rate", type=float, default=3.0, help="submissions per second, on average")
    parser.add_argument("--count", type=int, default=2000, help="stop after this many submissions")
    args = parser.parse_args()

    players = PLAYERS[: args.players]
    # Some players are better than others, so the board has a shape and ranks move.
    skill = {player: random.uniform(0.3, 1.0) for player in players}
    tokens = mint_tokens(players, lifetime=timedelta(seconds=args.count / args.rate + 3600))
    session = requests.Session()
    print(f"{len(players)} players, ~{args.rate:g} scores/s to {args.url}/score, {args.count} at most; Ctrl-C stops.")
    try:
        for _ in range(args.count):
            player = random.choices(players, weights=[skill[p] for p in players])[0]
            score = max(1, round(random.gauss(300, 120) * skill[player]))
            submit(session, args.url, tokens[player], player, score)
            time.sleep(random.expovariate(args.rate))
    except KeyboardInterrupt:
        print("\nStopped.")
    return 0


def submit(session: requests.Session, url: str, token: str, player: str, score: int) -> None:
    """One submission; a failure is printed and the demo goes on (the service may be restarting)."""
    try:
        response = session.post(
            f"{url}/score", json={"score": score}, headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
    except requests.RequestException as error:
        print(f"{player:>9} +{score:<4} failed: {error.__class__.__name__}")
        time.sleep(1)
        return
    if response.status_code != 200:
        print(f"{player:>9} +{score:<4} refused: {response.status_code} {response.text.strip()}")
        return
    body = response.json()
    rank = body["rank"] if body["rank"] is not None else "-"
    print(f"{player:>9} +{score:<4} total {body['score']:>7}  rank {rank}")


if __name__ == "__main__":
    sys.exit(main())
