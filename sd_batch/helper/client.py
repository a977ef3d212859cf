"""How the hooks reach the privileged side (`privileged.perform`): the helper service's socket
when it answers (`sd_batch.helper.service`: one JSON line each way, then a tar; the caller known
by SO_PEERCRED), else the helper command (`sudo -n condor_hooks/helper`). A hook is a fresh
Python each time: nothing heavy is imported here, the helper command's `subprocess` only when
it is used.
May import: data (HOOKS_DIR), errors, condor.jobad (condor_param), the standard library.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import sys
from collections.abc import Callable, Mapping, Sequence

from ..data import HOOKS_DIR
from ..errors import Disposition, HelperFailed

TYPE_CHECKING = False  # typing itself costs a hook 5 ms
if TYPE_CHECKING:
    import subprocess
    from typing import IO, Any, NoReturn

log = logging.getLogger("sd_batch.helper.hooks")

#: Where the helper service listens (`socket_path` says what moves it).
DEFAULT_SOCKET = "/run/sd-batch/helper.sock"
MAX_REPLY_BYTES = 1 << 20
#: What a runner sends on its `run` connection when HTCondor vacates the job (its KillSig):
#: the service saves the VM and answers with the checkpoint (issue 18).
EVICT_LINE = b"evict\n"
PREPARE_SECONDS = 300.0  # the longest silence while PREPARE_JOB talks to the service


def helper_argv(environ: Mapping[str, str] | None = None) -> list[str]:
    """How to reach the privileged helper: `sudo -n condor_hooks/helper` for slot users.

    `_CONDOR_SMARTDOMAINS_HELPER` (or SMARTDOMAINS_HELPER in the HTCondor config) overrides;
    root needs no sudo and runs the helper module directly.
    """
    env = os.environ if environ is None else environ
    configured = env.get("_CONDOR_SMARTDOMAINS_HELPER")
    if configured is None:
        from ..condor.jobad import condor_param

        configured = condor_param("SMARTDOMAINS_HELPER")
    if configured:
        return shlex.split(configured)
    if os.geteuid() == 0:
        return [sys.executable, "-m", "sd_batch.batch.privileged"]
    return ["sudo", "-n", str(HOOKS_DIR / "helper")]


def socket_path(environ: Mapping[str, str] | None = None, known: str | None = None) -> str:
    """Where the service listens: `_CONDOR_SMARTDOMAINS_HELPER_SOCKET`, else KNOWN (the
    knob's value as PREPARE_JOB read it, which JOB_EXIT finds in the job ad: reading a knob
    costs a hook ~70 ms of HTCondor's bindings), else the knob SMARTDOMAINS_HELPER_SOCKET,
    else the default. Empty: the service is off."""
    env = os.environ if environ is None else environ
    path = env.get("_CONDOR_SMARTDOMAINS_HELPER_SOCKET", known)
    if path is None:
        from ..condor.jobad import condor_param

        path = condor_param("SMARTDOMAINS_HELPER_SOCKET", DEFAULT_SOCKET)
    return path or ""


def service_socket(
    environ: Mapping[str, str] | None = None, known: str | None = None
) -> socket.socket | None:
    """A connection to the helper service, or None: use the helper command (`helper_argv`).

    None when `_CONDOR_SMARTDOMAINS_HELPER` names a command (it means: use that), when the
    socket path is empty, or when nothing answers there; a socket that exists but refuses us is
    said on stderr, then the command is tried (it may still work).
    """
    env = os.environ if environ is None else environ
    if "_CONDOR_SMARTDOMAINS_HELPER" in env:
        return None
    path = socket_path(env, known)
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        if not isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            log.warning(
                "the helper service at %s cannot be used (%s): trying the helper command",
                path,
                exc.strerror or exc,
            )
        return None
    return sock


def request(sock: socket.socket, action: str, job_id: str | None = None) -> None:
    """Send the request line. A service that answered before reading it (Busy) may have
    closed already: its reply is still there to read, so a broken pipe is not our error."""
    request: dict[str, str] = {"action": action}
    if job_id is not None:
        request["job"] = job_id
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(json.dumps(request).encode() + b"\n")


def service_reply(stream: IO[bytes]) -> dict[str, Any]:
    """The service's JSON line (a reply, or `run`'s status); its silence is a host problem."""
    try:
        line = stream.readline(MAX_REPLY_BYTES)
        reply = json.loads(line)
    except ValueError:
        reply = None
    except OSError:  # reset: it died with our bytes unread
        reply = None
    if not isinstance(reply, dict):
        raise HelperFailed(
            "the helper service closed the connection without an answer (see "
            "its log; was it restarted?)",
            Disposition.REQUEUE,
        )
    return reply


def call(args: Sequence[str], timeout: float, known: str | None = None) -> dict[str, Any]:
    """One short action (`cleanup JOB`, `probe`, `reap`): its JSON reply, as it came, through
    the service (KNOWN: see `socket_path`) or else the helper command."""
    sock = service_socket(known=known)
    if sock is not None:
        with sock, sock.makefile("rb") as stream:
            sock.settimeout(timeout)
            request(sock, *args)
            return service_reply(stream)
    import subprocess  # the helper command's own cost (the service needs none of it)

    try:
        done = subprocess.run(
            [*helper_argv(), *args], capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(str(exc)) from None
    try:
        reply: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        _no_reply(done.stderr, done.returncode)
    return reply


def helper(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    import subprocess

    return subprocess.Popen([*helper_argv(), *args], **kwargs)


def helper_reply(out: bytes, err: bytes, code: int) -> dict[str, Any]:
    try:
        reply: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        _no_reply(err, code)
    return checked(reply)


def _no_reply(err: bytes, code: int) -> NoReturn:
    lines = err.decode(errors="replace").strip().splitlines()  # one line: an ad value
    detail = lines[-1][-300:] if lines else f"exit status {code}"
    raise HelperFailed(
        f"the privileged helper failed ({detail}); is sudo configured for it (scripts/setup-host)?",
        Disposition.REQUEUE,
    ) from None


def checked(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        disposition = Disposition(reply.get("disposition", "requeue"))
        raise HelperFailed(str(reply.get("message", "refused")), disposition)
    return reply


def prepare(job_id: str, write: Callable[[IO[bytes]], None]) -> tuple[dict[str, Any], str]:
    """`prepare JOB_ID` with the input disk WRITE writes: the checked reply, and the service's
    socket path ("" when the helper command did it)."""
    return streamed("prepare", job_id, write)


def streamed(
    action: str, job_id: str, write: Callable[[IO[bytes]], None]
) -> tuple[dict[str, Any], str]:
    """ACTION JOB_ID with the data WRITE writes (`prepare`: the input disk; `restore`: the
    job's checkpoint): the checked reply, and the service's socket path ("" for the command)."""
    sock = service_socket()
    if sock is not None:
        with sock, sock.makefile("rb") as stream:
            sock.settimeout(PREPARE_SECONDS)
            request(sock, action, job_id)
            # a service that stopped reading has said why in its reply
            with (
                contextlib.suppress(BrokenPipeError, ConnectionResetError),
                sock.makefile("wb") as sink,
            ):
                write(sink)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)  # the input's end
            return checked(service_reply(stream)), str(sock.getpeername())
    from subprocess import PIPE

    proc = helper([action, job_id], stdin=PIPE, stdout=PIPE, stderr=PIPE)
    if proc.stdin is None:
        raise OSError("the helper command has no stdin pipe")
    try:
        write(proc.stdin)
    except BrokenPipeError:
        pass  # the helper stopped reading: its reply says why
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    out, err = proc.communicate()  # flushes and closes stdin itself (a closed one raises)
    return helper_reply(out, err, proc.returncode), ""
