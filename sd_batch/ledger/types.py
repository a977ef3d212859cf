"""The ledger's values that carry no process: an owner's status, a resource's kind and state
(what the ledger's columns may hold), a recorded move, a pool's claim on a host, and
`OwnerExists`. `ledger` re-exports
them all. `ProcessRef` and the rows that hold one (`Owner`, `Resource`, `Leftovers`) stay in
`ledger`, beside this boot's id, which says whether a recorded process can still be alive.
Pure: no sqlite, no processes. May import: errors, the standard library.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OwnerStatus(enum.Enum):
    """Where an owner is in its life; STARTING and TERMINATING mean a process is at work."""

    STARTING = "starting"
    ACTIVE = "active"
    TERMINATING = "terminating"


class ResourceKind(enum.Enum):
    DOMAIN = "domain"  # name: the domain name
    VOLUME = "volume"  # name: the volume's path on the host
    FILE = "file"  # name: a path on this machine (input/output disk images)


class ResourceState(enum.Enum):
    CREATING = "creating"  # recorded, maybe (half) made: teardown must look
    CREATED = "created"


@dataclass(frozen=True, slots=True)
class Move:
    """A VM high availability moved off a failed host (`to_uri` None: it found no room)."""

    domain: str
    from_uri: str
    to_uri: str | None
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Claim:
    """Room a starting pool took on a host for one VM, recorded when it was placed: placement
    counts it as the host's load until libvirt shows the VM active."""

    domain: str
    host_uri: str
    memory_mib: int
    vcpus: int
