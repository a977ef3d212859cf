"""The site's placement rules (`[placement]` in the site config): overcommit ratios, memory kept
for the host, a VM limit per host. Its own module so that reading a site config does not load
placement itself (`sd validate` and the hooks never place anything).
May import: the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Policy:
    """The site's rules for every host: Nova's allocation ratios, reserved memory, VM limit."""

    cpu_overcommit: float = 1.0
    memory_overcommit: float = 1.0
    disk_overcommit: float = 1.0
    #: Memory kept for the host itself (Nova's reserved_host_memory_mb).
    reserved_memory_mib: int = 0
    max_vms_per_host: int | None = None

    def __post_init__(self) -> None:
        for name in ("cpu_overcommit", "memory_overcommit", "disk_overcommit"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.reserved_memory_mib < 0:
            raise ValueError("reserved_memory_mib must be >= 0")
        if self.max_vms_per_host is not None and self.max_vms_per_host < 0:
            raise ValueError("max_vms_per_host must be >= 0")


#: No overcommit, nothing reserved, no VM limit: what placement assumes unless told.
STRICT = Policy()
