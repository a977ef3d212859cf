"""The deployment engine: SmartFrog's lifecycle (deploy, start, ping, terminate) for our components.

`Engine` carries out a plan (the tree of `Step`s that `placement.steps.plan` makes of a resolved
`sfConfig`) on a hypervisor, recording every disk and domain in the ledger *before* creating it,
and rolls everything back when any step fails, so a half-started pool never stays behind.
May import: errors, lang, vm, placement, ledger, hypervisor (types), config.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import (
    DeployError,
    DescriptionError,
    DiskWriteError,
    DomainNotFound,
    SdError,
)
from ..hypervisor.types import is_remote
from ..placement.steps import Order, Step, VMPlan
from ..vm.domain_xml import DiskSource, ExtraDisk, HostFiles, build_domain_xml
from ..vm.domain_xml import Owner as XmlOwner
from ..vm.domain_xml import OwnerKind as XmlOwnerKind
from ..vm.sizing import DiskGrowth
from ..vm.spec import VMSpec
from .host_images import images_of, resolve_image

if TYPE_CHECKING:
    from ..hypervisor.connection import HypervisorAPI
    from ..ledger.store import Ledger, Owner, Resource

log = logging.getLogger(__name__)

#: While waiting for guests to power off, press their power button again this often.
PRESS_AGAIN_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class SitePaths:
    """Where host files live: guest images (read), overlays and console logs (written)."""

    image_dir: Path
    overlay_dir: Path
    console_dir: Path | None = None

    def image(self, relative: PurePosixPath, what: str, spec: VMSpec) -> Path:
        """An image-folder path from a description, refusing anything outside the folder
        (whether a host has it: `host_images.images_of`)."""
        return resolve_image(self.image_dir, relative, what, spec)


class _VMFailed(Exception):
    """Inside `Engine.start` only: which VM a deploy or start failed on, and how. `start` turns
    it into the DeployError it raises (naming the VM) after rolling back."""

    def __init__(self, vm: VMPlan, error: SdError | OSError) -> None:
        super().__init__(str(error))
        self.vm = vm
        self.error = error


Progress = Callable[[str], None]


@dataclass
class Engine:
    """Runs a Step tree on hypervisors, with every creation recorded first in the ledger."""

    ledger: Ledger
    connect: Callable[[str], HypervisorAPI]
    paths: SitePaths
    progress: Progress = field(default=lambda _line: None)
    owner_kind: XmlOwnerKind = XmlOwnerKind.POOL
    clock: Callable[[], float] = time.monotonic

    def start(self, owner: Owner, step: Step) -> None:
        """Deploy and start STEP; on any failure roll back everything OWNER has, then raise."""
        self._total = sum(1 for _ in step.vms())
        self._done = 0
        try:
            for vm in step.vms():  # every host has every image it needs, before anything exists
                try:
                    images_of(vm.spec, vm.uri, self.connect, self.paths.image_dir)
                except (SdError, OSError) as exc:
                    raise _VMFailed(vm, exc) from exc
            self._deploy(owner, step)
            self._start(owner, step)
        except BaseException as exc:  # Ctrl-C too: nothing half-started may stay behind
            try:
                undone = f"rolled back: removed {self.teardown(owner, graceful=False)}"
            except DeployError as left:  # the cause must still be told, not only the leftovers
                undone = f"NOT rolled back: {left}"
            failed: VMPlan | None = None
            if isinstance(exc, _VMFailed):
                failed, exc = exc.vm, exc.error
            if not isinstance(exc, (SdError, OSError)):
                raise
            reason = _reason(exc)
            where = ""
            if failed is not None:  # counted copies share a path: the domain name tells them apart
                where = f"VM {failed.domain}" + (
                    ": " if f"{failed.path}:" in reason else f" ({failed.path}): "
                )
            raise DeployError(
                f"{owner.kind.value} {owner.owner_id}: {where}{reason}", hint=undone
            ) from exc

    # deploy: create disks and define domains (nothing runs yet)
    def _deploy(self, owner: Owner, step: Step, *, whole: bool = False) -> None:
        """Deploy STEP; a sequence's children wait for their turn (in `_start`) unless WHOLE."""
        if step.vm is not None:
            try:
                self.deploy_vm(owner, step.vm)
            except (SdError, OSError) as exc:
                raise _VMFailed(step.vm, exc) from exc
            return
        if step.order is Order.SEQUENCE and not whole:
            return  # a sequence deploys each child just before starting it
        for child in step.children:
            self._deploy(owner, child, whole=whole)

    def _deploy_deferred(self, owner: Owner, step: Step) -> None:
        """What `_deploy` left for later under STEP: the children of its sequences."""
        if step.order is Order.SEQUENCE:
            self._deploy(owner, step, whole=True)
            return
        for child in step.children:
            self._deploy_deferred(owner, child)

    def _start(self, owner: Owner, step: Step, *, deployed: bool = False) -> None:
        """Start STEP, which `_deploy` has deployed (all of it, sequences too, if DEPLOYED)."""
        if step.vm is not None:
            self._start_vm(step.vm)
        elif step.order is Order.SEQUENCE:
            for child in step.children:
                if not deployed:
                    self._deploy(owner, child)
                self._start(owner, child, deployed=deployed)
        elif step.order is Order.PARALLEL and len(step.children) > 1:
            # The ledger's sqlite connection belongs to this thread: deploy everything here,
            # sequences inside the branches included, and let the threads only start VMs.
            if not deployed:
                self._deploy_deferred(owner, step)
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(step.children)) as pool:
                futures = [pool.submit(self._start, owner, c, deployed=True) for c in step.children]
                for future in futures:
                    future.result()
        else:
            for child in step.children:
                self._start(owner, child, deployed=deployed)

    def planned_xml(
        self, owner_id: str, vm: VMPlan, extra_disks: tuple[ExtraDisk, ...] = ()
    ) -> str:
        """The domain XML `deploy_vm` would define for VM, creating nothing: a job is matched
        against a warm VM by it (`vm.warm`). Local hosts only (a job's host)."""
        images = images_of(vm.spec, vm.uri, self.connect, self.paths.image_dir)
        sources = tuple(
            DiskSource(
                PurePosixPath(self.paths.overlay_dir / f"{vm.domain}-{d.name}.{d.format.value}"),
                d.format,
            )
            for d in vm.spec.disks
        )
        console = None
        if self.paths.console_dir is not None and not vm.spec.flavour.is_xen:
            console = PurePosixPath(self.paths.console_dir / f"{vm.domain}.log")
        files = HostFiles(
            disks=sources,
            extra_disks=extra_disks,
            kernel=PurePosixPath(images["kernel"][0]) if "kernel" in images else None,
            initrd=PurePosixPath(images["initrd"][0]) if "initrd" in images else None,
            console_log=console,
        )
        return build_domain_xml(vm.spec, files, XmlOwner(self.owner_kind, owner_id))

    def deploy_vm(self, owner: Owner, vm: VMPlan, extra_disks: tuple[ExtraDisk, ...] = ()) -> str:
        """Create VM's disks and define its domain (not started); returns the XML defined.
        EXTRA_DISKS are host files (a job's input and output disks) the caller has already
        recorded in the ledger."""
        from ..ledger.store import ResourceKind

        hv = self.connect(vm.uri)
        spec = vm.spec
        remote = is_remote(vm.uri)
        images = images_of(spec, vm.uri, self.connect, self.paths.image_dir)
        kernel = images["kernel"][0] if "kernel" in images else None
        initrd = images["initrd"][0] if "initrd" in images else None
        sources = []
        if not remote:
            self.paths.overlay_dir.mkdir(parents=True, exist_ok=True)
        for disk in spec.disks:
            name = f"{vm.domain}-{disk.name}.{disk.format.value}"
            target = str(self.paths.overlay_dir / name)
            there = hv.host_file(target) is not None if remote else Path(target).exists()
            if there:  # not ours to overwrite, nor (on rollback) to delete
                raise DeployError(
                    f"disk {target} already exists" + (f" on {vm.uri}" if remote else ""),
                    hint="an earlier run left it: `sd status` shows it; remove it if unused",
                )
            base = images.get(f"disk:{disk.name}")
            with self.ledger.intent(owner, ResourceKind.VOLUME, target, vm.uri):
                if base is not None:
                    created = hv.create_overlay(
                        self.paths.overlay_dir, name, base[0], disk.size_bytes or 0, base[1]
                    )
                else:
                    created = hv.create_blank(
                        self.paths.overlay_dir, name, disk.size_bytes or 0, disk.format.value
                    )
            sources.append(DiskSource(PurePosixPath(created), disk.format))
        console = None
        if self.paths.console_dir is not None and not spec.flavour.is_xen:
            if remote:  # virtlogd there writes the log, into a folder that must exist
                hv.ensure_folder(self.paths.console_dir)
            else:
                self.paths.console_dir.mkdir(parents=True, exist_ok=True)
            console = PurePosixPath(self.paths.console_dir / f"{vm.domain}.log")
            # virtlogd creates it when the domain starts; recorded so teardown removes it
            self.ledger.mark_created(
                self.ledger.record_intent(owner, ResourceKind.FILE, str(console), vm.uri)
            )
        files = HostFiles(
            disks=tuple(sources),
            extra_disks=extra_disks,
            kernel=PurePosixPath(kernel) if kernel else None,
            initrd=PurePosixPath(initrd) if initrd else None,
            console_log=console,
        )
        xml = build_domain_xml(spec, files, XmlOwner(self.owner_kind, owner.owner_id))
        with self.ledger.intent(owner, ResourceKind.DOMAIN, vm.domain, vm.uri):
            hv.define(xml)
        self.progress(f"defined {vm.domain} ({spec.memory_mib} MiB, {spec.vcpus} vCPU) on {vm.uri}")
        return xml

    def _start_vm(self, vm: VMPlan) -> None:
        try:
            self.connect(vm.uri).start(vm.domain)
        except SdError as exc:
            raise _VMFailed(vm, exc) from exc
        self._done += 1
        self.progress(f"[{self._done}/{self._total}] started {vm.domain}")

    # terminate: the ledger is the truth about what exists, newest first
    def teardown(
        self,
        owner: Owner,
        *,
        graceful: bool = True,
        grace_seconds: float = 10.0,
        only: Callable[[Resource], bool] | None = None,
    ) -> str:
        """Remove every resource OWNER has (or ONLY those), newest first; idempotent.
        Returns what was removed."""
        from ..ledger.store import ResourceKind, ResourceState

        domains = volumes = files = 0
        resources = tuple(r for r in self.ledger.resources(owner) if only is None or only(r))
        if graceful:
            self._shutdown_all(
                [r for r in resources if r.kind is ResourceKind.DOMAIN], grace_seconds
            )
        errors: list[str] = []
        unreachable: dict[str, str] = {}  # a host that did not answer is asked once, not per row
        for resource in resources:
            uri = resource.host_uri
            on_host = resource.kind is not ResourceKind.FILE or is_remote(uri)
            if on_host and uri not in unreachable:
                try:
                    hv = self.connect(uri)
                except SdError as exc:
                    unreachable[uri] = _reason(exc)
            if on_host and uri in unreachable:
                errors.append(f"{resource.kind.value} {resource.name}: {unreachable[uri]}")
                continue
            try:
                if resource.kind is ResourceKind.DOMAIN:
                    if resource.state is ResourceState.CREATING and not self._ours(
                        hv, resource.name, owner
                    ):
                        self.ledger.forget(resource)  # never made: the name was someone else's
                        continue
                    hv.destroy(resource.name)
                    hv.undefine(resource.name)
                    domains += 1
                    self.progress(f"removed {resource.name}")
                elif on_host:  # a volume; or a file (console log) of a host of its own
                    hv.delete_volume(resource.name)
                    volumes += resource.kind is ResourceKind.VOLUME
                    files += resource.kind is ResourceKind.FILE
                else:
                    Path(resource.name).unlink(missing_ok=True)
                    files += 1
            except DomainNotFound:
                pass
            except (SdError, OSError) as exc:
                errors.append(f"{resource.kind.value} {resource.name}: {_reason(exc)}")
                continue
            self.ledger.forget(resource)
        if errors:
            raise DeployError(
                f"{owner.kind.value} {owner.owner_id}: could not remove everything: "
                + "; ".join(errors),
                hint="the ledger keeps what is left: run the same command again",
            )
        if only is None:
            self.ledger.forget_owner(owner)
        parts = [_count(domains, "domain"), _count(volumes, "volume")]
        if files:
            parts.append(_count(files, "file"))
        return ", ".join(parts)

    def _ours(self, hv: HypervisorAPI, name: str, owner: Owner) -> bool:
        """Whether domain NAME carries our owner metadata: a half-recorded define must not
        destroy a domain of the same name that sd-batch (or this owner) did not create."""
        for info in hv.list_domains():
            if info.name == name:
                return (
                    info.owner is not None
                    and info.owner.id == owner.owner_id
                    and (info.owner.kind == self.owner_kind.value)
                )
        return False

    def _shutdown_all(self, domains: list[Any], grace_seconds: float) -> None:
        """Ask every guest to power off (ACPI) and wait, bounded by GRACE_SECONDS in all.

        The power button is pressed again every few seconds: a press while a guest is still
        booting is lost (sd_batch/guest/CONTRACT.md), and destroying a guest that would have
        shut down cleanly a second later is rude to its disks.
        """
        pending = []
        for resource in reversed(domains):  # reverse of start order
            try:
                pending.append((self.connect(resource.host_uri), resource.name))
            except SdError:
                continue  # unreachable: destroy below says what matters
        deadline = self.clock() + grace_seconds
        while pending and self.clock() < deadline:
            for hv, name in pending:
                with contextlib.suppress(SdError):
                    hv.shutdown(name)
            still = []
            for hv, name in pending:
                remaining = max(0.0, min(PRESS_AGAIN_SECONDS, deadline - self.clock()))
                try:
                    hv.wait_shutoff(name, remaining)
                except (DomainNotFound, DiskWriteError):
                    continue  # gone, or paused for good by a host disk: destroyed below
                except SdError:
                    still.append((hv, name))
            pending = still
        for _hv, name in pending:
            log.info("%s did not power off within %.0f s; destroying it", name, grace_seconds)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DescriptionError):
        return exc.headline()
    return str(exc)


def disk_growth(spec: VMSpec, output_bytes: int, image_dir: Path, hv: HypervisorAPI) -> DiskGrowth:
    """What SPEC's disks can make the host write at their full sizes: the output disk, each
    blank disk, and each copy-on-write overlay (up to its base image's virtual size, as libvirt
    reads it; a base outside the image folder or missing is the deploy's error, later)."""
    blank = sum(disk.size_bytes or 0 for disk in spec.disks)
    overlays = 0
    base_dir = image_dir.resolve()
    for disk in spec.disks:
        if disk.image is None or disk.readonly:
            continue  # a read-only disk is the base itself: nothing is written
        base = (base_dir / str(disk.image).lstrip("/")).resolve()
        if base.is_relative_to(base_dir) and base.is_file():
            overlays += hv.image_capacity(base)
    return DiskGrowth(output_bytes, blank, overlays)
