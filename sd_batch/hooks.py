"""HTCondor's job hooks and the job's runner, on the unprivileged side (the slot user).

`condor_hooks/*` are a few lines each calling `main()` here with a verb:

- `prepare-job` (<Keyword>_HOOK_PREPARE_JOB): the job ad on stdin; builds the guest's input disk
  from the sandbox and hands it to the privileged helper, which resolves the description,
  applies site limits and defines the VM. Prints ad updates: `Cmd` becomes our runner, the
  original command is kept in `SDOriginalCmd` / `SDOriginalArguments`. Failures print
  `HookStatusCode` / `HookStatusMessage`: a user's mistake or a policy refusal holds the job
  (1-299), a host problem sends it back to Idle (>= 300). `status_for` is the one mapping.
- `runner` (the job's new Cmd): asks the helper to boot the VM and stream back the result, puts
  the outputs into the sandbox safely, writes the payload's stdout/stderr to its own, and exits
  as the payload did (a payload killed by signal N kills the runner with N).
- `job-exit` (<Keyword>_HOOK_JOB_EXIT, argv exit|remove|hold|evict): destroy and delete
  everything, idempotent, well inside HTCondor's 30 s.
- `update-job-info`: advisory; nothing to do.
- `startd-cron`: publishes HasSmartDomains and friends for the startd.

Each verb reaches the privileged side through the helper service's socket when it answers
(`sd_batch.helper_service`: one JSON line each way, the caller known by SO_PEERCRED), else
through the helper command (`sudo -n condor_hooks/helper`). Nothing here talks to libvirt, and
nothing heavy is imported: every hook is a fresh Python.
May import: errors, guest.contract, jobad, staging, stdlib.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import re
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import (
    VM_LOST_EXIT,
    VM_REQUEUE_EXIT,
    VM_TIMEOUT_EXIT,
    Disposition,
    SdError,
    StagingError,
)

TYPE_CHECKING = False  # typing itself costs a hook 5 ms
if TYPE_CHECKING:
    import subprocess
    from typing import IO, Any, NoReturn

    from .staging import JobResult

log = logging.getLogger("sd_batch.hooks")

HOOKS_DIR = Path(__file__).resolve().parent.parent / "condor_hooks"
KEYWORD = "SMARTDOMAINS"
JOB_EXIT_REASONS = ("exit", "remove", "hold", "evict")
#: Where the helper service listens (`_CONDOR_SMARTDOMAINS_HELPER_SOCKET` or the HTCondor knob
#: SMARTDOMAINS_HELPER_SOCKET move it; an empty value turns the service off).
DEFAULT_SOCKET = "/run/sd-batch/helper.sock"
MAX_REPLY_BYTES = 1 << 20
PREPARE_SECONDS = 300.0  # the longest silence while PREPARE_JOB talks to the service
#: Bounds on what a job moves in and out (site policy may lower them).
MAX_INPUT_BYTES = 2 * 1024**3
MAX_RESULT_BYTES = 1024**3
MAX_RESULT_FILES = 100_000


class HookStatus(enum.IntEnum):
    """HookStatusCode values: 0 success, 1-299 hold the job, >= 300 back to Idle."""

    OK = 0
    HOLD = 180
    REQUEUE = 380


def status_for(exc: BaseException) -> tuple[HookStatus, str]:
    """The one mapping from an error to (HookStatusCode, HookStatusMessage)."""
    if isinstance(exc, SdError):
        text = exc.headline() if hasattr(exc, "headline") else str(exc)
        code = HookStatus.REQUEUE if exc.disposition is Disposition.REQUEUE else HookStatus.HOLD
        return code, f"sd-batch: {text}"
    return HookStatus.REQUEUE, f"sd-batch: internal error on the worker: {exc!r}"


class HelperFailed(SdError):
    """The privileged helper refused or failed; carries its disposition."""

    def __init__(self, message: str, disposition: Disposition) -> None:
        super().__init__(message)
        self._disposition = disposition

    @property
    def disposition(self) -> Disposition:  # type: ignore[override]
        return self._disposition


def helper_argv(environ: dict[str, str] | None = None) -> list[str]:
    """How to reach the privileged helper: `sudo -n condor_hooks/helper` for slot users.

    `_CONDOR_SMARTDOMAINS_HELPER` (or SMARTDOMAINS_HELPER in the HTCondor config) overrides;
    root needs no sudo and runs the helper module directly.
    """
    env = os.environ if environ is None else environ
    configured = env.get("_CONDOR_SMARTDOMAINS_HELPER")
    if configured is None:
        from .jobad import condor_param

        configured = condor_param("SMARTDOMAINS_HELPER")
    if configured:
        return shlex.split(configured)
    if os.geteuid() == 0:
        return [sys.executable, "-m", "sd_batch.privileged"]
    return ["sudo", "-n", str(HOOKS_DIR / "helper")]


def service_socket(environ: dict[str, str] | None = None) -> socket.socket | None:
    """A connection to the helper service, or None: use the helper command (`helper_argv`).

    None when `_CONDOR_SMARTDOMAINS_HELPER` names a command (it means: use that), when the
    socket path is empty, or when nothing answers there; a socket that exists but refuses us is
    said on stderr, then the command is tried (it may still work).
    """
    env = os.environ if environ is None else environ
    if "_CONDOR_SMARTDOMAINS_HELPER" in env:
        return None
    path = env.get("_CONDOR_SMARTDOMAINS_HELPER_SOCKET")
    if path is None:
        from .jobad import condor_param

        path = condor_param("SMARTDOMAINS_HELPER_SOCKET", DEFAULT_SOCKET)
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        if not isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            log.warning("the helper service at %s cannot be used (%s): trying the helper "
                        "command", path, exc.strerror or exc)  # fmt: skip
        return None
    return sock


def _request(sock: socket.socket, action: str, job_id: str | None = None) -> None:
    request: dict[str, str] = {"action": action}
    if job_id is not None:
        request["job"] = job_id
    sock.sendall(json.dumps(request).encode() + b"\n")


def _service_reply(stream: IO[bytes]) -> dict[str, Any]:
    """The service's JSON line (a reply, or `run`'s status); its silence is a host problem."""
    line = stream.readline(MAX_REPLY_BYTES)
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise HelperFailed("the helper service closed the connection without an answer (see "
                           "its log; was it restarted?)", Disposition.REQUEUE)  # fmt: skip
    return reply


def _call(args: Sequence[str], timeout: float) -> dict[str, Any]:
    """One short action (`cleanup JOB`, `probe`, `reap`): its JSON reply, as it came, through
    the service or else the helper command."""
    sock = service_socket()
    if sock is not None:
        with sock, sock.makefile("rb") as stream:
            sock.settimeout(timeout)
            _request(sock, *args)
            return _service_reply(stream)
    import subprocess  # the helper command's own cost (the service needs none of it)

    try:
        done = subprocess.run([*helper_argv(), *args], capture_output=True, timeout=timeout,
                              check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(str(exc)) from None
    try:
        reply: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        _no_reply(done.stderr, done.returncode)
    return reply


def _helper(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    import subprocess

    return subprocess.Popen([*helper_argv(), *args], **kwargs)


def _helper_reply(out: bytes, err: bytes, code: int) -> dict[str, Any]:
    try:
        reply: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        _no_reply(err, code)
    return _checked(reply)


def _no_reply(err: bytes, code: int) -> NoReturn:
    lines = err.decode(errors="replace").strip().splitlines()  # one line: an ad value
    detail = lines[-1][-300:] if lines else f"exit status {code}"
    raise HelperFailed(
        f"the privileged helper failed ({detail}); is sudo configured for it "
        "(scripts/setup-host)?", Disposition.REQUEUE,
    ) from None


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        disposition = Disposition(reply.get("disposition", "requeue"))
        raise HelperFailed(str(reply.get("message", "refused")), disposition)
    return reply


# -- PREPARE_JOB -------------------------------------------------------------------------------
def _argv_in_guest(ad: Any, sandbox: Path) -> list[str]:
    """The payload's argv inside the VM: the transferred executable, else Cmd as written."""
    cmd = str(ad.cmd)
    for candidate in ("condor_exec.exe", Path(cmd).name):
        if candidate and (sandbox / candidate).is_file() and not (sandbox / candidate).is_symlink():
            return [f"./{candidate}", *ad.arguments]
    return [cmd, *ad.arguments]


