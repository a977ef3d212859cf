"""Untrusted work on the root side, in a child process with resource limits and a deadline.

A job's own description can ask for exponential work in a few bytes (a 1.9 KB `.sf` grew the
helper service to 24 GB and the kernel's OOM killer chose it), and its input tar and its
guest's output disk are hostile too. So that work runs here: in a child with RLIMIT_AS (address
space), RLIMIT_CPU, RLIMIT_FSIZE and RLIMIT_NOFILE, killed by the parent at a wall-clock
deadline. Whatever it exceeds is the job's own doing: a `LimitExceeded` (a `PolicyError`, so
the job is held, never requeued) naming the limit and the site setting that sets it. The
parent only waits; it never grows.

The helper service is threaded, and forking a threaded process is risky (a lock another thread
held stays held in the child), so the service calls `start_forkserver` once at start: each
child then forks from multiprocessing's single-threaded fork server, which imported the
modules the work needs already (a child costs a few milliseconds, not an interpreter). The
one-shot sudo helper has no threads of its own and forks directly.
May import: errors, the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import pickle
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ChildFailed, Disposition, LimitExceeded, SdError, clipped

T = TypeVar("T")
_EXIT_UNREPORTED = 86
_context: Any = None  # the fork server's context once started; else plain fork


@dataclass(frozen=True, slots=True)
class ChildLimits:
    """What one piece of untrusted work may use; `setting` names each in the site config."""

    memory_mib: int = 1024
    cpu_seconds: int = 30
    wall_seconds: float = 60.0
    file_mib: int = 64
    open_files: int = 64
    #: The only capabilities a root child keeps (`capabilities`); the rest go, with
    #: no_new_privs, before the work starts.
    keep_capabilities: tuple[int, ...] = ()
    #: What the work is, for messages: "the job's description" ... "to resolve".
    what: str = "the job's untrusted input"
    doing: str = "to read"
    settings: tuple[str, str, str] = (
        "[policy] max_resolve_mib",
        "[policy] max_resolve_cpu_seconds",
        "[policy] max_resolve_seconds",
    )


def start_forkserver(preload: Sequence[str]) -> None:
    """Start multiprocessing's fork server now (a long-lived service does, before its threads
    serve requests), importing PRELOAD there once; children fork from it from then on."""
    global _context
    _unhook_main()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    from multiprocessing import forkserver

    forkserver.ensure_running()
    _context = context


def _unhook_main() -> None:
    """Keep every child from running this process's `__main__` again, from its file.

    multiprocessing hands each fork-server child the parent's main module by name (a `-m`
    service) or path, and the child executes that file anew (`spawn.prepare`) so objects
    defined there unpickle. Our work is never defined in `__main__`; and after a package
    upgrade that file is the new version's code, run inside the old version's process (the
    draining service's result read failed: a job across an upgrade was held). So
    `sys.modules["__main__"]` becomes an empty stand-in, with neither spec nor file: the
    child leaves its own alone. The running main module keeps its globals (its functions hold
    them), only the registry entry changes."""
    import sys
    import types

    main = sys.modules.get("__main__")
    if main is not None and (main.__spec__ is not None or hasattr(main, "__file__")):
        sys.modules["__main__"] = types.ModuleType("__main__", main.__doc__)


def run_confined(work: Callable[..., T], args: tuple[Any, ...], limits: ChildLimits) -> T:
    """`work(*args)` in a child under LIMITS: its return value, or its SdError again (as a
    `ChildFailed`), or a `LimitExceeded` naming the limit it overran."""
    context = _context or multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(sender, limits, work, args), daemon=True, name="sd-batch confined"
    )
    started = time.monotonic()
    child.start()
    sender.close()
    outcome, late = None, False
    try:
        if receiver.poll(limits.wall_seconds):
            outcome = receiver.recv()
        else:
            late = True
    except (EOFError, OSError):  # it died before it answered: a limit's signal, see below
        pass
    finally:
        receiver.close()
        if late:
            child.kill()
        if outcome is None:  # how it ended says why; an answer needs no wait for its exit
            child.join(5.0)  # (multiprocessing reaps it at the next start)
        if child.exitcode is None and outcome is None:  # it should have ended: do not wait on
            child.kill()
            child.join(5.0)
    if outcome is None:
        raise _overrun(limits, None if late else child.exitcode, time.monotonic() - started)
    kind, value = outcome
    if kind == "ok":
        return value  # type: ignore[no-any-return]
    if kind == "memory":
        raise _memory(limits)
    if kind == "raise":
        raise value
    if kind == "oserror":
        number, text = value
        if number == errno.EMFILE:
            raise LimitExceeded(
                f"{limits.what} needed more than {limits.open_files} open files {limits.doing}"
            )
        if number == errno.EFBIG:  # Python ignores SIGXFSZ: the write fails instead
            raise LimitExceeded(
                f"{limits.what} wrote a file larger than {limits.file_mib} MiB {limits.doing}"
            )
        raise OSError(number, text)
    if kind == "crash":
        raise RuntimeError(f"{limits.what} {limits.doing}: {value}")
    message, disposition, name = value
    raise ChildFailed(message, Disposition(disposition), name)


def _memory(limits: ChildLimits) -> LimitExceeded:
    return LimitExceeded(
        f"{limits.what} needed more than {limits.memory_mib} MiB "
        f"{limits.doing} (site limit {limits.settings[0]})"
    )


def _overrun(limits: ChildLimits, exitcode: int | None, took: float) -> LimitExceeded:
    """Why a child gave no answer, from how it ended."""
    if exitcode in (-signal.SIGXCPU, -signal.SIGKILL):  # the soft, then the hard CPU limit
        return LimitExceeded(
            f"{limits.what} needed more than {limits.cpu_seconds} s of CPU "
            f"{limits.doing} (site limit {limits.settings[1]})"
        )
    if exitcode == -signal.SIGXFSZ:
        return LimitExceeded(
            f"{limits.what} wrote a file larger than {limits.file_mib} MiB {limits.doing}"
        )
    if exitcode in (-signal.SIGSEGV, -signal.SIGABRT, _EXIT_UNREPORTED):
        return _memory(limits)  # out of memory where Python could not even report it
    if exitcode is None:  # we killed it at the deadline
        return LimitExceeded(
            f"{limits.what} took more than {limits.wall_seconds:.0f} s "
            f"{limits.doing} (site limit {limits.settings[2]})"
        )
    return LimitExceeded(
        f"{limits.what} could not be processed: its child process ended with status {exitcode}"
    )


def _child(
    out: Connection, limits: ChildLimits, work: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    """In the child: the limits first, then the work; the answer goes back through OUT. What
    cannot even be answered (out of memory while reporting) ends it with _EXIT_UNREPORTED."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        mib = 1024 * 1024
        # OPEN_FILES more than the descriptors it came with (a plain fork inherits the
        # parent's; RLIMIT_NOFILE bounds descriptor numbers, not a count)
        inherited = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1  # noqa: PTH208
        # likewise MEMORY_MIB more address space than it started with: a fork of a helper
        # with libvirt's threads and arenas inherits hundreds of MiB it never touches
        for which, value in (
            (resource.RLIMIT_AS, _address_space() + limits.memory_mib * mib),
            (resource.RLIMIT_CPU, limits.cpu_seconds),
            (resource.RLIMIT_FSIZE, limits.file_mib * mib),
            (resource.RLIMIT_NOFILE, inherited + limits.open_files),
            (resource.RLIMIT_CORE, 0),
        ):
            # SIGXCPU at the soft CPU limit, SIGKILL a second later at the hard one
            hard = value + 1 if which == resource.RLIMIT_CPU else value
            resource.setrlimit(which, (value, hard))
        try:
            drop_capabilities(limits.keep_capabilities)
            outcome: tuple[str, Any] = ("ok", work(*args))
        except BaseException as exc:  # noqa: BLE001 - every way out is reported
            outcome = _reported(exc, limits)
        out.send(outcome)
        out.close()
    except BaseException:  # noqa: BLE001
        os._exit(_EXIT_UNREPORTED)
    os._exit(0)  # nothing of the parent's (atexit, buffers) runs twice


def _address_space() -> int:
    """This process's address space now (VmSize), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _reported(exc: BaseException, limits: ChildLimits) -> tuple[str, Any]:
    """The child's failure as the parent gets it. Short of memory, CPython does not always
    raise MemoryError (a SystemError from C code that could not allocate, a library turning
    it into its own error): a failure past half the address space counts as memory too."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    short = peak > limits.memory_mib * 1024 * 1024 // 2
    if isinstance(exc, (MemoryError, SystemError)) or (short and not isinstance(exc, SdError)):
        return ("memory", None)
    if isinstance(exc, RecursionError):
        return (
            "error",
            (
                f"{limits.what} is nested too deeply {limits.doing}",
                Disposition.HOLD.value,
                "RecursionError",
            ),
        )
    if isinstance(exc, SdError):
        with contextlib.suppress(Exception):  # the error itself, when it survives pickling
            if type(pickle.loads(pickle.dumps(exc))) is type(exc):
                return ("raise", exc)
        text = exc.headline() if hasattr(exc, "headline") else str(exc)
        return ("error", (clipped(text), exc.disposition.value, type(exc).__name__))
    if isinstance(exc, OSError):  # the caller tells a full disk (requeue) from the job's doing
        return ("oserror", (exc.errno, clipped(exc.strerror or str(exc))))
    return ("crash", clipped(repr(exc)))  # a bug of ours: the caller's "internal error"


#: Capabilities by number (linux/capability.h): what a confined child may keep.
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 24, 38


def drop_capabilities(keep: tuple[int, ...]) -> None:
    """As root: every capability but KEEP gone for good (bounding set, effective, permitted,
    inheritable) and no_new_privs set, so the child can read (and, with CAP_DAC_OVERRIDE,
    write) the job's files but not signal, trace, chown, mount or load anything. The job's
    folder is root's 0700, so root's uid stays; its powers do not. Not root: nothing to drop."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        dropped = cap in keep or libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0
        if not dropped and ctypes.get_errno() != errno.EPERM:  # EPERM: no CAP_SETPCAP here
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")
    mask = sum(1 << cap for cap in keep if cap < 32)
    data = (Data * 2)(Data(mask, mask, 0), Data(0, 0, 0))
    if libc.capset(ctypes.byref(Header(_LINUX_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
