"""What the staging modules share: HTCondor's own sandbox files, tar block arithmetic.

May import: guest.contract, the standard library.
"""

from __future__ import annotations

import os

from ..guest import contract

#: What HTCondor itself keeps at the top of a job's scratch directory: never shipped to the
#: guest, never replaced from a result. The starter's ALWAYS_EXCLUDED_FILES (jic_shadow.cpp),
#: its chirp config, the job's remapped stdout/stderr (the manual's `_condor_stdout`), the
#: credentials directory, the job-wrapper failure report and a sandboxed starter log.
HTCONDOR_FILES = frozenset(
    (".job.ad", ".execution_overlay.ad", ".machine.ad", ".docker_sock", ".docker_stdout")
    + (".docker_stderror", ".condor_container_launched", ".update.ad", ".update.ad.tmp")
    + (".chirp.config", "_condor_stdout", "_condor_stderr", ".condor_creds")
    + (".job_wrapper_failure", ".starter.log")
)
#: Name prefixes with the same status (condor_ssh_to_job's per-session directories).
HTCONDOR_PREFIXES = (".condor_ssh_to_job",)
#: An evicted job's saved VM (issue 18): ours, never the guest's input nor a result name.
CHECKPOINT_FILE = "sd-batch.checkpoint"
#: Our own directory inside a sandbox while a result is extracted.
STAGING_PREFIX = ".sd-batch-result-"
SECTOR = contract.SECTOR
CHUNK = 1 << 20
#: Longer PAX records, error and guest.log texts than this are not read (they are diagnostics).
TEXT_LIMIT = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def is_htcondor_file(name: str) -> bool:
    """True for a top-level sandbox name that belongs to HTCondor, not to the job."""
    return (
        name in HTCONDOR_FILES
        or name.startswith(HTCONDOR_PREFIXES)
        or name.startswith((CHECKPOINT_FILE, f".{CHECKPOINT_FILE}"))
    )


def blocks(size: int) -> int:
    """`size` rounded up to whole tar blocks (sectors)."""
    return -(-size // SECTOR) * SECTOR
