"""The helper service's door: what a caller may send and how much of the service it may
hold, before any action runs. A request line must arrive whole within REQUEST_SECONDS (a
deadline per read let a caller sending a byte every 8 s hold a connection for ever), be at most
MAX_REQUEST_BYTES and nest at most MAX_JSON_DEPTH deep (`json.loads` recurses: a 2000-deep
line was a RecursionError); a prepare's input disk must arrive within INPUT_SECONDS; and
`Admission` counts requests per caller uid and kind (`CAPS`), never counting root's against
the totals, so no caller can starve root's probe and reap, nor another user. Who the caller
is comes from the kernel (`Peer`, SO_PEERCRED), and only root and the slot group are let in
(`peer_allowed`).
May import: errors, batch.privileged (Action), stdlib.
"""

from __future__ import annotations

import contextlib
import grp
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass

from ..batch.privileged import Action
from ..errors import BadRequest, InputTimeout

MAX_REQUEST_BYTES = 4096
MAX_JSON_DEPTH = 4  # the request is a flat object; json.loads recurses (2000 deep: a traceback)
REQUEST_SECONDS = 10.0  # to send the whole request line, however it trickles in
INPUT_SECONDS = 600.0  # to send the whole input disk of a prepare
#: Requests at once, per caller uid and, for callers other than root, in all. A connection
#: is PENDING until its request line is read (a caller trickling bytes holds one for at most
#: REQUEST_SECONDS); then a JOB request (prepare, run, cleanup: each running job holds one) or
#: a LIGHT one (probe, reap). Root is never counted against the totals, and a uid's hoard
#: starves only that uid: 16 uids holding 32 connections each leave root's probe served.
CAPS = {"pending": (8, 1024), "job": (32, 2048), "light": (4, 256)}
ROOT_CAPS = {"pending": 64, "job": 512, "light": 64}


@dataclass(frozen=True, slots=True)
class Request:
    action: Action
    job: str | None


def parse_request(line: bytes) -> Request:
    """The request line, checked: a JSON object with `action`, and `job` where it belongs."""
    if len(line) > MAX_REQUEST_BYTES or not line.endswith(b"\n"):
        raise BadRequest(f"the request must be one JSON line of at most {MAX_REQUEST_BYTES} bytes")
    if nesting(line) > MAX_JSON_DEPTH:
        raise BadRequest(f"the request nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"the request is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request must be a JSON object")
    unknown = sorted(set(data) - {"action", "job"})
    if unknown:
        raise BadRequest(f"unknown request fields: {', '.join(map(str, unknown))}")
    name, job = data.get("action"), data.get("job")
    action = Action.named(name)
    if action is None:
        raise BadRequest(f"action must be one of {', '.join(Action)}")
    if action.needs_job and not isinstance(job, str):
        raise BadRequest(f"{action} needs a job: its GlobalJobId, a string")
    if not action.needs_job and job is not None:
        raise BadRequest(f"{action} takes no job")
    return Request(action, job)


def nesting(line: bytes) -> int:
    """How deep the JSON text's arrays and objects nest (brackets inside strings aside)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def read_request_line(sock: socket.socket, seconds: float) -> tuple[bytes, bytes]:
    """The request line (with its newline; b"" if the caller only connected) and what came
    after it, within SECONDS for the whole line: a deadline per read would let a caller
    sending a byte every few seconds hold the connection for ever."""
    deadline = time.monotonic() + seconds
    data = b""
    late = f"no whole request line within {seconds:.0f} s"
    while b"\n" not in data and len(data) <= MAX_REQUEST_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(late)
        sock.settimeout(left)
        try:
            chunk = sock.recv(MAX_REQUEST_BYTES + 1 - len(data))
        except TimeoutError:
            raise TimeoutError(late) from None
        if not chunk:
            break
        data += chunk
    line, newline, rest = data.partition(b"\n")
    return line + newline, rest


class InputStream:
    """A prepare's input disk as `jobs.prepare` reads it: what came with the request line,
    then the socket, all of it within INPUT_SECONDS."""

    def __init__(self, sock: socket.socket, first: bytes, seconds: float) -> None:
        self.sock, self.first, self.seconds = sock, first, seconds
        self.deadline = time.monotonic() + seconds

    def read(self, size: int = -1) -> bytes:
        if self.first:
            cut = len(self.first) if size < 0 else size
            data, self.first = self.first[:cut], self.first[cut:]
            return data
        late = f"the job's input disk did not arrive within {self.seconds:.0f} s"
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise InputTimeout(late)
        self.sock.settimeout(left)
        try:
            return self.sock.recv(size if 0 < size <= 1 << 20 else 1 << 20)
        except TimeoutError:
            raise InputTimeout(late) from None


class Admission:
    """Requests under way, per (kind, uid) and per kind in all (root's not counted there)."""

    def __init__(self) -> None:
        self.under_way: dict[tuple[str, int], int] = {}  # (kind, uid) -> requests
        self.totals: dict[str, int] = dict.fromkeys(CAPS, 0)  # kind -> requests but root's
        self.counting = threading.Lock()

    def admit(self, uid: int, kind: str) -> bool:
        """Count one more KIND request of UID's, unless that is over a cap (`CAPS`)."""
        per_user, total = CAPS[kind]
        if uid == 0:
            per_user, total = ROOT_CAPS[kind], 0
        with self.counting:
            mine = self.under_way.get((kind, uid), 0)
            if mine >= per_user or (total and self.totals[kind] >= total):
                return False
            self.under_way[kind, uid] = mine + 1
            self.totals[kind] += uid != 0
            return True

    def release(self, uid: int, kind: str) -> None:
        with self.counting:
            self.under_way[kind, uid] -= 1
            self.totals[kind] -= uid != 0
            if not self.under_way[kind, uid]:
                del self.under_way[kind, uid]


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end, as the kernel says (SO_PEERCRED at connect time)."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
        return cls(*struct.unpack("iII", raw))


def peer_allowed(sock: socket.socket, peer: Peer, gid: int) -> bool:
    """Root, or a process in the slot group (what sudoers allows). The socket's mode already
    kept everyone else out; this holds should its mode ever be widened by mistake."""
    if peer.uid == 0 or peer.gid == gid:
        return True
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        return gid in struct.unpack(f"{len(raw) // 4}I", raw)
    except OSError:  # more than 256 groups, or an old kernel: the group database decides
        import pwd

        with contextlib.suppress(KeyError):
            return pwd.getpwuid(peer.uid).pw_name in grp.getgrgid(gid).gr_mem
        return False
