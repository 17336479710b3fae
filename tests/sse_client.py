"""A small Server-Sent Events client for tests: many viewers, one thread.

Each `Viewer` is a raw socket speaking HTTP/1.1, so the tests see exactly what
a browser's EventSource would: status, headers, chunked framing, `retry:`,
`id:`, `data:` and comment lines. `Swarm` drives hundreds of them with one
selector, so a test can hold many viewers open without threads.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Event:
    """One dispatched SSE event, or a comment (`comment` set, nothing else)."""

    id: str | None = None
    data: str | None = None
    retry: int | None = None
    comment: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data) if self.data is not None else None


class ChunkedDecoder:
    """Incremental decoder for `Transfer-Encoding: chunked`."""

    def __init__(self) -> None:
        self._buffer = b""
        self._state = "size"
        self._remaining = 0
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while not self.finished:
            if self._state == "size":
                line_end = self._buffer.find(b"\r\n")
                if line_end < 0:
                    break
                self._remaining = int(self._buffer[:line_end].split(b";")[0], 16)
                self._buffer = self._buffer[line_end + 2 :]
                self.finished = self._remaining == 0
                self._state = "data"
            elif self._state == "data":
                if not self._buffer:
                    break
                take = self._buffer[: self._remaining]
                out += take
                self._buffer = self._buffer[len(take) :]
                self._remaining -= len(take)
                if self._remaining == 0:
                    self._state = "crlf"
            else:
                if len(self._buffer) < 2:
                    break
                self._buffer = self._buffer[2:]
                self._state = "size"
        return bytes(out)


@dataclass
class Viewer:
    """One EventSource-like connection."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    receive_buffer: int | None = None
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.sock = socket.socket()
        if self.receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect((parts.hostname, parts.port))
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.sock.setblocking(False)
        self._raw = b""
        self._body = b""
        self._chunked: ChunkedDecoder | None = None
        self._pending = Event()

    # -- reading -----------------------------------------------------------

    def read_available(self) -> None:
        """Read whatever the socket has now and parse it."""
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except (ConnectionResetError, OSError):
                self._close()
                return
            if not data:
                self._close()
                return
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self.status is None:
            self._raw += data
            head_end = self._raw.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head, data = self._raw[:head_end].decode("latin-1"), self._raw[head_end + 4 :]
            status_line, *header_lines = head.split("\r\n")
            self.status = int(status_line.split()[1])
            for line in header_lines:
                name, _, value = line.partition(":")
                self.response_headers[name.strip().lower()] = value.strip()
            if self.response_headers.get("transfer-encoding") == "chunked":
                self._chunked = ChunkedDecoder()
        if self._chunked is not None:
            data = self._chunked.feed(data)
        self._body += data
        self._parse_lines()

    def _parse_lines(self) -> None:
        while b"\n" in self._body:
            line, self._body = self._body.split(b"\n", 1)
            text = line.decode().rstrip("\r")
            if text == "":
                if self._pending.data is not None or self._pending.retry is not None or self._pending.id is not None:
                    self.events.append(self._pending)
                self._pending = Event()
            elif text.startswith(":"):
                self.events.append(Event(comment=text[1:].strip()))
            else:
                name, _, value = text.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    self._pending.data = value if self._pending.data is None else f"{self._pending.data}\n{value}"
                elif name == "id":
                    self._pending.id = value
                elif name == "retry":
                    self._pending.retry = int(value)

    def _close(self) -> None:
        self.closed = True
        self.sock.close()

    def close(self) -> None:
        if not self.closed:
            self._close()

    # -- what a test asks --------------------------------------------------

    @property
    def frames(self) -> list[Event]:
        return [event for event in self.events if event.data is not None]

    @property
    def versions(self) -> list[int]:
        return [int(event.id) for event in self.frames if event.id is not None]

    @property
    def last_version(self) -> int | None:
        versions = self.versions
        return versions[-1] if versions else None

    @property
    def comments(self) -> list[str]:
        return [event.comment for event in self.events if event.comment is not None]


class Swarm:
    """Many viewers, pumped from one thread with a selector."""

    def __init__(self, viewers: Iterable[Viewer] = ()) -> None:
        self.selector = selectors.DefaultSelector()
        self.viewers: list[Viewer] = []
        for viewer in viewers:
            self.add(viewer)

    @classmethod
    def connect(cls, url: str, count: int, headers: dict[str, str] | None = None) -> Swarm:
        return cls(Viewer(url, dict(headers or {})) for _ in range(count))

    def add(self, viewer: Viewer) -> Viewer:
        self.viewers.append(viewer)
        self.selector.register(viewer.sock, selectors.EVENT_READ, viewer)
        return viewer

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and self.open:
            for key, _ in self.selector.select(timeout=min(remaining, 0.05)):
                viewer: Viewer = key.data
                viewer.read_available()
                if viewer.closed:
                    self.selector.unregister(key.fileobj)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.pump(0.05)
        return predicate()

    @property
    def open(self) -> list[Viewer]:
        return [viewer for viewer in self.viewers if not viewer.closed]

    def close(self) -> None:
        for viewer in self.viewers:
            if not viewer.closed:
                self.selector.unregister(viewer.sock)
                viewer.close()
        self.selector.close()
