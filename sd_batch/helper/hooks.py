"""HTCondor's job hooks and the job's runner, on the unprivileged side (the slot user).

`condor_hooks/*` are a few lines each calling `main()` here with a verb:

- `prepare-job` (<Keyword>_HOOK_PREPARE_JOB): the job ad on stdin; builds the guest's input disk
  from the sandbox and hands it to the privileged helper, which resolves the description,
  applies site limits and defines the VM (the helper service then starts it paused, for the
  runner to resume). Prints ad updates: `Cmd` becomes our runner, the
  original command is kept in `SDOriginalCmd` / `SDOriginalArguments`. Failures print
  `HookStatusCode` / `HookStatusMessage`: a user's mistake or a policy refusal holds the job
  (1-299), a host problem sends it back to Idle (>= 300). `status_for` is the one mapping.
- the runner (the job's new Cmd, `helper.runner`, which sends its request first and then calls
  `run_job` here): asks the helper to boot the VM and stream back the result, puts the outputs
  into the sandbox safely, writes the payload's stdout/stderr to its own, and exits as the
  payload did (a payload killed by signal N kills the runner with N).
- `job-exit` (<Keyword>_HOOK_JOB_EXIT, argv exit|remove|hold|evict): destroy and delete
  everything, idempotent, well inside HTCondor's 30 s.
- `update-job-info`: advisory; nothing to do.
- `startd-cron`: publishes HasSmartDomains and friends for the startd.

Each verb reaches the privileged side through the helper service's socket when it answers,
else through the helper command (`sudo -n condor_hooks/helper`): `helper.client`. Nothing here
talks to libvirt, and nothing heavy is imported: every hook is a fresh Python.
May import: data (HOOKS_DIR), errors, guest.contract, helper.client, condor.jobad, staging,
stdlib.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..data import HOOKS_DIR
from ..errors import (
    VM_LOST_EXIT,
    VM_REQUEUE_EXIT,
    VM_TIMEOUT_EXIT,
    Disposition,
    HelperFailed,
    SdError,
    StagingError,
    clipped,
)
from .client import (
    EVICT_LINE,
    call,
    checked,
    helper,
    helper_argv,
    prepare,
    request,
    service_reply,
    service_socket,
    streamed,
)

TYPE_CHECKING = False  # typing itself costs a hook 5 ms
if TYPE_CHECKING:
    from typing import IO, Any, NoReturn

    from ..staging import JobResult

log = logging.getLogger("sd_batch.helper.hooks")

KEYWORD = "SMARTDOMAINS"
JOB_EXIT_REASONS = ("exit", "remove", "hold", "evict")
#: PREPARE_JOB's note to the runner: why the job's checkpoint could not be used.
REFUSED_NOTE = ".sd-batch.checkpoint-refused"
SOCKET_ATTRIBUTE = "SDHelperSocket"  # in PREPARE_JOB's updates when it used the service
#: What the startd cron publishes of each template's needs (records by template name), which
#: the schedd transform's requests and requirements read as TARGET.<attr>[MY.SDVMDescription].
TEMPLATE_NEEDS = {
    "SmartDomainsTemplateMemory": "memory_mib",
    "SmartDomainsTemplateCpus": "vcpus",
    "SmartDomainsTemplateDisk": "disk_kib",
}
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
        return code, clipped(f"sd-batch: {text}")
    return HookStatus.REQUEUE, clipped(f"sd-batch: internal error on the worker: {exc!r}")


# -- PREPARE_JOB -------------------------------------------------------------------------------
def _argv_in_guest(ad: Any, sandbox: Path) -> list[str]:
    """The payload's argv inside the VM: the transferred executable, else Cmd as written."""
    cmd = str(ad.cmd)
    for candidate in ("condor_exec.exe", Path(cmd).name):
        if candidate and (sandbox / candidate).is_file() and not (sandbox / candidate).is_symlink():
            return [f"./{candidate}", *ad.arguments]
    return [cmd, *ad.arguments]


