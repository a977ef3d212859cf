"""The one exception hierarchy of sd-batch.

Every error a user, a description, the site or the host can cause is an `SdError`. Each class says
how a job hook must treat it (`disposition`: hold the job, or send it back to Idle) and how the CLI
exits (`exit_code`), so the two mapping places (`cli/main.py`, `helper/hooks.py`) never guess
from messages. Foreign exceptions (lark, libvirt, OSError) are translated at their one boundary
with `raise ... from exc`. Every public exception of sd_batch is defined here
(tests/test_layering.py checks). Layer: pure core. May import: the standard library only.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Disposition(enum.Enum):
    """What an HTCondor hook does with a job that hit this error."""

    HOLD = "hold"  # the job can never run as written: the user must act
    REQUEUE = "requeue"  # a host problem: let the job run elsewhere or later


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """A place in a description file, 1-based like every compiler's messages."""

    file: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class SdError(Exception):
    """Root of every error sd-batch reports to a person."""

    disposition = Disposition.HOLD
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class UsageError(SdError):
    """The command line asks for something impossible."""

    exit_code = 2


class ConfigError(SdError):
    """The site configuration is missing or wrong: an admin must fix it."""

    disposition = Disposition.REQUEUE
    exit_code = 3


class DescriptionError(SdError, ValueError):
    """A description cannot be read or resolved. Carries where, so users can fix it."""

    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        loc: SourceLocation | None = None,
        path: str | None = None,
        hint: str | None = None,
        source_line: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.loc = loc
        self.path = path
        self.source_line = source_line

    def headline(self) -> str:
        """`file:line:col: message; hint` on one line, as in a HoldReason (a name or value a
        description repeats a megabyte long is clipped: the place says where it is)."""
        text = _clip(self.message)
        if self.hint:
            text = f"{text}; {_clip(self.hint)}"
        if self.loc is not None:
            return f"{self.loc}: {text}"
        return text

    def __str__(self) -> str:
        lines = [self.headline()]
        if self.source_line is not None and self.loc is not None:
            line, column, end = _around(self.source_line.rstrip("\n"), self.loc.column - 1)
            width = 1
            if self.loc.end_line == self.loc.line and self.loc.end_column:
                width = max(1, self.loc.end_column - self.loc.column)
            lines.append(line)
            lines.append(" " * column + "^" * max(1, min(width, end - column)))
        return "\n".join(lines)


#: Longest message, hint or quoted source line shown whole.
SHOWN_CHARS = 1000
#: How much of a longer source line is shown before and after the place of an error.
_CONTEXT = 80


def _clip(text: str) -> str:
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[: SHOWN_CHARS - 200]}...{text[-197:]}"


def _around(line: str, column: int) -> tuple[str, int, int]:
    """LINE cut to a window around COLUMN (0-based) when it is too long to quote whole; the
    column in it, and where its text ends (before a closing `...`)."""
    if len(line) <= SHOWN_CHARS:
        return line, column, len(line) + 1
    start, end = max(0, column - _CONTEXT), column + _CONTEXT
    prefix = "..." if start else ""
    suffix = "..." if end < len(line) else ""
    text = prefix + line[start:end]
    return text + suffix, column - start + len(prefix), len(text)


class DescriptionSyntaxError(DescriptionError):
    """The text is not the SmartFrog language."""


class IncludeError(DescriptionError):
    """An `#include` names a file that is missing, unreadable or included in a cycle."""


class ResolutionError(DescriptionError):
    """Type, place or function resolution failed (bad prototype, bad operator operands...)."""


class FunctionFailed(ResolutionError):
    """A SmartFrog function (lang/functions.py) refused its arguments; the caller adds where."""


class UnresolvedReference(DescriptionError):
    """A reference points at nothing (SmartFrog's "Unresolved Reference")."""


class CyclicReference(DescriptionError):
    """References lead back to themselves."""


class TbdError(DescriptionError):
    """An attribute under sfConfig is still TBD (to be defined)."""


class BudgetExceeded(DescriptionError):
    """A description asks for more work than its budget allows (`lang.budget`): an
    exponential bomb, or a description far larger than any real one. `budget` names which."""

    def __init__(
        self,
        message: str,
        *,
        budget: str,
        loc: SourceLocation | None = None,
        hint: str | None = None,
        source_line: str | None = None,
    ) -> None:
        super().__init__(message, loc=loc, hint=hint, source_line=source_line)
        self.budget = budget


class DescriptionErrors(DescriptionError):
    """Several independent problems found in one pass; `errors` lists them all, or the first
    ones when `truncated` (the errors budget stopped the pass: there are more)."""

    def __init__(self, errors: Iterable[DescriptionError], *, truncated: bool = False) -> None:
        self.errors = tuple(errors)
        if not self.errors:
            raise ValueError("DescriptionErrors needs at least one error")
        self.truncated = truncated
        first = self.errors[0]
        super().__init__(
            first.message,
            loc=first.loc,
            path=first.path,
            hint=first.hint,
            source_line=first.source_line,
        )

    def headline(self) -> str:
        more = len(self.errors) - 1
        suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        if self.truncated:
            suffix = f" (and {more} more errors, and more not checked)"
        return self.errors[0].headline() + suffix

    def __str__(self) -> str:
        lines = [str(e) for e in self.errors]
        if self.truncated:
            lines.append(f"... and more errors (stopped after {len(self.errors)})")
        return "\n".join(lines)


class SpecError(DescriptionError):
    """A resolved description asks for a VM that cannot be built (bad memory, unknown flavour)."""


