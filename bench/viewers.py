"""A load generator of SSE viewers: many connections in one process, one epoll loop.

    python -m bench.viewers --url http://127.0.0.1:8001/events --count 5000 --sample 100
    python -m bench.viewers --url 'http://127.0.0.1:8001/boards/b{board}/events' --boards 100 --count 5000

With --boards N, viewer i watches board i mod N (`{board}` in the URL).

Prints `ready` once every viewer has its first frame, then keeps reading.
Commands on stdin, one per line:
  `mark`             start a round: forget the frames recorded so far, and the CPU used;
  `final <version>`  wait (up to --settle seconds) until every viewer has that version,
                     then print one JSON line with the round's results;
  `finals <v0,v1,..>` the same, one final version per board;
  `quit`             close everything and exit.

Every --sample-th viewer reads as soon as data arrives (epoll) and records,
per frame, when it arrived and the `ts` (Redis time of the PUBLISH) and `top`
in it, so latencies can be computed afterwards. The others are read in a
sweep every --sweep seconds and only track the last `id:` they saw: the
server writes to every socket all the same (the kernel keeps what a sweep has
not read yet), but the generator spends a fraction of the CPU, so it is not
the bottleneck. It reports its own CPU time.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tests.sse_client import ChunkedDecoder


@dataclass
class Viewer:
    sock: socket.socket
    sampled: bool
    board: int = 0
    status: int | None = None
    version: int = 0
    head: bytes = b""
    tail: bytes = b""  # the end of the previous read, for an `id:` line cut in two
    body: bytes = b""  # sampled viewers: decoded stream bytes not parsed yet
    chunks: ChunkedDecoder = field(default_factory=ChunkedDecoder)
    frames: list[tuple[float, int, float, list[list[str]]]] = field(default_factory=list)
    closed: bool = False


def _parse_sampled(viewer: Viewer, now: float) -> None:
    """Pull whole SSE events out of a sampled viewer's bytes (chunk framing stripped)."""
    while True:
        end = viewer.body.find(b"\n\n")
        if end < 0:
            return
        event, viewer.body = viewer.body[:end], viewer.body[end + 2 :]
        data = version = None
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].strip()
            elif line.startswith(b"id:"):
                version = int(line[3:].strip())
        if data is not None and version is not None:
            message = json.loads(data)
            viewer.frames.append((now, version, float(message["ts"]), message["top"]))
            viewer.version = max(viewer.version, version)


class Crowd:
    def __init__(self, url: str, count: int, sample_every: int, sweep_seconds: float = 0.5, boards: int = 1) -> None:
        self.sweep_seconds = sweep_seconds
        self.last_sweep = 0.0
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.requests = [
            f"GET {(parts.path or '/').replace('{board}', str(board))} HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode()
            for board in range(boards)
        ]
        self.count = count
        self.sample_every = sample_every
        self.selector = selectors.DefaultSelector()
        self.viewers: list[Viewer] = []
        self.refused = 0

    def connect(self, batch: int = 250, wait_for_frames: bool = True) -> None:
        """Open the connections a batch at a time, so the server's listen backlog never overflows.

        With `wait_for_frames`, each batch waits for its first frames (a server that sends
        nothing until the first change, like flask-sse, cannot be waited for that way).
        """
        for start in range(0, self.count, batch):
            for index in range(start, min(start + batch, self.count)):
                sock = socket.create_connection(self.address, timeout=30)
                board = index % len(self.requests)
                sock.sendall(self.requests[board])
                sock.setblocking(False)
                viewer = Viewer(sock, sampled=self.sample_every > 0 and index % self.sample_every == 0, board=board)
                self.viewers.append(viewer)
                if viewer.sampled:
                    self.selector.register(sock, selectors.EVENT_READ, viewer)
            deadline = time.monotonic() + (30 if wait_for_frames else 0)
            while time.monotonic() < deadline and any(v.version == 0 and not v.closed for v in self.viewers[start:]):
                self.pump(0.05)
                self.sweep()

    def pump(self, seconds: float) -> None:
        """Read the sampled viewers as data comes, and sweep the others on schedule."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            for key, _ in self.selector.select(timeout=min(remaining, 0.05)):
                self._read(key.data)
            if time.monotonic() - self.last_sweep >= self.sweep_seconds:
                self.sweep()

    def sweep(self) -> None:
        self.last_sweep = time.monotonic()
        for viewer in self.viewers:
            if not viewer.sampled and not viewer.closed:
                self._read(viewer)

    def _read(self, viewer: Viewer) -> None:
        try:
            data = viewer.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        now = time.time()
        if not data:
            viewer.closed = True
            if viewer.sampled:
                self.selector.unregister(viewer.sock)
            viewer.sock.close()
            return
        if viewer.status is None:
            viewer.head += data
            if b"\r\n\r\n" not in viewer.head:
                return
            head, data = viewer.head.split(b"\r\n\r\n", 1)
            viewer.status = int(head.split(b" ", 2)[1])
            viewer.head = b""
        if viewer.sampled:
            viewer.body += viewer.chunks.feed(data)
            _parse_sampled(viewer, now)
            return
        window = viewer.tail + data
        last = window.rfind(b"\nid:")  # the newest `id:` line is all these viewers need
        if last >= 0:
            end = window.find(b"\n", last + 4)
            if end > 0:
                viewer.version = max(viewer.version, int(window[last + 4 : end]))
        viewer.tail = window[-64:]

    def mark(self) -> float:
        for viewer in self.viewers:
            viewer.frames.clear()
        return cpu_now()

    def results(self, cpu_at_ready: float) -> dict[str, Any]:
        return {
            "viewers": len(self.viewers),
            "open": sum(1 for v in self.viewers if not v.closed),
            "versions": [v.version for v in self.viewers],
            "boards": [v.board for v in self.viewers],
            "sampled": [[list(frame) for frame in v.frames] for v in self.viewers if v.sampled],
            "cpu_seconds": cpu_now() - cpu_at_ready,  # since the round began
        }


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--sample", type=int, default=100, help="every Nth viewer records its frames (0: none)")
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--boards", type=int, default=1, help="spread the viewers over this many boards ({board})")
    parser.add_argument(
        "--ready", choices=["frame", "connected"], default="frame", help="when to say ready: first frames, or connected"
    )
    args = parser.parse_args()
    crowd = Crowd(args.url, args.count, args.sample, boards=args.boards)
    started = time.monotonic()
    crowd.connect(wait_for_frames=args.ready == "frame")
    print(f"ready {time.monotonic() - started:.2f}", flush=True)
    round_began = crowd.mark()
    selector_in = selectors.DefaultSelector()
    selector_in.register(sys.stdin, selectors.EVENT_READ)
    while True:
        crowd.pump(0.2)
        if not selector_in.select(timeout=0):
            continue
        command = sys.stdin.readline().split()
        if not command or command[0] == "quit":
            break
        if command[0] == "mark":
            round_began = crowd.mark()
        elif command[0] in ("final", "finals"):
            finals = [int(v) for v in command[1].split(",")] if command[0] == "finals" else [int(command[1])]
            deadline = time.monotonic() + args.settle
            while time.monotonic() < deadline and any(
                v.version < finals[v.board % len(finals)] and not v.closed for v in crowd.viewers
            ):
                crowd.pump(0.1)
                crowd.sweep()
            print(json.dumps(crowd.results(round_began)), flush=True)


if __name__ == "__main__":
    main()