def prepare_job(stdin: IO[str], stdout: IO[str], sandbox: Path) -> int:
    from ..condor.jobad import format_updates, parse_job_ad
    from ..guest.contract import Manifest
    from ..staging import write_input_tar

    ad_text = stdin.read()
    try:
        ad = parse_job_ad(ad_text)
        if ad.vm_description() is None:
            # Our hook keyword without SDVMDescription (a site-wide default keyword, say):
            # the job did not ask for a VM, so it runs as it would without sd-batch.
            log.info("job %s has no SDVMDescription: it runs natively", ad.global_job_id)
            return 0
        manifest = Manifest(tuple(_argv_in_guest(ad, sandbox)), dict(ad.environment), ".")
        machine_ad = _machine_ad(sandbox)

        def write(out: IO[bytes]) -> None:
            write_input_tar(
                sandbox,
                manifest,
                out,
                job_ad_text=ad_text,
                machine_ad_text=machine_ad,
                max_bytes=MAX_INPUT_BYTES,
            )

        reply, socket_path = prepare(ad.global_job_id, write)
    except (SdError, OSError) as exc:
        if isinstance(exc, OSError):
            exc = StagingError(f"cannot stage the job: {exc}")
        code, message = status_for(exc)
        log.warning("prepare job failed: %s", message)
        stdout.write(format_updates({"HookStatusCode": int(code), "HookStatusMessage": message}))
        # Non-zero as well: a starter that predates HookStatusCode then still aborts the job
        # (held, HoldReasonCode 19) instead of running it natively with Cmd unchanged.
        return 1
    door = () if socket_path else helper_argv()  # the helper command it used
    updates: dict[str, Any] = {
        "SDOriginalCmd": ad.cmd,
        "SDOriginalArguments": " ".join(shlex.quote(a) for a in ad.arguments),
        "SDVMDomain": reply["domain"],
        "SDVMMemoryMiB": reply["memory_mib"],
        "SDVMCpus": reply["vcpus"],
        "Cmd": str(HOOKS_DIR / "runner"),
        "Arguments": runner_arguments(ad.global_job_id, socket_path, door),
        "Args": runner_arguments(ad.global_job_id, socket_path, door),
        "HookStatusCode": int(HookStatus.OK),
        "HookStatusMessage": f"sd-batch: VM {reply['domain']} ready "
        f"({reply['description']}, {reply['memory_mib']} MiB, "
        f"{_cpus(reply['vcpus'])})",
    }
    if socket_path:  # for JOB_EXIT, which need not read the knob again (`known_socket`)
        updates[SOCKET_ATTRIBUTE] = socket_path
    resumed = _offer_checkpoint(ad.global_job_id, sandbox)
    if resumed is not None:
        updates["SDVMResumed"] = resumed
        if resumed:
            updates["HookStatusMessage"] += "; resumes from its checkpoint"
    stdout.write(format_updates(updates))
    return 0


def runner_arguments(job_id: str, socket_path: str, helper_command: Sequence[str] = ()) -> str:
    """The runner's arguments: the job, and the door PREPARE_JOB used, when it is plain words:
    the service's socket (the runner asks it at once, without reading HTCondor's config), else
    the helper command. Named here, the door is not the job's environment's to choose."""
    if socket_path and _PLAIN_PATH.fullmatch(socket_path):
        return f"--job {job_id} --socket {socket_path}"
    if helper_command and all(_PLAIN_WORD.fullmatch(word) for word in helper_command):
        return f"--job {job_id} --helper {' '.join(helper_command)}"
    return f"--job {job_id}"


_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./+-]{1,200}")
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./+=:-]{1,200}")