class PolicyError(SdError):
    """Site policy refuses what a description asks for. The user must change the request."""

    exit_code = 5


class PolicyLimitReached(PolicyError):
    """The caller or the host already runs as many job VMs as the site allows: try later."""

    disposition = Disposition.REQUEUE


class HypervisorError(SdError):
    """libvirt refused or failed. `transient` errors (daemon down, timeouts) are worth retrying.

    Either way it is the worker's problem, not the user's: a job goes back to Idle to run on
    another node (whose startd cron still says HasSmartDomains), never on hold.
    """

    disposition = Disposition.REQUEUE
    exit_code = 6

    def __init__(self, message: str, *, transient: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient


class ShutoffTimeout(HypervisorError):
    """A domain still runs after the time we were willing to wait."""


class DiskWriteError(HypervisorError):
    """The hypervisor paused a domain because a host disk refused its writes (full, failing):
    QEMU's default on ENOSPC. Nothing the guest does resumes it, so waiting would hang."""


class DomainNotFound(HypervisorError):
    """The domain is not (or no longer) defined on that host."""


class LedgerError(SdError):
    """The state ledger cannot be read or written."""

    disposition = Disposition.REQUEUE
    exit_code = 7


class OwnerExists(LedgerError):
    """An owner that must be new (a pool being started) is already recorded."""

    disposition = Disposition.HOLD


class DeployError(SdError):
    """A pool or VM could not be started; whatever was started has been rolled back."""

    exit_code = 8


class StagingError(SdError):
    """Moving a job's files into or out of its VM failed or was refused as unsafe."""

    exit_code = 9


class HostStorageError(StagingError):
    """The worker cannot write a job's files (its state dir is full, read-only, failing):
    the host's problem, so the job goes back to Idle."""

    disposition = Disposition.REQUEUE


class NoHostHasCapacity(DeployError):
    """Placement found no host for some VMs (`vms`), so nothing was started."""

    def __init__(
        self,
        message: str,
        *,
        vms: tuple[str, ...] = (),
        tightest: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.vms = vms
        self.tightest = tightest


#: The runner's exit codes for a job whose VM failed: the site's job transform (OnExitHold in
#: SMARTDOMAINS_TRANSFORM and 99-smartdomains.conf, evaluated by the shadow) holds on them.
VM_TIMEOUT_EXIT = 170
VM_LOST_EXIT = 171
#: ... and for "the host could not run the VM" (libvirtd gone, disk full): OnExitRemove false,
#: back to Idle.
VM_REQUEUE_EXIT = 172


class VMFailed(DeployError):
    """The job's VM never powered off in time (`VM_TIMEOUT_EXIT`), or stopped without writing a
    result: it crashed or was destroyed from outside (`VM_LOST_EXIT`). The job is held."""

    def __init__(self, message: str, *, run_exit: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.run_exit = run_exit


class JobAdError(SdError):
    """A job ad (or its Arguments/Environment) cannot be read: the job must be fixed or held."""


class GuestBuildError(ConfigError):
    """The guest image cannot be built (packages missing, apt offline, odd kernel).

    A ConfigError: the site admin fixes the host, and jobs requeue meanwhile.
    """


class HarnessError(SdError):
    """The submit file or the local set-up does not allow running the job here."""

    exit_code = 1


class HelperFailed(SdError):
    """The privileged helper refused or failed; carries its disposition."""

    def __init__(self, message: str, disposition: Disposition) -> None:
        super().__init__(message)
        self._disposition = disposition

    @property
    def disposition(self) -> Disposition:  # type: ignore[override]
        return self._disposition


class BadRequest(SdError):
    """A request the helper service's protocol does not allow; its text is the reply's message.
    The caller's door sends it back to Idle (a hook of another version, say)."""

    disposition = Disposition.REQUEUE


class PoolNotFound(SdError):
    """A pool the user did not start here (or that is gone): the same answer for both."""


#: The longest message a hold reason, a hook's status message or a guest's error becomes.
MAX_MESSAGE = 1024


def clipped(text: str, limit: int = MAX_MESSAGE) -> str:
    """TEXT as one printable line of at most LIMIT characters: what reaches a HoldReason or a
    log may come from a job or its guest (a 980 KB HoldReason was possible), and control
    characters there could forge log lines or terminal escapes."""
    line = "".join(c if c.isprintable() else " " for c in text[: limit * 4]).strip()
    return line if len(line) <= limit else line[: limit - 14] + " [... clipped]"


class LimitExceeded(PolicyError):
    """Untrusted work overran a confined child's limit (`batch.confined`): the job's own
    doing, so it is held, never requeued."""


class ChildFailed(SdError):
    """A confined child's own SdError when it does not survive pickling whole (keyword-only
    arguments): its text, disposition and class name. Others come back as themselves."""

    def __init__(self, message: str, disposition: Disposition, kind: str) -> None:
        super().__init__(message)
        self._disposition, self.kind = disposition, kind

    @property
    def disposition(self) -> Disposition:  # type: ignore[override]
        return self._disposition


class InputTimeout(SdError):
    """A prepare's input disk did not reach the helper service in time: the hook is stuck or
    trickles on purpose; the job goes back to Idle (the service held a thread long enough)."""

    disposition = Disposition.REQUEUE


class CheckpointUnusable(SdError):
    """An evicted job's checkpoint cannot be restored here (corrupt, another job's, another
    image or flavour, too big): never a hold, the job starts afresh and stderr says why."""

    disposition = Disposition.REQUEUE
