"""A job as the root side knows it: its key (the caller's uid and HTCondor's job id, from which
every name the job's VM gets is derived) and what it may ask for (`JobLimits`). Below both the
job's description and its VM's life, which take them.

May import: errors, config, vm (site policy), the standard library.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config.site import SiteConfig
from ..errors import PolicyError
from ..vm.site_policy import SitePolicy

JOB_ID = re.compile(r"[A-Za-z0-9_.:@#+-]{1,255}")


@dataclass(frozen=True, slots=True)
class JobLimits:
    """What one job may ask for: the site's [policy] (`JobLimits.of(config.policy)`), plus
    bounds on the helper's own work. The defaults are `SitePolicy()`'s."""

    policy: SitePolicy = field(default_factory=SitePolicy)
    max_input_bytes: int = 2 * 1024**3
    output_disk_bytes: int = 256 * 1024**2
    max_description_files: int = 64
    max_description_bytes: int = 1024**2
    run_timeout_seconds: float = 24 * 3600.0

    @classmethod
    def of(cls, policy: SitePolicy) -> JobLimits:
        return cls(
            policy,
            max_input_bytes=policy.max_input_bytes,
            output_disk_bytes=policy.output_disk_bytes,
            run_timeout_seconds=float(policy.max_run_seconds),
        )


@dataclass(frozen=True, slots=True)
class JobKey:
    """A job as the helper knows it: the caller's uid and HTCondor's GlobalJobId."""

    uid: int
    job_id: str

    def __post_init__(self) -> None:
        if not JOB_ID.fullmatch(self.job_id):
            raise PolicyError(f"{self.job_id!r} is not an HTCondor job id")

    @property
    def owner_id(self) -> str:
        return f"{self.uid}:{self.job_id}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.owner_id.encode()).hexdigest()[:16]

    @property
    def domain(self) -> str:
        """The VM's name: derived, never chosen by the job (two jobs cannot collide)."""
        return f"sd-job-{self.digest}"

    def folder(self, config: SiteConfig) -> Path:
        return config.state_dir / "jobs" / self.digest


#: A warm VM's ledger owner id starts so (`batch.warm`); a job's never can (theirs: `<uid>:`).
WARM_PREFIX = "warm:"


@dataclass(frozen=True, slots=True)
class WarmKey(JobKey):
    """A warm VM's key (`batch.warm`): a job's names (domain, folder) for owner `warm:<id>`;
    UID is -1, no user's."""

    @property
    def owner_id(self) -> str:
        return f"{WARM_PREFIX}{self.job_id}"


#: The limits of a site with the default [policy].
DEFAULT_LIMITS = JobLimits()