def _offer_checkpoint(job_id: str, sandbox: Path) -> bool | None:
    """The checkpoint an evicted run left in the sandbox (HTCondor brought it back from the
    spool): sent to the privileged side, which checks it and restores the VM from it at `run`.
    None when there is none; False (said on stderr, never a hold) when it cannot be used. The
    file is consumed either way: a later eviction writes a new one."""
    from ..staging import CHECKPOINT_FILE

    path = sandbox / CHECKPOINT_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as source:
            if os.fstat(source.fileno()).st_size == 0:
                return None

            def write(out: IO[bytes]) -> None:
                while chunk := source.read(1 << 20):
                    out.write(chunk)

            reply, _socket = streamed("restore", job_id, write)
    except (SdError, OSError) as exc:
        reply = {"restored": False, "reason": f"the checkpoint could not be sent: {exc}"}
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    if not reply.get("restored"):
        line = f"sd-batch: the job starts afresh: {reply.get('reason')}\n"
        sys.stderr.write(line)  # the starter's log; the runner puts it on the job's stderr
        with contextlib.suppress(OSError):
            fd = os.open(
                sandbox / REFUSED_NOTE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600
            )
            with os.fdopen(fd, "w") as note:
                note.write(line[:4096])
        return False
    return True


def _cpus(count: object) -> str:
    return f"{count} vCPU" + ("" if count == 1 else "s")


#: Bigger is no machine ad a starter writes: a forged one, refused rather than read.
MAX_MACHINE_AD_BYTES = 1024**2


def _machine_ad(sandbox: Path) -> str | None:
    """The slot's machine ad, which the starter writes before PREPARE_JOB runs
    (`Starter::WriteAdFiles`, called from `createTempExecuteDir`): `_CONDOR_MACHINE_AD`, else
    `.machine.ad` in the scratch dir; None when there is none (the VM is then sized from the
    job's requests alone). The slot user can rewrite it, but it can only make the VM smaller:
    requests and site policy bound the VM without it."""
    path = Path(os.environ.get("_CONDOR_MACHINE_AD") or sandbox / ".machine.ad")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MACHINE_AD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StagingError(f"cannot read the slot's machine ad {path}: {exc.strerror}") from exc
    if len(data) > MAX_MACHINE_AD_BYTES:
        raise StagingError(f"the slot's machine ad {path} is over {MAX_MACHINE_AD_BYTES} bytes")
    return data.decode("utf-8", "replace")


# -- the runner ----------------------------------------------------------------------------------
def run_job(
    job_id: str,
    sent: socket.socket | None = None,
    *,
    vacated: bool = False,
    sandbox: Path | None = None,
    known: str | None = None,
) -> int:
    """The runner's work: SENT is the connection whose `run` request is already out (the
    runner's early request), else the service is found here (or the helper command used).
    KNOWN is the service's socket PREPARE_JOB named: a restarted service is looked for there,
    not where the job's environment or HTCondor's knob would say."""
    sandbox = sandbox or Path(os.environ.get("_CONDOR_SCRATCH_DIR") or Path.cwd())
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="sd-batch %(name)s: %(levelname)s %(message)s"
    )
    # Everything the runner needs after the VM is loaded before it: a package upgrade may
    # replace the code on disk while the VM runs, and a module first imported then would be
    # the new version's (tests/test_package.py checks a job across an upgrade).
    from .. import staging  # noqa: F401

    _say_refused(sandbox)
    sock = sent or service_socket(known=known)
    if sock is None:
        return _run_through_helper(job_id, sandbox)
    # HTCondor's SIGTERM (remove, hold) kills us as it comes: the service sees us hang up and
    # destroys the VM. Its KillSig, which the schedd transform makes SIGUSR2, is a vacate: we
    # ask the service to save the VM and wait for the checkpoint (`_save_checkpoint`).
    link = _Link(sock)
    signal.signal(signal.SIGUSR2, link.vacate)
    if vacated:
        link.vacate()
    asked = sent is not None
    while True:
        try:
            return _run_on(link, job_id, sandbox, asked=asked)
        except HelperFailed as exc:  # the service went away before the VM's end
            again = _service_again(reattach_seconds(), known)
            if again is None:
                print(f"sd-batch: {exc}", file=sys.stderr)
                return _requeue()
            print(
                "sd-batch: the helper service restarted: waiting on the VM again", file=sys.stderr
            )
            link.sock, asked = again, False


