"""The privileged helper as a root service: one interpreter for every hook, not two per hook.

`python -I -m sd_batch.helper.service [--socket PATH] [--group NAME]` (root; `scripts/setup-host`
starts it) listens on a unix stream socket, by default /run/sd-batch/helper.sock, made
`root:sd-slots` mode 0660 in a root-owned 0755 folder: exactly who sudoers lets run the helper
(the slot group, where a site also puts the `condor` user for the startd cron) may connect,
and anyone else gets EACCES from the kernel. The caller is the kernel's SO_PEERCRED of the
connection (its uid keys the job as sudo's SUDO_UID does; its pid is the runner the reaper
watches), never a field of the request. Libvirt connections, lark's grammar and every module
stay loaded between requests, and the ledger open (idle: `privileged.hold_ledger`); the site
config is read again for each request, so an edit of /etc/sd-batch/site.toml applies to the
next job. The actions are `privileged.perform`, the code the sudo helper runs.

The protocol, one request per connection:

- The client sends one JSON line, at most 4096 bytes and nesting 4 deep, all of it within
  10 s:
  `{"action": "prepare"|"run"|"cleanup"|"probe"|"reap", "job": "<GlobalJobId>"}` (`job` for
  prepare, run and cleanup only). Anything else is answered with one JSON line
  `{"ok": false, "error": "BadRequest", "disposition": "requeue", "message": ...}` and the
  connection is closed.
- `prepare`: the job's input disk (a tar) follows the line, ended by the client's
  `shutdown(SHUT_WR)`; the reply is one JSON line, the one `helper prepare` prints. Once it
  went out (and the connection is closed), the service starts the prepared VM paused
  (`jobs.start_paused`: QEMU's process and devices made while the starter starts the runner);
  that job's run, cleanup and a repeated prepare wait for it to end (`Starting`).
- `cleanup`, `probe`, `reap`: the reply is one JSON line, as `helper ACTION` prints it.
- `run`: the client then only reads, and keeps its side open (a shutdown of its writing half
  counts as hanging up). The reply is one JSON status line: `{"ok": true}`, then the result
  tar until the service closes; or `{"ok": false, "exit": N, "message": ...}` where N is the
  helper's exit status (170/171 `errors.VMFailed`, 75 for a requeue, 1 otherwise). While the
  VM runs a watcher polls the connection: the runner hanging up (HTCondor's hold, remove and
  evict kill it) destroys the VM at once, as the sudo helper's SIGTERM handler does.
- A caller over its caps (`CAPS`: 8 connections still sending their line, 32 job requests,
  4 probes or reaps; root has its own, never shared with the slot users) gets `{"ok": false,
  "error": "Busy", "exit": 75, "disposition": "requeue", ...}` at once: the job goes back to
  Idle. A prepare's input disk must arrive within 600 s in all.
- Untrusted work (the job's input tar and description, the guest's output disk) runs in
  confined children forked from a fork server started with the service (`batch.confined`):
  a job's bomb is its own hold, and the service never grows.

SIGTERM stops listening at once (the socket goes, so hooks fall back to sudo or a new service)
and lets the requests under way finish; the process exits when they have. With `--on-stop
handover` (the systemd unit's) it exits once the short requests are done, leaving the jobs'
VMs running: their runners reattach to the next service (`hand_over`). A run's connection is
`helper.runs`.
May import: config, errors, hypervisor.connections, batch.confined, batch.privileged,
helper.door (and, to load them early, every module but the faces: see `warm_up`), stdlib.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import logging
import os
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, cast

from ..batch.confined import start_forkserver
from ..batch.privileged import EX_TEMPFAIL, Action, hold_ledger, perform, start_paused
from ..batch.warm import WarmPool, pool_for
from ..errors import BadRequest
from ..hypervisor.connections import Connections
from .door import (
    INPUT_SECONDS,
    REQUEST_SECONDS,
    Admission,
    InputStream,
    Peer,
    Request,
    parse_request,
    peer_allowed,
    read_request_line,
)
from .runs import HangupWatch, Starting, StatusFirst

log = logging.getLogger("sd_batch.helper.service")

DEFAULT_SOCKET = Path("/run/sd-batch/helper.sock")
SLOT_GROUP = "sd-slots"
DATA_SECONDS = 600.0  # the longest pause while a result tar moves
CHECKPOINT_SECONDS = DATA_SECONDS


class ServiceConnections(Connections):
    """`connections.Connections` (thread-safe), where `forget` drops a URI's connection only while
    it is dead: many runs wait on one connection, and a run that saw libvirtd go must not
    close the successor another request opened meanwhile."""

    def forget(self, uri: str) -> None:
        current = self._open.get(uri)
        if current is None or not current.is_alive():
            super().forget(uri)


class Handler(socketserver.BaseRequestHandler):
    server: HelperService
    replied = False  # a reply (or the first bytes of one) went out

    def handle(self) -> None:
        self.server.handling.add(threading.current_thread())
        try:
            self._handle()
        finally:
            self.server.handling.discard(threading.current_thread())

    def _handle(self) -> None:
        sock: socket.socket = self.request
        peer = Peer.of(sock)
        if not peer_allowed(sock, peer, self.server.gid):
            log.warning("refused uid %d (pid %d): not in the slot group", peer.uid, peer.pid)
            self._send(bad("only root and the slot group may use this service"))
            return
        admitted: str | None = None
        try:
            if not self._admit(peer, "pending"):
                return
            admitted = "pending"
            request, rest = self._request(sock, peer)
            self.server.release(peer.uid, "pending")
            admitted = None
            if request is None:
                return
            kind = "job" if request.action.needs_job else "light"
            if not self._admit(peer, kind):
                return
            admitted = kind
            self._answer(sock, peer, request, rest)
        except Exception as exc:  # one request's failure must not end the service
            if isinstance(exc, OSError) and self.replied:
                log.warning("the client went away: %s", exc)
            else:
                log.exception("request failed")
            if not self.replied:
                self._send(
                    {
                        "ok": False,
                        "exit": 1,
                        "disposition": "requeue",
                        "error": type(exc).__name__,
                        "message": f"internal error in the helper service: {exc!r}",
                    }
                )
        finally:
            if admitted is not None:
                self.server.release(peer.uid, admitted)

    def _admit(self, peer: Peer, kind: str) -> bool:
        if self.server.admit(peer.uid, kind):
            return True
        log.warning("uid %d (pid %d): too many %s requests under way", peer.uid, peer.pid, kind)
        self._send(
            {
                **bad("the helper service is busy: too many requests under way"),
                "error": "Busy",
                "exit": EX_TEMPFAIL,
            }
        )
        return False

    def _request(self, sock: socket.socket, peer: Peer) -> tuple[Request | None, bytes]:
        """The request (None: none, or refused with a reply) and the bytes after its line."""
        try:
            line, rest = read_request_line(sock, REQUEST_SECONDS)
            if not line and not rest:
                return None, b""  # it only looked whether we listen (setup-host does)
            return parse_request(line), rest
        except (BadRequest, OSError) as exc:
            text = str(exc) if isinstance(exc, BadRequest) else f"cannot read the request: {exc}"
            log.warning("uid %d (pid %d): %s", peer.uid, peer.pid, text)
            self._send(bad(text))
            return None, b""

    def _answer(self, sock: socket.socket, peer: Peer, request: Request, rest: bytes) -> None:
        job = f" {request.job}" if request.job else ""
        what = f"{request.action}{job} for uid {peer.uid} (pid {peer.pid})"
        sock.settimeout(DATA_SECONDS)
        key = (peer.uid, request.job) if request.job is not None else None
        if request.action is Action.RUN and key is not None:
            # its VM's paused start, if one is under way, is waited for once the ledger knows
            # the runner (`jobs.run`'s READY): that work overlaps the start
            self._run(sock, request, peer, what, lambda: self.server.starting.wait(key))
            return
        if key is not None:
            self.server.starting.wait(key)  # its VM's paused start, if one is under way
        # prepare streams the input disk from the socket into the job's folder (bounded there)
        streams_in = request.action in (Action.PREPARE, Action.RESTORE)
        data_in = cast(BinaryIO, InputStream(sock, rest, INPUT_SECONDS)) if streams_in else None
        began = time.monotonic()
        answer = perform(
            request.action,
            request.job,
            peer.uid,
            data_in=data_in,
            connections=self.server.connections,
            warm=self.server.warm,
        )
        log.info("%s: %s in %.0f ms", what, _summary(answer.reply), _ms_since(began))
        starting = None
        if request.action is Action.PREPARE and answer.code == 0 and key is not None:
            starting = self.server.starting.begin(key)  # before the reply: the run waits
        self._send(answer.reply or {})
        if streams_in:
            # The reply is queued: the client reads it. Both ways, so that a client still
            # writing an input disk prepare stopped reading (a refusal, a full disk) gets EPIPE
            # at once instead of blocking on a full socket until its timeout.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if starting is not None and key is not None:
            # PREPARE_JOB has its answer; the VM's process is made while the runner starts
            began = time.monotonic()
            warm = self.server.warm
            try:  # a warm VM it took gets its disks; else its own VM is started paused
                plugged = warm.plug(key[0], key[1]) if warm is not None else None
                made = plugged or start_paused(key[1], key[0], self.server.connections)
            finally:
                self.server.starting.end(key, starting)
            log.info(
                "%s: VM %s in %.0f ms",
                what,
                "warm, its disks plugged in"
                if plugged
                else "started paused"
                if made
                else "not started ahead (the run boots it)",
                _ms_since(began),
            )
        if request.action is Action.CLEANUP and self.server.warm is not None:
            self.server.warm.job_ended()  # a refill slows no job's boot now

    def _run(
        self,
        sock: socket.socket,
        request: Request,
        peer: Peer,
        what: str,
        ready: Callable[[], None],
    ) -> None:
        if peer.pid <= 0:
            self._send(bad("the caller's process is not visible here (another pid namespace)"))
            return
        out = StatusFirst(sock, self)
        watch = HangupWatch(sock, what)
        self.server.runs.add(threading.current_thread())
        try:
            answer = perform(
                Action.RUN,
                request.job,
                peer.uid,
                data_out=cast(BinaryIO, out),
                connections=self.server.connections,
                runner_pid=peer.pid,
                install_signals=watch.start,
                ready=ready,
                install_evict=watch.on_evict,
            )
        finally:
            watch.stop()
            self.server.runs.discard(threading.current_thread())
        if answer.reply is not None and answer.reply.get("evicted") and not watch.hung_up:
            self._send_checkpoint(sock, answer.reply, what)
            return
        if answer.reply is None:
            out.status()  # an empty result still says ok
            log.info("%s: result sent", what)
            return
        log.info("%s: exit %s: %s", what, answer.code, answer.reply.get("message"))
        if not watch.hung_up:
            self._send(answer.reply)

    def _send_checkpoint(self, sock: socket.socket, reply: dict[str, Any], what: str) -> None:
        """The evicted run's status line (`checkpoint`: its size, 0 for none), then the
        checkpoint's bytes; the runner writes them into the sandbox."""
        path = Path(reply.pop("checkpoint", "") or "/nonexistent")
        size = int(reply.get("size") or 0) if path.is_file() else 0
        log.info("%s: evicted: %s", what, reply.get("message"))
        self._send({**reply, "checkpoint": size})
        if size:
            sock.settimeout(CHECKPOINT_SECONDS)
            with contextlib.suppress(OSError), open(path, "rb") as source:
                sock.sendfile(source)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

    def _send(self, reply: dict[str, Any]) -> None:
        self.replied = True
        with contextlib.suppress(OSError):
            self.request.sendall(json.dumps(reply).encode() + b"\n")