def prepare_job(stdin: IO[str], stdout: IO[str], sandbox: Path) -> int:
    from .guest.contract import Manifest
    from .jobad import format_updates, parse_job_ad
    from .staging import write_input_tar

    ad_text = stdin.read()
    try:
        ad = parse_job_ad(ad_text)
        if not ad.sd_description:
            # Our hook keyword without SDVMDescription (a site-wide default keyword, say):
            # the job did not ask for a VM, so it runs as it would without sd-batch.
            log.info("job %s has no SDVMDescription: it runs natively", ad.global_job_id)
            return 0
        manifest = Manifest(tuple(_argv_in_guest(ad, sandbox)), dict(ad.environment), ".")

        def write(out: IO[bytes]) -> None:
            write_input_tar(sandbox, manifest, out, job_ad_text=ad_text,
                            max_bytes=MAX_INPUT_BYTES)  # fmt: skip

        reply = _prepare(ad.global_job_id, write)
    except (SdError, OSError) as exc:
        if isinstance(exc, OSError):
            exc = StagingError(f"cannot stage the job: {exc}")
        code, message = status_for(exc)
        log.warning("prepare job failed: %s", message)
        stdout.write(format_updates({"HookStatusCode": int(code), "HookStatusMessage": message}))
        # Non-zero as well: a starter that predates HookStatusCode then still aborts the job
        # (held, HoldReasonCode 19) instead of running it natively with Cmd unchanged.
        return 1
    updates: dict[str, Any] = {
        "SDOriginalCmd": ad.cmd,
        "SDOriginalArguments": " ".join(shlex.quote(a) for a in ad.arguments),
        "SDVMDomain": reply["domain"],
        "SDVMMemoryMiB": reply["memory_mib"],
        "SDVMCpus": reply["vcpus"],
        "Cmd": str(HOOKS_DIR / "runner"),
        "Arguments": f"--job {ad.global_job_id}",
        "Args": f"--job {ad.global_job_id}",
        "HookStatusCode": int(HookStatus.OK),
        "HookStatusMessage": f"sd-batch: VM {reply['domain']} ready "
                             f"({reply['description']}, {reply['memory_mib']} MiB)",
    }
    stdout.write(format_updates(updates))
    return 0