#: How long a runner whose service went away mid-run waits for the next one (a package
#: upgrade under systemd stops the old service before it starts the new; a crash restarts it
#: RestartSec later). The job's VM runs on meanwhile; past this, the job goes back to Idle.
REATTACH_SECONDS = 180.0


def reattach_seconds() -> float:
    """The knob SMARTDOMAINS_REATTACH_SECONDS, else REATTACH_SECONDS (read only when needed:
    the bindings cost a hook ~70 ms)."""
    from ..condor.jobad import condor_param

    try:
        value = float(condor_param("SMARTDOMAINS_REATTACH_SECONDS") or REATTACH_SECONDS)
    except ValueError:
        return REATTACH_SECONDS
    return value if 0 <= value <= 86400 else REATTACH_SECONDS


class _Link:
    """The runner's connection to the service, replaced when the service restarts; a vacate
    is remembered and said again to the next service."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.vacating = sock, False

    def vacate(self, _signum: int = 0, _frame: object = None) -> None:
        self.vacating = True
        with contextlib.suppress(OSError):  # a service gone: the next one hears it
            self.sock.sendall(EVICT_LINE)


def _run_on(link: _Link, job_id: str, sandbox: Path, *, asked: bool = False) -> int:
    """One `run` conversation (ASKED: its request is out already); HelperFailed when the
    service went away before its status."""
    with link.sock as sock, sock.makefile("rb") as stream:
        if not asked:
            request(sock, "run", job_id)  # and our side stays open: closing it is hanging up
        if link.vacating:
            link.vacate()
        try:
            status = service_reply(stream)
            if status.get("evicted"):
                return _save_checkpoint(status, stream, sandbox)
            if not status.get("ok"):
                print(f"sd-batch: {status.get('message')}", file=sys.stderr)
                code = int(status.get("exit", 1))
                if code in (VM_TIMEOUT_EXIT, VM_LOST_EXIT):
                    return code  # the transform's OnExitHold holds the job
                return _requeue() if code == os.EX_TEMPFAIL else 1
            result = _read_result(stream, sandbox)
        except HelperFailed:
            raise
        except SdError as exc:
            print(f"sd-batch: cannot read the job's result: {exc}", file=sys.stderr)
            return 1
    return _finish(result)


def _service_again(patience: float, known: str | None = None) -> socket.socket | None:
    """The next helper service, once it answers (None after PATIENCE seconds)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        sock = service_socket(known=known)
        if sock is not None:
            return sock
        time.sleep(0.5)
    return None


def _say_refused(sandbox: Path) -> None:
    """PREPARE_JOB's word on a checkpoint it could not use, on the job's own stderr."""
    path = sandbox / REFUSED_NOTE
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as note:
            sys.stderr.write(note.read(4096).decode("utf-8", "replace"))
            sys.stderr.flush()
        path.unlink()


def _save_checkpoint(status: dict[str, Any], stream: IO[bytes], sandbox: Path) -> int:
    """The vacated job's checkpoint (the service's `checkpoint` bytes) into the sandbox, where
    HTCondor's ON_EXIT_OR_EVICT takes it to the spool; an empty file when there is none, so an
    older one is not brought back."""
    from ..staging import CHECKPOINT_FILE

    size = int(status.get("checkpoint") or 0)
    partial = sandbox / f".{CHECKPOINT_FILE}.part"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        left = size
        while left > 0 and (chunk := stream.read(min(left, 1 << 20))):
            out.write(chunk)
            left -= len(chunk)
        if left:
            out.truncate(0)
    partial.replace(sandbox / CHECKPOINT_FILE)
    if size and not left:
        print(
            f"sd-batch: the job was vacated: its VM was saved ({size} bytes in "
            f"{CHECKPOINT_FILE}); it resumes at its next start",
            file=sys.stderr,
        )
    else:
        print(
            f"sd-batch: the job was vacated and starts afresh next time: "
            f"{status.get('message') or 'the checkpoint was cut short'}",
            file=sys.stderr,
        )
    return VM_REQUEUE_EXIT


