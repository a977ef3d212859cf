"""The helper service's door (`sd_batch.helper.door`) on socket pairs: deadlines for a whole
request line and a whole input disk, JSON nesting, and the caps that never count root."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from sd_batch.errors import BadRequest, InputTimeout
from sd_batch.helper.door import (
    CAPS,
    Admission,
    InputStream,
    nesting,
    parse_request,
    read_request_line,
)


def trickle(sock: socket.socket, data: bytes, every: float) -> threading.Thread:
    def send() -> None:
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return
            time.sleep(every)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_a_line_trickling_in_is_cut_at_the_whole_lines_deadline() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        trickle(theirs, b'{"action": "probe"}\n', 0.2)  # each byte well inside the deadline
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="no whole request line within 1 s"):
            read_request_line(ours, 1.0)
        assert time.monotonic() - started < 1.5


def test_the_line_and_what_follows_it_are_told_apart() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b'{"action": "prepare", "job": "a#1.0#1"}\nTAR')
        line, rest = read_request_line(ours, 1.0)
        assert (line, rest) == (b'{"action": "prepare", "job": "a#1.0#1"}\n', b"TAR")
        stream = InputStream(ours, rest, 5.0)
        theirs.sendall(b" DATA")
        theirs.shutdown(socket.SHUT_WR)
        assert stream.read(2) + stream.read(-1) + stream.read(1 << 20) + stream.read(10) == (
            b"TAR DATA"
        )


def test_an_input_disk_trickling_in_is_cut_at_its_whole_deadline() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        trickle(theirs, b"x" * 100, 0.2)
        stream = InputStream(ours, b"", 1.0)
        started = time.monotonic()
        with pytest.raises(InputTimeout, match="did not arrive within 1 s"):
            while stream.read(1 << 20):
                pass
        assert time.monotonic() - started < 1.5
        assert InputTimeout("x").disposition.value == "requeue"


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b'{"action": "probe"}', 1),
        (b'{"a": "[[[[{{{{"}', 1),
        (b'{"a": "\\"[[[["}', 1),
        (b"[" * 2000 + b"]" * 2000, 2000),
        (b'[{"a": [1, {"b": []}]}]', 5),
    ],
)
def test_nesting_counts_brackets_outside_strings(text: bytes, depth: int) -> None:
    assert nesting(text) == depth


def test_a_deep_request_is_a_bad_request_before_json_recurses() -> None:
    with pytest.raises(BadRequest, match="nests deeper than 4 levels"):
        parse_request(b'{"action": [[[[["probe"]]]]]}\n')
    with pytest.raises(BadRequest, match="must be one of"):  # 4 deep passes to the checks
        parse_request(b'{"action": [[["probe"]]]}\n')


def test_a_uids_caps_are_its_own_and_root_is_never_counted_in_the_totals() -> None:
    admission = Admission()
    per_user, total = CAPS["pending"]
    assert all(admission.admit(1000, "pending") for _ in range(per_user))
    assert not admission.admit(1000, "pending")  # its own cap
    assert admission.admit(1001, "pending")  # another user's are its own
    assert admission.admit(0, "light") and admission.admit(0, "pending")
    for uid in range(2000, 2000 + total):  # every other uid fills the total ...
        admission.admit(uid, "pending")
    assert not admission.admit(5000, "pending")
    assert admission.admit(0, "pending")  # ... and root still gets in
    admission.release(1000, "pending")
    assert admission.totals["pending"] == total - 1
