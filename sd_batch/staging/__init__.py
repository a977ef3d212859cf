"""Sandbox <-> tar streams and disk images: the one package that moves a job's files.

Owns the input tar (the job's sandbox plus the manifest, streamed to the privileged helper:
`inputs`), the output disk (a raw file, blocks reserved, starting with the contract's magic) and
finding the result tar the guest wrote on it (`disk`), and the safe extraction of that untrusted
tar into the sandbox (`outputs`). The formats are `guest/CONTRACT.md`'s. Nothing here follows a
symlink on the host: directories are walked through descriptors opened with O_NOFOLLOW, and
special files are never opened. Import the API from here, not from the submodules.

Layer: edge (the job's files, tar streams, disk images).
May import: errors, guest.contract, the standard library.
"""

from __future__ import annotations

from ._common import CHECKPOINT_FILE, HTCONDOR_FILES, HTCONDOR_PREFIXES, is_htcondor_file
from .disk import create_output_disk, guest_wrote, result_extent, result_tar_from_disk
from .inputs import write_input_tar
from .outputs import JobResult, read_result

__all__ = [
    "CHECKPOINT_FILE",
    "HTCONDOR_FILES",
    "HTCONDOR_PREFIXES",
    "JobResult",
    "create_output_disk",
    "guest_wrote",
    "is_htcondor_file",
    "read_result",
    "result_extent",
    "result_tar_from_disk",
    "write_input_tar",
]
