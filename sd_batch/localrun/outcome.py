"""How a proc of `sd run` ended, and the reading of its job ad that decides it.

Holds `Outcome` (the summary line, `--json` and the exit code of one proc, with `EXIT_HELD` and
`EXIT_IDLE`), the starter's merging of a hook's `Attr = value` lines into the ad
(`updated_ad`), and the shadow's job policy once the job exited (`on_exit_hold`,
`on_exit_remove`). `harness` re-exports `Outcome` and the exit codes.
May import: errors, condor.jobad, the standard library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..condor.jobad import JobAd, parse_job_ad
from ..errors import SdError

#: sd run's exit code for a held job and for one sent back to Idle (else the payload's own).
EXIT_HELD, EXIT_IDLE = 3, 4


@dataclass
class Outcome:
    """How one proc ended, for the summary line, `--json` and the exit code."""

    job: str
    global_job_id: str
    state: str  # exited | signaled | held | idle | removed | evicted | error
    exit_code: int | None = None
    exit_signal: int | None = None
    message: str = ""
    duration: float = 0.0
    outputs: list[str] = field(default_factory=list)
    stopped_by: int | None = None  # the signal that told sd run to remove/hold/evict it

    @property
    def process_exit_code(self) -> int:
        if self.state == "exited":
            return self.exit_code or 0
        if self.state == "signaled":
            return 128 + (self.exit_signal or 0)
        if self.stopped_by is not None:
            return 128 + self.stopped_by
        if self.state in ("held", "error"):
            return EXIT_HELD
        return EXIT_IDLE

    def summary(self) -> str:
        took = f" in {self.duration:.1f} s"
        outputs = f"; outputs: {', '.join(self.outputs)}" if self.outputs else "; no outputs"
        if self.stopped_by is not None:  # removed, held or evicted by a signal to sd run
            return f"job {self.job}: {self.state}{took}: {self.message}"
        if self.state == "exited":
            return f"job {self.job}: exit {self.exit_code}{took}{outputs}"
        if self.state == "signaled":
            return f"job {self.job}: killed by signal {self.exit_signal}{took}{outputs}"
        if self.state == "held":
            return f"job {self.job}: held: {self.message}"
        if self.state == "idle":
            return f"job {self.job}: back to idle: {self.message}"
        if self.state == "error":
            return f"job {self.job}: error: {self.message}"
        return f"job {self.job}: {self.state}{took}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "duration": round(self.duration, 3),
            "process_exit_code": self.process_exit_code,
        }


def stopped_state(reason: str) -> str:
    return {"remove": "removed", "hold": "held", "evict": "evicted"}.get(reason, reason)


def on_exit_hold(ad: JobAd) -> str | None:
    """The hold reason when the job's OnExitHold is true once it exited, as the shadow does."""
    try:
        if ad.get("OnExitHold") is not True:
            return None
        reason = ad.get("OnExitHoldReason")
    except SdError as exc:  # an expression evaluating to an error: the shadow holds too
        return f"the job's OnExitHold policy could not be evaluated: {exc}"
    return str(reason) if reason else "The job attribute OnExitHold expression evaluated to TRUE"


def on_exit_remove(ad: JobAd) -> bool:
    """OnExitRemove once the job exited (absent: true); false puts the job back to Idle."""
    try:
        return ad.get("OnExitRemove", True) is not False
    except SdError:
        return True


def updated_ad(ad: JobAd, updates: str) -> JobAd:
    """The ad with a hook's `Attr = value` lines applied (later lines win, as in the starter)."""
    if not updates.strip():
        return ad
    merged = parse_job_ad(ad.text.rstrip("\n") + "\n" + updates)
    names: dict[str, str] = {}
    for line in merged.text.splitlines():
        name = line.partition("=")[0].strip()
        if name and not name.startswith("#"):
            names.setdefault(name.lower(), name)
    lines = [f"{name} = {merged.expression(name)}" for name in names.values()]
    return parse_job_ad("".join(line + "\n" for line in lines))
