"""A job's VM is its slot: memory, vCPUs and disk from what HTCondor gave the job.

Pure. In: the VM as its description says (a site template's size, or what the job's own `.sf`
asks for), the job's requests (`RequestMemory`, `RequestCpus`, `RequestDisk`, `RequestGPUs`,
evaluated by `jobad` against the slot's machine ad, so the site transform's
`TARGET.SmartDomainsTemplate*` terms count), the slot (`Memory`, `Cpus`, `Disk` of the
`.machine.ad` the starter writes into the scratch dir; None when there is none) and the site
policy. Out: the VM's memory and vCPUs, or a `PolicyError` (a hold) that says which submit
command to write.

The rules: the description's size is the default and the minimum; a request above it raises
it; the slot bounds it (a VM is never larger than its slot, and a description that needs more
than the slot has is held with the `request_memory` / `request_cpus` / `request_disk` that
would fit); site policy caps the requests themselves (`request_memory` over `max_memory_mib`
is held however large the slot). `request_disk` bounds everything the VM can make the host
write: its output disk and every blank and copy-on-write disk, each at its full size.
May import: errors, vm.site_policy, vm.spec, stdlib.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import PolicyError
from .site_policy import SitePolicy
from .spec import VMSpec

KIB_PER_MIB = 1024


@dataclass(frozen=True, slots=True)
class Resources:
    """Memory (MiB), CPUs, disk (KiB, as HTCondor counts it) and GPUs; None: not known."""

    memory_mib: int | None = None
    cpus: int | None = None
    disk_kib: int | None = None
    gpus: int | None = None


@dataclass(frozen=True, slots=True)
class DiskGrowth:
    """What a VM's disks can make the host write, in bytes, at their full sizes."""

    output: int
    blank: int
    overlays: int

    @property
    def total(self) -> int:
        return self.output + self.blank + self.overlays

    def describe(self) -> str:
        parts = [f"output disk {_mib(self.output)}"]
        if self.blank:
            parts.append(f"blank disks {_mib(self.blank)}")
        if self.overlays:
            parts.append(f"copy-on-write overlays {_mib(self.overlays)}")
        return ", ".join(parts)


def check_requests(requests: Resources, policy: SitePolicy) -> None:
    """Site policy on the submit file's requests, before anything is sized from them."""
    if requests.memory_mib is not None and requests.memory_mib > policy.max_memory_mib:
        raise PolicyError(
            f"request_memory {_count(requests.memory_mib)} MiB is over the site limit of "
            f"{policy.max_memory_mib} MiB per job VM ([policy] max_memory_mib)",
            hint=f"write request_memory = {policy.max_memory_mib} or less",
        )
    if requests.cpus is not None and requests.cpus > policy.max_vcpus:
        raise PolicyError(
            f"request_cpus {_count(requests.cpus)} is over the site limit of "
            f"{policy.max_vcpus} vCPUs per job VM ([policy] max_vcpus)",
            hint=f"write request_cpus = {policy.max_vcpus} or less",
        )
    if requests.gpus:
        raise PolicyError(
            f"request_gpus {_count(requests.gpus)}: this site gives job VMs no GPUs (no device "
            "passthrough)",
            hint="remove request_gpus, or run the job without +SDVMDescription",
        )


def size_vm(spec: VMSpec, requests: Resources, slot: Resources | None, named: str) -> VMSpec:
    """SPEC with the memory and vCPUs the job's slot gives it (see the module docstring).

    NAMED is what the job named (`minimal`, `my.sf`), for messages."""
    has = slot if slot is not None else Resources()
    memory = _fit(
        named,
        spec.memory_mib,
        requests.memory_mib,
        has.memory_mib,
        "request_memory",
        lambda n: f"{n} MiB",
        " of memory",
    )
    vcpus = _fit(
        named,
        spec.vcpus,
        requests.cpus,
        has.cpus,
        "request_cpus",
        lambda n: f"{n} vCPU{'s' if n != 1 else ''}",
    )
    return dataclasses.replace(spec, memory_mib=memory, vcpus=vcpus)


def _fit(
    named: str,
    described: int,
    requested: int | None,
    has: int | None,
    command: str,
    show: Callable[[int], str],
    what: str = "",
) -> int:
    """max(DESCRIBED, REQUESTED) within the slot's HAS; a slot below DESCRIBED is a hold."""
    wanted = max(described, requested or 0)
    if has is None:
        return wanted
    if described > has:
        raise PolicyError(
            f"{named} needs {show(described)}{what}, more than the job's slot has ({show(has)})",
            hint=f"write {command} = {described} in the submit file",
        )
    return min(wanted, has)


def check_disk(growth: DiskGrowth, slot: Resources | None, named: str) -> None:
    """The VM's disks, at their full sizes together, within the slot's disk (request_disk)."""
    if slot is None or slot.disk_kib is None:
        return
    if growth.total > slot.disk_kib * 1024:
        need_mib = -(-growth.total // (1 << 20))
        raise PolicyError(
            f"the VM of {named} can write {_mib(growth.total)} to the host's disk "
            f"({growth.describe()}), more than the job's slot has ({_mib(slot.disk_kib * 1024)})",
            hint=f"write request_disk = {need_mib}M in the submit file",
        )


def _count(value: int) -> str:
    """A request as the message shows it: a hostile 1e300 is not 301 digits of HoldReason."""
    return str(value) if value < 10**12 else f"{value:.3g}"


def _mib(size: int) -> str:
    mib = size / (1 << 20)
    return f"{mib:.0f} MiB" if mib < 10240 else f"{mib / 1024:.1f} GiB"
