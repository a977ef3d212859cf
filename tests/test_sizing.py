"""`sizing` on its own (pure): every combination of description, request and slot, and the
policy caps on requests. The same rules through the hooks and libvirt: test_sizing_jobs.py."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from sd_batch.errors import Disposition, PolicyError
from sd_batch.vm.site_policy import SitePolicy
from sd_batch.vm.sizing import DiskGrowth, Resources, check_disk, check_requests, size_vm
from sd_batch.vm.spec import Flavour, KernelBoot, VMSpec

TEMPLATE = VMSpec("vm", 256, 1, Flavour.QEMU, KernelBoot(PurePosixPath("minimal/vmlinux")))
MIB = 1 << 20


@pytest.mark.parametrize(
    ("requests", "slot", "size"),
    [
        (Resources(), None, (256, 1)),  # nothing asked, no slot known: the description's size
        (Resources(), Resources(256, 1), (256, 1)),
        (Resources(64, 1), Resources(128 * 2, 1), (256, 1)),  # below the description: its size
        (Resources(1024, 2), Resources(1024, 2), (1024, 2)),  # the requests
        (Resources(1024, 2), None, (1024, 2)),
        (Resources(1000, 1), Resources(1024, 1), (1000, 1)),  # the startd rounded the slot up
        (Resources(4096, 8), Resources(1024, 2), (1024, 2)),  # never above the slot
        (Resources(512, 1), Resources(10**9, 10**6), (512, 1)),  # a bigger slot gives no more
    ],
)
def test_the_vm_is_the_request_within_the_slot_and_never_below_the_description(
    requests: Resources, slot: Resources | None, size: tuple[int, int]
) -> None:
    sized = size_vm(TEMPLATE, requests, slot, "the site template minimal")
    assert (sized.memory_mib, sized.vcpus) == size


@pytest.mark.parametrize(
    ("slot", "says"),
    [
        (
            Resources(128, 1),
            "the site template minimal needs 256 MiB of memory, more than the "
            "job's slot has (128 MiB); write request_memory = 256 in the submit file",
        ),
        (
            Resources(256, 0),
            "the site template minimal needs 1 vCPU, more than the job's slot has "
            "(0 vCPUs); write request_cpus = 1 in the submit file",
        ),
    ],
)
def test_a_slot_smaller_than_the_description_is_a_hold(slot: Resources, says: str) -> None:
    with pytest.raises(PolicyError) as caught:
        size_vm(TEMPLATE, Resources(), slot, "the site template minimal")
    assert str(caught.value) == says and caught.value.disposition is Disposition.HOLD


@pytest.mark.parametrize(
    ("requests", "says"),
    [
        (Resources(memory_mib=8193), "request_memory 8193 MiB is over the site limit of 8192 MiB"),
        (Resources(cpus=9), "request_cpus 9 is over the site limit of 8 vCPUs"),
        (Resources(gpus=1), "request_gpus 1: this site gives job VMs no GPUs"),
        (Resources(memory_mib=10**300), "request_memory 1e+300 MiB is over"),
    ],
)
def test_requests_over_policy_are_held_before_anything_else(requests: Resources, says: str) -> None:
    with pytest.raises(PolicyError, match=says.replace("+", r"\+")):
        check_requests(requests, SitePolicy())
    check_requests(Resources(8192, 8, 10**12, 0), SitePolicy())  # at the limits: fine


def test_the_disks_together_must_fit_the_slots_disk() -> None:
    growth = DiskGrowth(output=256 * MIB, blank=1024 * MIB, overlays=8192 * MIB)
    assert growth.describe() == (
        "output disk 256 MiB, blank disks 1024 MiB, copy-on-write overlays 8192 MiB"
    )
    check_disk(growth, None, "x")  # no slot known: nothing to bound it by
    check_disk(growth, Resources(disk_kib=growth.total // 1024), "x")
    with pytest.raises(PolicyError, match=r"write request_disk = 9472M in the submit file"):
        check_disk(growth, Resources(disk_kib=growth.total // 1024 - 1), "x")