def _prepare(job_id: str, write: Callable[[IO[bytes]], None]) -> dict[str, Any]:
    """`prepare JOB_ID` with the input disk WRITE writes: the checked reply."""
    sock = service_socket()
    if sock is not None:
        with sock, sock.makefile("rb") as stream:
            sock.settimeout(PREPARE_SECONDS)
            _request(sock, "prepare", job_id)
            # a service that stopped reading has said why in its reply
            with contextlib.suppress(BrokenPipeError, ConnectionResetError), \
                    sock.makefile("wb") as sink:  # fmt: skip
                write(sink)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)  # the input's end
            return _checked(_service_reply(stream))
    from subprocess import PIPE

    proc = _helper(["prepare", job_id], stdin=PIPE, stdout=PIPE, stderr=PIPE)
    assert proc.stdin is not None
    try:
        write(proc.stdin)
    except BrokenPipeError:
        pass  # the helper stopped reading: its reply says why
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    out, err = proc.communicate()  # flushes and closes stdin itself (a closed one raises)
    return _helper_reply(out, err, proc.returncode)


# -- the runner ----------------------------------------------------------------------------------
def runner(argv: Sequence[str], sandbox: Path) -> int:
    if len(argv) != 2 or argv[0] != "--job":
        print("usage: runner --job GLOBAL_JOB_ID", file=sys.stderr)
        return 2
    sock = service_socket()
    if sock is None:
        return _run_through_helper(argv[1], sandbox)
    # HTCondor's SIGTERM kills us as it comes: the service sees us hang up and destroys the VM
    with sock, sock.makefile("rb") as stream:
        _request(sock, "run", argv[1])  # and our side stays open: closing it is hanging up
        try:
            status = _service_reply(stream)
            if not status.get("ok"):
                print(f"sd-batch: {status.get('message')}", file=sys.stderr)
                code = int(status.get("exit", 1))
                if code in (VM_TIMEOUT_EXIT, VM_LOST_EXIT):
                    return code  # the transform's OnExitHold holds the job
                return _requeue() if code == os.EX_TEMPFAIL else 1
            result = _read_result(stream, sandbox)
        except HelperFailed as exc:  # the service went away before the VM's end
            print(f"sd-batch: {exc}", file=sys.stderr)
            return _requeue()
        except SdError as exc:
            print(f"sd-batch: cannot read the job's result: {exc}", file=sys.stderr)
            return 1
    return _finish(result)