#: Faces the service never runs (and whose libraries a worker may lack): not imported.
#: ... and what the fork server of confined children imports for itself (`start_forkserver`).
NOT_WARMED = ("sd_batch.web", "sd_batch.cli", "sd_batch.localrun", "sd_batch.batch.forkserver_warm")


def warm_up() -> None:
    """Import every module the root side may reach and build the language's parser, once,
    before the first request. A hook's wait is then the action alone; and a package upgrade,
    which replaces the code on disk while this service drains its runs, cannot mix the new
    version's modules into this process (Python imports lazily: a module first imported after
    the upgrade would be the new one, speaking to the old ones around it)."""
    import importlib
    import pkgutil

    import sd_batch

    from ..lang import parse_text

    for module in pkgutil.walk_packages(sd_batch.__path__, "sd_batch."):
        if not module.name.startswith(NOT_WARMED):
            importlib.import_module(module.name)
    parse_text("sfConfig extends { x 1; }\n")
    # untrusted work forks from here, single-threaded, with what it needs loaded once
    start_forkserver(["sd_batch.batch.forkserver_warm"])


def _ms_since(began: float) -> float:
    return 1000 * (time.monotonic() - began)


def warm_pool(connections: Connections) -> WarmPool | None:
    """The site's warm VMs (`[jobs] warm`), their refill started; None when it asks for none
    or its config cannot be read (the requests then say why)."""
    from ..batch.privileged import site_config
    from ..errors import SdError

    try:
        pool = pool_for(site_config(), connections)
    except SdError as exc:
        log.warning("no warm VMs: %s", exc)
        return None
    if pool is not None:
        log.info("warm VMs: one of each of %s, made ahead of their jobs", ", ".join(pool.templates))
        pool.start()
    return pool


