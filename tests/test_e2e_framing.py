"""Requests gunicorn itself must refuse (bad framing, oversized heads) and bodies that end early,
over raw sockets against the Increment Service under gunicorn, as deployed.

Every refusal is a JSON envelope with a 4xx, changes nothing, and costs one
warning line in the log (plus the access line), never a traceback.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import make_token
from tests.servers import GunicornServer

pytestmark = pytest.mark.e2e

BODY = b'{"score": 7}'  # 12 bytes


@pytest.fixture(scope="module")
def increment(base_env: dict[str, str], migrated: None) -> Iterator[GunicornServer]:
    # The access log on (to the server's log), as deployed: its lines must survive gunicorn's own answers.
    server = GunicornServer("wsgi_increment", base_env, workers=1, extra_args=["--access-logfile", "-"]).start()
    yield server
    assert server.stop() == 0, server.log()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        assert self.headers["content-type"] == "application/json", self.headers
        document = json.loads(self.body)
        assert set(document) == {"error"}
        assert set(document["error"]) == {"code", "message"}
        assert document["error"]["message"]
        return str(document["error"]["code"])


def exchange(server: GunicornServer, raw: bytes, *, hang_up: bool = False) -> Answer | None:
    """Send `raw`, half-close (or close at once with `hang_up`) and read the answer to the end.
    None when the connection ended without an answer."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(raw)
        if hang_up:
            sock.shutdown(socket.SHUT_RDWR)
            return None
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(65536):
            received += data
    except ConnectionResetError:
        return None
    finally:
        sock.close()
    if not received:
        return None
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert "content-length" in headers, head
    assert int(headers["content-length"]) == len(body), received
    return Answer(int(status_line.split()[1]), headers, body)