def _run_through_helper(job_id: str, sandbox: Path) -> int:
    import subprocess

    proc = _helper(["run", job_id], stdout=subprocess.PIPE)
    assert proc.stdout is not None

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)  # the helper destroys the VM at once

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        result = _read_result(proc.stdout, sandbox)
    except SdError as exc:
        try:  # a helper that sent nothing is exiting: its code may say the VM failed
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code in (VM_TIMEOUT_EXIT, VM_LOST_EXIT):
            return code  # the helper said why on our stderr; the transform's OnExitHold holds
        if code == os.EX_TEMPFAIL:
            return _requeue()
        print(f"sd-batch: cannot read the job's result: {exc}", file=sys.stderr)
        return 1
    finally:
        proc.stdout.close()
    code = proc.wait()
    if code == os.EX_TEMPFAIL:
        return _requeue()
    if code != 0:
        print(f"sd-batch: the VM did not complete (helper exit {code})", file=sys.stderr)
        return code if code > 0 else 128 - code
    return _finish(result)


def _read_result(stream: IO[bytes], sandbox: Path) -> JobResult:
    from .staging import read_result

    return read_result(stream, sandbox, max_bytes=MAX_RESULT_BYTES, max_files=MAX_RESULT_FILES)


def _finish(result: JobResult) -> int:
    """The payload's stdout and stderr on ours, and its exit (or its signal) as ours."""
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(result.stderr)
    if result.error:
        sys.stderr.write(f"sd-batch: {result.error.strip()}\n")
    for link in result.skipped:
        sys.stderr.write(f"sd-batch: {link} is a link the job made: links are not returned\n")
    sys.stderr.flush()
    status = result.exit_status
    if status is None:
        print("sd-batch: the payload did not run", file=sys.stderr)
        return 1
    stops = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
    if status.kind == "signal" and status.code not in stops:  # a stop would stop the runner
        if status.code != signal.SIGKILL:  # SIGKILL's handler cannot be set (nor needs to be)
            signal.signal(status.code, signal.SIG_DFL)
        os.kill(os.getpid(), status.code)  # die of it, so HTCondor records ExitBySignal
        return 128 + status.code  # only reached for signals whose default is to carry on
    if status.kind == "signal":
        return 128 + status.code
    return status.code


def _requeue() -> int:
    print("sd-batch: this worker could not run the job's VM (the message above says why); "
          "the job goes back to Idle and runs again", file=sys.stderr)
    return VM_REQUEUE_EXIT  # the site's job transform makes OnExitRemove false for it