def bad(message: str) -> dict[str, Any]:
    return {"ok": False, "error": "BadRequest", "disposition": "requeue", "message": message}


def _summary(reply: dict[str, Any] | None) -> str:
    if not reply or reply.get("ok"):
        return "ok"
    return f"failed: {reply.get('message') or reply.get('reason')}"


class HelperService(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The listening socket and its request threads (one per connection)."""

    daemon_threads = False  # a stop waits for them (server_close joins)
    block_on_close = True
    request_queue_size = 1024  # a burst of connections (hoarders Busy at once) waits here

    def __init__(self, path: Path, gid: int) -> None:
        self.path, self.gid = path, gid
        self.admission = Admission()
        self.connections = ServiceConnections()
        self.starting = Starting()
        self.handling: set[threading.Thread] = set()  # every request's thread
        self.runs: set[threading.Thread] = set()  # ... and those waiting on a job's VM
        self.warm: WarmPool | None = None  # `serve` makes it when the site asks for one
        super().__init__(str(path), Handler, bind_and_activate=False)

    def admit(self, uid: int, kind: str) -> bool:
        return self.admission.admit(uid, kind)

    def release(self, uid: int, kind: str) -> None:
        self.admission.release(uid, kind)

    def server_bind(self) -> None:
        """Bind with mode 0600 (no window where others may connect), then hand the socket
        to root:GROUP 0660."""
        prepare_folder(self.path.parent)
        clear_stale(self.path)
        old = os.umask(0o177)
        try:
            self.socket.bind(str(self.path))
        finally:
            os.umask(old)
        os.chown(self.path, 0, self.gid)
        os.chmod(self.path, 0o660)  # noqa: PTH101
        self.inode = self.path.stat().st_ino

    def stop_listening(self) -> None:
        """Remove our socket (not a successor's) and close it: new hooks go elsewhere."""
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self.inode:
                self.path.unlink()
        self.socket.close()


def prepare_folder(folder: Path) -> None:
    """The socket's folder: made root's 0755 when missing; refused when others may write it
    (they could put their own socket in our place)."""
    if not folder.exists():
        folder.mkdir(mode=0o755, parents=True)
        folder.chmod(0o755)
    info = folder.stat()
    if info.st_uid != 0 or info.st_mode & 0o022:
        raise SystemExit(f"helper service: {folder} must be root's and writable by root only")


def clear_stale(path: Path) -> None:
    """A socket left by a service that died goes; one that answers is another service."""
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise SystemExit(f"helper service: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise SystemExit(f"helper service: another service answers on {path}")


def serve(path: Path, group: str, on_stop: str = "drain") -> int:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise SystemExit(f"helper service: no group {group} (setup-host makes it)") from None
    warm_up()
    ledger = hold_ledger()
    server = HelperService(path, gid)
    server.server_bind()
    server.server_activate()
    server.warm = warm_pool(server.connections)

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: no new requests; finishing those under way", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening on %s (root:%s 0660), pid %d", path, group, os.getpid())
    try:
        server.serve_forever()
    finally:
        server.stop_listening()
        if server.warm is not None:  # before the runs drain: no paused QEMU outlives us
            server.warm.stop()
        if on_stop == "handover":
            hand_over(server)
        server.server_close()  # joins the requests under way
        server.connections.close()
        if ledger is not None:
            ledger.close()
    log.info("stopped")
    return 0


def hand_over(server: HelperService) -> NoReturn:
    """Stop without waiting for the jobs' VMs: the short requests under way finish, then the
    process ends. Each runner sees its connection close and asks the next service, which
    waits on the same VM (`jobs.run` knows the runner again); the VMs run on meanwhile.
    systemd's restart (a package upgrade) stops the old service before it starts the new one,
    so draining there would hold every new job up until the longest run ends."""
    while waiting := [t for t in server.handling - server.runs if t.is_alive()]:
        waiting[0].join(0.1)  # again and again: a request read just now may become a run
    log.info("stopped: %d runs left to their runners, for the next service", len(server.runs))
    logging.shutdown()
    server.connections.close()
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -I -m sd_batch.helper.service", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=DEFAULT_SOCKET,
        help=f"where to listen (default {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--group", default=SLOT_GROUP, help=f"the group that may connect (default {SLOT_GROUP})"
    )
    parser.add_argument(
        "--on-stop",
        choices=("drain", "handover"),
        default="drain",
        help="at SIGTERM, finish the jobs' runs (drain: the default, for a restart that starts "
        "the next service at once, as setup-host does), or end once the short requests are "
        "done and let each runner reattach to the next service (handover: for systemd, whose "
        "restart waits for the old service to end)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s sd-batch helper-service: %(levelname)s %(message)s",
    )
    if os.geteuid() != 0:
        parser.error("run me as root (I act for the slot users, as the sudo helper does)")
    return serve(args.socket.absolute(), args.group, args.on_stop)


if __name__ == "__main__":
    sys.exit(main())