def _run_through_helper(job_id: str, sandbox: Path) -> int:
    import subprocess

    proc = helper(["run", job_id], stdout=subprocess.PIPE)
    if proc.stdout is None:
        raise OSError("the helper command has no stdout pipe")

    def forward(signum: int, _frame: object) -> None:
        # the helper destroys the VM at once (no checkpoint through sudo: a vacate is a stop)
        proc.send_signal(signal.SIGTERM if signum == signal.SIGUSR2 else signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
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
    from ..staging import read_result

    return read_result(stream, sandbox, max_bytes=MAX_RESULT_BYTES, max_files=MAX_RESULT_FILES)


def _finish(result: JobResult) -> int:
    """The payload's stdout and stderr on ours, and its exit (or its signal) as ours."""
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(result.stderr)
    if result.error:  # the guest's words: one clipped line
        sys.stderr.write(f"sd-batch: {clipped(result.error)}\n")
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
    print(
        "sd-batch: this worker could not run the job's VM (the message above says why); "
        "the job goes back to Idle and runs again",
        file=sys.stderr,
    )
    return VM_REQUEUE_EXIT  # the site's job transform makes OnExitRemove false for it


# -- JOB_EXIT, UPDATE_JOB_INFO, startd cron ---------------------------------------------------
def job_exit(argv: Sequence[str], stdin: IO[str], timeout: float = 25.0) -> int:
    reason = argv[0] if argv else "exit"
    if reason not in JOB_EXIT_REASONS:
        log.warning("unknown JOB_EXIT reason %r: cleaning up anyway", reason)
    try:
        ad_text = stdin.read()
        job_id = global_job_id(ad_text)
        reply = checked(call(["cleanup", job_id], timeout, known=known_socket(ad_text)))
        log.info("job %s (%s): removed %s", job_id, reason, reply.get("removed"))
    except (SdError, OSError) as exc:
        print(
            f"sd-batch: JOB_EXIT {reason}: cleanup incomplete ({exc}); the reaper will finish it",
            file=sys.stderr,
        )
    return 0  # HTCondor ignores JOB_EXIT's status; our own log says what happened


def plain_string(ad_text: str, name: str, chars: str) -> str | None:
    """NAME's value in an old-syntax ad without the ClassAd library (60 ms of a 150 ms hook)
    when the ad defines it once, as a plain string of CHARS (a regex class: no quote, no
    backslash, so the text is the value); else None."""
    defines = rf"^[ \t]*{name}[ \t]*="
    found = re.findall(
        defines + rf'[ \t]*"({chars}{{1,255}})"[ \t]*$', ad_text, re.IGNORECASE | re.MULTILINE
    )
    if len(found) == 1 and len(re.findall(defines, ad_text, re.IGNORECASE | re.MULTILINE)) == 1:
        return str(found[0])
    return None


def global_job_id(ad_text: str) -> str:
    """The job ad's GlobalJobId, as `jobad.parse_job_ad` reads it: `plain_string` when it is
    one (what a schedd writes), else the ad is parsed. Either way the service acts only on the
    caller's own jobs."""
    found = plain_string(ad_text, "GlobalJobId", "[A-Za-z0-9_.:@#+-]")
    if found is not None:
        return found
    from ..condor.jobad import parse_job_ad

    return parse_job_ad(ad_text).global_job_id


def known_socket(ad_text: str) -> str | None:
    """The service's socket PREPARE_JOB used (`SDHelperSocket` in the job ad), if it did.
    Only the job's own user can have set it otherwise, and a hook runs as that user: the worst
    a false one does is leave that user's VM to the reaper."""
    found = plain_string(ad_text, SOCKET_ATTRIBUTE, "[A-Za-z0-9_./@+-]")
    return found if found and found.startswith("/") else None


def startd_cron(stdout: IO[str]) -> int:
    from ..condor.jobad import format_updates

    try:
        report = call(["probe"], 20.0)
    except (SdError, OSError) as exc:
        report = {
            "ok": False,
            "reason": f"the privileged helper cannot be run: {exc}",
            "templates": [],
            "free_memory_mib": None,
        }
    updates: dict[str, Any] = {
        "HasSmartDomains": bool(report.get("ok")),
        "SmartDomainsTemplates": ",".join(report.get("templates") or []),
        "SmartDomainsFreeVMMemory": int(report.get("free_memory_mib") or 0),
        "SmartDomainsOfflineReason": str(report.get("reason") or ""),
    }
    needs = report.get("needs")
    needs = needs if isinstance(needs, dict) else {}
    updates["SmartDomainsOutputDisk"] = int(report.get("output_disk_kib") or 0)
    for attribute, key in TEMPLATE_NEEDS.items():  # [ minimal = 256; 'debian-batch' = 512 ]
        updates[attribute] = {
            name: int(need[key])
            for name, need in sorted(needs.items())
            if isinstance(need, dict) and isinstance(need.get(key), int)
        }
    stdout.write(format_updates(updates))
    stdout.flush()  # the node's state first: a slow reap must not hold it back
    _reap_quietly()
    return 0


def _reap_quietly(timeout: float = 60.0) -> None:
    """The reaper, every cron run (cheap when nothing is left): its failures are logged on
    stderr, never published, so they cannot take the node out (HasSmartDomains)."""
    try:
        reply = call(["reap"], timeout)
        for line in reply.get("actions") or [reply.get("message", "")]:
            if line:
                log.info("reaper: %s", line)
    except (SdError, OSError) as exc:
        log.warning("reaper could not run: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="sd-batch %(name)s: %(levelname)s %(message)s"
    )
    verb, rest = (args[0], args[1:]) if args else ("", [])
    sandbox = Path(os.environ.get("_CONDOR_SCRATCH_DIR") or Path.cwd())
    if verb == "prepare-job":
        return prepare_job(sys.stdin, sys.stdout, sandbox)
    if verb == "job-exit":
        return job_exit(rest, sys.stdin)
    if verb == "update-job-info":
        sys.stdin.read()
        return 0
    if verb == "startd-cron":
        return startd_cron(sys.stdout)
    print(
        "usage: python -m sd_batch.helper.hooks {prepare-job,job-exit,update-job-info,"
        "startd-cron} [args] (the runner is sd_batch/helper/runner.py)",
        file=sys.stderr,
    )
    return 2


def exit_now(code: int) -> NoReturn:
    """End a hook at once, its output flushed: the interpreter's teardown (every module's
    and the ClassAd library's cleanup: ~7 ms of a ~100 ms PREPARE_JOB) frees only what the
    kernel frees anyway. The only atexit work is logging's flush of its stderr handler,
    flushed here; a flush that fails ends the usual way, which reports it."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - the interpreter's own exit says what went wrong
        sys.exit(code)
    os._exit(code)


#: The verbs that are short processes; the runner lives as long as the job and exits as usual.
QUICK_VERBS = ("prepare-job", "job-exit", "update-job-info", "startd-cron")

if __name__ == "__main__":
    status = main()
    if sys.argv[1:2] and sys.argv[1] in QUICK_VERBS:
        exit_now(status)
    sys.exit(status)