# -- JOB_EXIT, UPDATE_JOB_INFO, startd cron ---------------------------------------------------
def job_exit(argv: Sequence[str], stdin: IO[str], timeout: float = 25.0) -> int:
    reason = argv[0] if argv else "exit"
    if reason not in JOB_EXIT_REASONS:
        log.warning("unknown JOB_EXIT reason %r: cleaning up anyway", reason)
    try:
        job_id = global_job_id(stdin.read())
        reply = _checked(_call(["cleanup", job_id], timeout))
        log.info("job %s (%s): removed %s", job_id, reason, reply.get("removed"))
    except (SdError, OSError) as exc:
        print(f"sd-batch: JOB_EXIT {reason}: cleanup incomplete ({exc}); the reaper will "
              "finish it", file=sys.stderr)
    return 0  # HTCondor ignores JOB_EXIT's status; our own log says what happened


_DEFINES_GLOBAL_JOB_ID = re.compile(r"^[ \t]*GlobalJobId[ \t]*=", re.IGNORECASE | re.MULTILINE)
_GLOBAL_JOB_ID = re.compile(_DEFINES_GLOBAL_JOB_ID.pattern + r'[ \t]*"([A-Za-z0-9_.:@#+-]{1,255})"'
                            r"[ \t]*$", re.IGNORECASE | re.MULTILINE)  # fmt: skip


def global_job_id(ad_text: str) -> str:
    """The job ad's GlobalJobId, as `jobad.parse_job_ad` reads it. Without the ClassAd
    library (60 ms of a 150 ms hook) when the ad defines it once, as a plain string of a job
    id's characters (what a schedd writes); any other ad is parsed. Either way the service acts
    only on the caller's own jobs."""
    found = _GLOBAL_JOB_ID.findall(ad_text)
    if len(found) == 1 and len(_DEFINES_GLOBAL_JOB_ID.findall(ad_text)) == 1:
        return str(found[0])
    from .jobad import parse_job_ad

    return parse_job_ad(ad_text).global_job_id


def startd_cron(stdout: IO[str]) -> int:
    from .jobad import format_updates

    try:
        report = _call(["probe"], 20.0)
    except (SdError, OSError) as exc:
        report = {"ok": False, "reason": f"the privileged helper cannot be run: {exc}",
                  "templates": [], "free_memory_mib": None}
    updates: dict[str, Any] = {
        "HasSmartDomains": bool(report.get("ok")),
        "SmartDomainsTemplates": ",".join(report.get("templates") or []),
        "SmartDomainsFreeVMMemory": int(report.get("free_memory_mib") or 0),
        "SmartDomainsOfflineReason": str(report.get("reason") or ""),
    }
    stdout.write(format_updates(updates))
    stdout.flush()  # the node's state first: a slow reap must not hold it back
    _reap_quietly()
    return 0


def _reap_quietly(timeout: float = 60.0) -> None:
    """The reaper, every cron run (cheap when nothing is left): its failures are logged on
    stderr, never published, so they cannot take the node out (HasSmartDomains)."""
    try:
        reply = _call(["reap"], timeout)
        for line in reply.get("actions") or [reply.get("message", "")]:
            if line:
                log.info("reaper: %s", line)
    except (SdError, OSError) as exc:
        log.warning("reaper could not run: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="sd-batch %(name)s: %(levelname)s %(message)s")
    verb, rest = (args[0], args[1:]) if args else ("", [])
    sandbox = Path(os.environ.get("_CONDOR_SCRATCH_DIR") or Path.cwd())
    if verb == "prepare-job":
        return prepare_job(sys.stdin, sys.stdout, sandbox)
    if verb == "runner":
        return runner(rest, sandbox)
    if verb == "job-exit":
        return job_exit(rest, sys.stdin)
    if verb == "update-job-info":
        sys.stdin.read()
        return 0
    if verb == "startd-cron":
        return startd_cron(sys.stdout)
    print("usage: python -m sd_batch.hooks {prepare-job,runner,job-exit,update-job-info,"
          "startd-cron} [args]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
