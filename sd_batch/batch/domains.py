"""Which libvirt domain and folders are a job's: its own (`JobKey.domain`, `JobKey.folder`),
or a warm VM's it took at PREPARE_JOB (`batch.warm`), which keeps its name (libvirt renames no
running domain) and its folder. The job's ledger rows say which: run, cleanup, the checkpoint
and the reaper find the VM through them, never through the name alone.
May import: config, deploy, hypervisor, placement, vm, batch.key, the standard library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ..config.site import SiteConfig
from ..deploy.engine import Engine, SitePaths
from ..hypervisor.connections import Connections
from ..placement.steps import VMPlan
from ..vm.domain_xml import ExtraDisk
from ..vm.domain_xml import OwnerKind as XmlOwnerKind
from .key import JobKey


def job_engine(config: SiteConfig, ledger: object, connections: Connections, key: JobKey) -> Engine:
    """The deployment engine for KEY's VM: its overlays and console log in the job's folder."""
    folder = key.folder(config)
    paths = SitePaths(image_dir=config.image_dir, overlay_dir=folder, console_dir=folder)
    return Engine(ledger, connections, paths, owner_kind=XmlOwnerKind.JOB)  # type: ignore[arg-type]


class WarmTaker(Protocol):
    """What `prepare` asks of the helper service's warm VMs (`batch.warm.WarmPool.take`)."""

    def take(
        self,
        ledger: Any,
        owner: Any,
        engine: Engine,
        vm: VMPlan,
        extra: tuple[ExtraDisk, ...],
        template: str,
    ) -> str | None: ...


def job_domain(ledger: Any, owner: Any, key: JobKey) -> str:
    """The name of the job's VM: its own (`key.domain`), the warm VM's it took, which keeps its
    name (libvirt renames no running domain), or, once its checkpoint was restored, the name
    the VM was saved with. The ledger's newest domain row says which."""
    from ..ledger.store import ResourceKind

    names = [r.name for r in ledger.resources(owner) if r.kind is ResourceKind.DOMAIN]
    return str(names[0]) if names else key.domain  # the newest: a restored checkpoint's


def job_folders(config: SiteConfig, ledger: Any, owner: Any, key: JobKey) -> list[Path]:
    """The job's folder, and the folder of the warm VM it took (its overlays, console log)."""
    from ..ledger.store import ResourceKind

    folders = [key.folder(config)]
    jobs = key.folder(config).parent
    for resource in ledger.resources(owner):
        if resource.kind is ResourceKind.DOMAIN and resource.name.startswith("sd-job-"):
            folder = jobs / resource.name.removeprefix("sd-job-")
            if folder not in folders and "/" not in resource.name:
                folders.append(folder)
    return folders