def request_head(*fields: str, user: str | None = "framing", target: str = "/score") -> bytes:
    """The head of a POST with a token for `user` (none for None) and `fields`."""
    lines = [
        f"POST {target} HTTP/1.1",
        "Host: 127.0.0.1",
        *([f"Authorization: Bearer {make_token(user)}"] if user else []),
        "Content-Type: application/json",
        *fields,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(*chunks: bytes, sizes: list[bytes] | None = None) -> bytes:
    sizes = sizes or [b"%x" % len(chunk) for chunk in chunks]
    return b"".join(size + b"\r\n" + chunk + b"\r\n" for size, chunk in zip(sizes, chunks, strict=True)) + b"0\r\n\r\n"


def recorded(board_state: Callable[[], Any]) -> dict[str, Any]:
    """What a submission writes: SQL rows and the board's entries in Redis. (The worker's keeper
    rebuilds the board wiped before each test at any moment, which bumps only its version.)"""
    return {key: value for key, value in board_state().items() if key not in ("version", "latest")}


class LogWatch:
    """The lines the server logged from here on."""

    def __init__(self, server: GunicornServer) -> None:
        self.server = server
        self.start = len(server.log())

    def lines(self) -> list[dict[str, Any]]:
        time.sleep(0.1)  # the worker logs before it answers, but give the file a moment
        text = self.server.log()[self.start :]
        assert "Traceback" not in text, text
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        # The keeper's own rebuilds of the board wiped before each test are not about the request.
        return [line for line in lines if line["logger"] != "app.keeper"]


def assert_logged_once(lines: list[dict[str, Any]], status: int) -> None:
    """One warning that says what was wrong, and the access line (when gunicorn got as far as a request)."""
    warnings = [line for line in lines if line["level"] != "INFO"]
    assert [line["level"] for line in warnings] == ["WARNING"], lines
    access = [line for line in lines if line["msg"] == "request"]
    assert len(access) <= 1, lines
    assert all(line["status"] == status for line in access), lines
    assert len(lines) == len(warnings) + len(access), lines


def test_a_well_framed_raw_request_is_recorded(increment: GunicornServer, board_state: Callable[[], Any]) -> None:
    answer = exchange(increment, request_head(f"Content-Length: {len(BODY)}") + BODY)
    assert answer is not None
    assert (answer.status, json.loads(answer.body)["score"]) == (200, 7)
    assert [row[1:3] for row in board_state()["scores"]] == [("framing", 7)]


BAD_FRAMING = {
    "Transfer-Encoding and Content-Length": request_head("Transfer-Encoding: chunked", "Content-Length: 12")
    + chunked(BODY),
    "two Content-Lengths": request_head("Content-Length: 12", "Content-Length: 12") + BODY,
    "Content-Length +12": request_head("Content-Length: +12") + BODY,
    "Content-Length -1": request_head("Content-Length: -1") + BODY,
    "Content-Length 0x0c": request_head("Content-Length: 0x0c") + BODY,
    "Transfer-Encoding chunked, identity": request_head("Transfer-Encoding: chunked, identity") + chunked(BODY),
    "chunk size -1": request_head("Transfer-Encoding: chunked") + chunked(BODY, sizes=[b"-1"]),
    "chunk size 0x0c": request_head("Transfer-Encoding: chunked") + chunked(BODY, sizes=[b"0x0c"]),
    "chunk size with a bad extension": request_head("Transfer-Encoding: chunked") + chunked(BODY, sizes=[b"c;=x"]),
}


@pytest.mark.parametrize("raw", BAD_FRAMING.values(), ids=BAD_FRAMING.keys())
def test_bad_framing_is_a_400_in_the_envelope_and_changes_nothing(
    raw: bytes, increment: GunicornServer, board_state: Callable[[], Any]
) -> None:
    before = recorded(board_state)
    log = LogWatch(increment)
    answer = exchange(increment, raw)
    assert answer is not None
    assert answer.status == 400
    assert answer.error_code() == "malformed_request"
    assert recorded(board_state) == before
    assert_logged_once(log.lines(), 400)


def test_a_body_shorter_than_its_content_length_is_refused(
    increment: GunicornServer, board_state: Callable[[], Any]
) -> None:
    """A complete JSON body, but 12 of the 20 bytes declared, then the client half-closes."""
    before = recorded(board_state)
    answer = exchange(increment, request_head("Content-Length: 20") + BODY)
    assert answer is not None
    assert answer.status == 400
    assert answer.error_code() == "incomplete_body"
    assert recorded(board_state) == before


def test_a_client_that_hangs_up_mid_body_records_nothing(
    increment: GunicornServer, board_state: Callable[[], Any]
) -> None:
    before = recorded(board_state)
    for framing, body in ((["Content-Length: 20"], BODY), (["Transfer-Encoding: chunked"], b"c\r\n" + BODY + b"\r\n")):
        assert exchange(increment, request_head(*framing) + body, hang_up=True) is None
    time.sleep(0.5)  # for the worker to finish with both requests after the hang-up
    assert recorded(board_state) == before


def test_a_chunked_body_without_its_last_chunk_is_refused(
    increment: GunicornServer, board_state: Callable[[], Any]
) -> None:
    before = recorded(board_state)
    answer = exchange(increment, request_head("Transfer-Encoding: chunked") + b"c\r\n" + BODY + b"\r\n")
    assert answer is not None
    assert answer.status == 400
    assert answer.error_code() == "incomplete_body"
    assert recorded(board_state) == before


TOO_MANY_FIELDS = [f"X-Filler-{i}: 1" for i in range(101)]
OVERSIZED = {
    "a 10 kB token": (request_head(user="x" * 10_000) + BODY, 431, "header_fields_too_large"),
    "101 header fields": (request_head(*TOO_MANY_FIELDS) + BODY, 431, "header_fields_too_large"),
    "a 5 kB request line": (request_head(target="/score?" + "q" * 5000) + BODY, 414, "request_line_too_long"),
}


@pytest.mark.parametrize(("raw", "status", "code"), OVERSIZED.values(), ids=OVERSIZED.keys())
def test_gunicorns_own_limits_answer_in_the_envelope(
    raw: bytes, status: int, code: str, increment: GunicornServer, board_state: Callable[[], Any]
) -> None:
    before = recorded(board_state)
    log = LogWatch(increment)
    answer = exchange(increment, raw)
    assert answer is not None
    assert answer.status == status
    assert answer.error_code() == code
    assert recorded(board_state) == before
    assert_logged_once(log.lines(), status)


def test_a_bad_chunk_behind_an_answer_that_did_not_read_it_gets_no_second_answer(
    increment: GunicornServer, board_state: Callable[[], Any]
) -> None:
    """A request refused before its body was read (no token): the bad chunk is found only when
    gunicorn discards the body, after the 401 went out, and must not be answered as a second response."""
    before = recorded(board_state)
    answer = exchange(increment, request_head("Transfer-Encoding: chunked", user=None) + chunked(BODY, sizes=[b"-1"]))
    assert answer is not None
    assert answer.status == 401  # exactly one answer: its Content-Length covers everything received
    assert recorded(board_state) == before
