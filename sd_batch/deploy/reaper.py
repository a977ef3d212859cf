"""The reaper: remove what crashed runs left behind, and nothing that anyone still uses.

`decide` (pure) compares the ledger, the domains each host has, and which processes live, and
returns `Action`s, each with its reason; `reap` gathers those facts, decides, and carries the
actions out (or, with `dry_run`, only reports them). The rules, most cautious first:

- A domain without our `<metadata>` owner (kind and id) is never touched, whatever its name:
  `sd-job-...` may be anyone's name. A domain with our metadata of a kind we do not know (a
  newer sd-batch) is left alone too.
- A pool that is ACTIVE is never reaped, not even its VMs being shut off (the user decides:
  `sd watch` restarts them, `sd terminate` removes them). A pool STARTING or TERMINATING whose
  process died (or whose machine rebooted) was interrupted: its resources are removed, as the
  next `sd start` or `sd terminate` of that name would.
- A job is alive while its `helper run` process lives (`jobs.run` records it, status ACTIVE),
  or, prepared and not yet run (STARTING, no process), for `prepared_grace_seconds` after its
  owner was registered (default one hour: the starter runs a job seconds after PREPARE_JOB). A
  job is dead when its recorded process died, when it was prepared before this machine last
  booted, or when it stayed prepared and unrun past the grace. A dead job's VM, disks and
  folder go. JOB_EXIT normally cleans a job seconds after its runner ends; a reap racing it is
  harmless (both removals are idempotent).
- A ledger row stuck `creating` whose process died is removed alone (the owner may live on),
  except under an ACTIVE pool (`sd watch` or `sd terminate` own those).
- A job folder (`<state_dir>/jobs/<digest>`) no ledger job owner has belongs to nobody, and so
  does the job domain of that digest (`sd-job-<digest>`, our metadata naming that job) when no
  ledger owner has it. A warm VM a job took (`batch.warm`) keeps its name, metadata and folder:
  the job's DOMAIN row names it, which makes both the job's. Several sites (state folders,
  tests) may share one hypervisor, and only that folder proves a domain is this site's: other
  domains without a ledger owner (a pool's, or a job's with no folder here) are left alone.

Every action is checked again just before it is carried out (the ledger may have moved on).
May import: config, deploy, errors, hypervisor (types), ledger, deploy.pools, stdlib.
"""

from __future__ import annotations

import enum
import hashlib
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.site import SiteConfig
from ..errors import DomainNotFound, SdError
from ..ledger.store import (
    Ledger,
    Owner,
    OwnerKind,
    OwnerStatus,
    ProcessRef,
    Resource,
    ResourceState,
    current_boot_id,
)

if TYPE_CHECKING:
    from ..hypervisor.connection import DomainInfo
    from ..hypervisor.connections import Connections

JOBS_FOLDER = "jobs"
_KNOWN_KINDS = frozenset(kind.value for kind in OwnerKind)


@dataclass(frozen=True, slots=True)
class ReapPolicy:
    """How long a prepared job may wait for its runner before it counts as abandoned."""

    prepared_grace_seconds: float = 3600.0


class ActionKind(enum.Enum):
    OWNER = "owner"  # tear down everything an owner has, then forget it
    STUCK = "stuck"  # tear down only some rows of an owner (stuck `creating`)
    DOMAIN = "domain"  # destroy and undefine a domain of ours that no owner has
    FOLDER = "folder"  # delete a job folder


@dataclass(frozen=True, slots=True)
class Action:
    """One thing to remove, and why."""

    kind: ActionKind
    target: str  # `pool lab`, a domain name, a folder path
    reason: str
    host_uri: str = ""
    owner: Owner | None = None
    resources: tuple[Resource, ...] = ()

    def describe(self) -> str:
        where = f" on {self.host_uri}" if self.host_uri else ""
        what = {
            ActionKind.STUCK: f"{_count(len(self.resources), 'stuck row')} of ",
            ActionKind.DOMAIN: "domain ",
            ActionKind.FOLDER: "job folder ",
        }.get(self.kind, "")
        return f"{what}{self.target}{where}"


@dataclass(frozen=True, slots=True)
class Owned:
    """An owner and its resources, as the ledger had them."""

    owner: Owner
    resources: tuple[Resource, ...] = ()


@dataclass(frozen=True, slots=True)
class LedgerView:
    """What `decide` needs from this machine: ledger owners, job folders, the boot id."""

    owners: tuple[Owned, ...]
    job_folders: Mapping[str, Path] = field(default_factory=dict)  # digest -> folder
    boot_id: str = ""


def job_digest(owner_id: str) -> str:
    """A job owner's folder and domain digest (`jobs.JobKey.digest`, from its owner id)."""
    return hashlib.sha256(owner_id.encode()).hexdigest()[:16]


# -- deciding (pure) -------------------------------------------------------------------------------
def decide(
    view: LedgerView,
    domains_per_host: Mapping[str, Iterable[DomainInfo]],
    alive: Callable[[ProcessRef], bool],
    *,
    now: float,
    policy: ReapPolicy = ReapPolicy(),
) -> list[Action]:
    """What to remove, each with its reason. Hosts missing from DOMAINS_PER_HOST (unreachable)
    lose no domain to the third rule; owners there are still decided from the ledger."""
    actions: list[Action] = []
    reaped_jobs: set[str] = set()
    for owned in view.owners:
        owner = owned.owner
        label = f"{owner.kind.value} {owner.owner_id}"
        reason = _dead(owner, view.boot_id, alive, now, policy)
        if reason is not None:
            actions.append(
                Action(ActionKind.OWNER, label, reason, owner.host_uri, owner, owned.resources)
            )
            if owner.kind is OwnerKind.JOB:
                reaped_jobs.update(_job_digests(owned))
            continue
        if owner.kind is OwnerKind.POOL and owner.status is OwnerStatus.ACTIVE:
            continue  # never an active pool: sd watch and sd terminate own its rows
        stuck = tuple(
            r for r in owned.resources if r.state is ResourceState.CREATING and not alive(r.process)
        )
        if stuck:
            pids = ", ".join(sorted({str(r.process.pid) for r in stuck}))
            actions.append(
                Action(
                    ActionKind.STUCK,
                    label,
                    f"ledger row stuck `creating`, its process died ({pids})",
                    owner.host_uri,
                    owner,
                    stuck,
                )
            )
    owned_ids = {(o.owner.kind.value, o.owner.owner_id) for o in view.owners}
    # a warm VM a job took keeps its name and metadata: the job's rows name it
    held = {
        (r.host_uri, r.name) for o in view.owners for r in o.resources if r.kind.value == "domain"
    }
    for uri in sorted(domains_per_host):
        for info in domains_per_host[uri]:
            mark = info.owner
            if mark is None or mark.kind not in _KNOWN_KINDS:
                continue  # not ours (or a newer sd-batch's): never touched
            if (mark.kind, mark.id) in owned_ids or (uri, info.name) in held:
                continue
            digest = job_digest(mark.id)
            if mark.kind != OwnerKind.JOB.value or info.name != f"sd-job-{digest}":
                continue  # a pool's VM, or misnamed: no proof it is this site's
            if digest not in view.job_folders:
                continue  # another site's (state folder) on a shared hypervisor, or gone
            actions.append(
                Action(
                    ActionKind.DOMAIN,
                    info.name,
                    f"domain carries our metadata for {mark.kind} {mark.id} but no ledger owner",
                    uri,
                )
            )
    job_digests = {
        digest for o in view.owners if o.owner.kind is OwnerKind.JOB for digest in _job_digests(o)
    }
    for digest in sorted(view.job_folders):
        if digest in reaped_jobs:
            reason = "its job is reaped"
        elif digest not in job_digests:
            reason = "job folder with no ledger owner"
        else:
            continue
        actions.append(Action(ActionKind.FOLDER, str(view.job_folders[digest]), reason))
    return actions


def _job_digests(owned: Owned) -> set[str]:
    """The job folders a job owner has: its own, and the warm VM's it took (`batch.warm`),
    named by the digest in that domain's name."""
    digests = {job_digest(owned.owner.owner_id)}
    for resource in owned.resources:
        if resource.kind.value == "domain" and resource.name.startswith("sd-job-"):
            digests.add(resource.name.removeprefix("sd-job-"))
    return digests


def _dead(
    owner: Owner, boot_id: str, alive: Callable[[ProcessRef], bool], now: float, policy: ReapPolicy
) -> str | None:
    """Why OWNER belongs to nobody any more, or None while someone may still use it."""
    process = owner.process
    if owner.kind is OwnerKind.POOL:
        if owner.status is OwnerStatus.ACTIVE:
            return None
        what = "start" if owner.status is OwnerStatus.STARTING else "terminate"
        if process is not None and not alive(process):
            return f"pool {what} interrupted (process {process.pid} died)"
        if process is None and owner.boot_id != boot_id:
            return f"pool {what} interrupted (the machine rebooted)"
        return None
    if process is not None:
        if alive(process):
            return None
        runner = "runner" if owner.status is OwnerStatus.ACTIVE else "process"
        return f"its {runner} (process {process.pid}) died"
    if owner.boot_id != boot_id:
        return "prepared before this machine rebooted, never run"
    waited = now - owner.created_at
    if owner.status is OwnerStatus.STARTING and waited > policy.prepared_grace_seconds:
        return (
            f"prepared {waited / 60:.0f} min ago and never run "
            f"(grace {policy.prepared_grace_seconds / 60:.0f} min)"
        )
    return None


# -- carrying it out -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outcome:
    """An action and what became of it (`done` False in a dry run, or when it failed)."""

    action: Action
    done: bool
    removed: str = ""
    error: str = ""
    skipped: str = ""

    def line(self, dry_run: bool) -> str:
        action = self.action
        if dry_run:
            return f"would remove {action.describe()}: {action.reason}"
        if self.error:
            return f"could not remove {action.describe()}: {action.reason}: {self.error}"
        if self.skipped:
            return f"left {action.describe()}: {self.skipped}"
        removed = f" ({self.removed})" if self.removed else ""
        return f"removed {action.describe()}{removed}: {action.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.kind.value,
            "target": self.action.target,
            "host": self.action.host_uri or None,
            "reason": self.action.reason,
            "done": self.done,
            "removed": self.removed or None,
            "error": self.error or None,
            "skipped": self.skipped or None,
        }


def _hosts(config: SiteConfig, view: LedgerView) -> list[str]:
    """Hosts whose domains matter: a job's domain is reaped only with its ownerless folder, so
    without such a folder (most runs) no hypervisor is asked at all; else the jobs' hosts."""
    jobs = [o.owner for o in view.owners if o.owner.kind is OwnerKind.JOB]
    owned = {d for o in view.owners if o.owner.kind is OwnerKind.JOB for d in _job_digests(o)}
    if all(digest in owned for digest in view.job_folders):
        return []
    return sorted({config.default_uri, *(o.host_uri for o in jobs)})


def read_view(config: SiteConfig, ledger: Ledger) -> LedgerView:
    """The ledger's owners and resources, the job folders on disk, this boot's id."""
    owners = tuple(Owned(o, ledger.resources(o)) for o in ledger.owners())
    folder = config.state_dir / JOBS_FOLDER
    folders = {}
    if folder.is_dir():
        folders = {p.name: p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()}
    return LedgerView(owners, folders, current_boot_id())


def reap(
    config: SiteConfig,
    *,
    dry_run: bool = False,
    connections: Connections | None = None,
    clock: Callable[[], float] = time.time,
    policy: ReapPolicy = ReapPolicy(),
) -> list[Outcome]:
    """Find what belongs to nobody on this machine's ledger and hosts, and remove it."""
    from ..hypervisor.connections import SHARED_CONNECTIONS

    connections = connections or SHARED_CONNECTIONS
    with Ledger.for_site(config) as ledger:
        # Domains first, the ledger after: an owner registered meanwhile keeps its domain.
        hosts = _hosts(config, read_view(config, ledger))
        domains: dict[str, tuple[DomainInfo, ...]] = {}
        for uri in hosts:
            try:
                domains[uri] = connections(uri).list_domains()
            except SdError:
                continue  # unreachable: none of its domains is judged this time
        view = read_view(config, ledger)
        actions = decide(view, domains, _is_alive, now=clock(), policy=policy)
        if dry_run:
            return [Outcome(a, False) for a in actions]
        return [_carry_out(a, config, ledger, connections) for a in actions]


def _is_alive(process: ProcessRef) -> bool:
    return process.is_alive()


def _carry_out(
    action: Action, config: SiteConfig, ledger: Ledger, connections: Connections
) -> Outcome:
    try:
        if action.kind in (ActionKind.OWNER, ActionKind.STUCK):
            return _teardown(action, config, ledger, connections)
        if action.kind is ActionKind.DOMAIN:
            return _remove_domain(action, ledger, connections)
        return _remove_folder(action, config, ledger)
    except (SdError, OSError) as exc:
        return Outcome(action, False, error=str(exc))


def _teardown(
    action: Action, config: SiteConfig, ledger: Ledger, connections: Connections
) -> Outcome:
    from .engine import Engine
    from .pools import site_paths

    decided = action.owner
    if decided is None:
        raise ValueError(f"{action.kind} names no owner to tear down")
    owner = ledger.owner(decided.kind, decided.owner_id, decided.host_uri)
    if owner is None:
        return Outcome(action, False, skipped="already gone")
    if (owner.row_id, owner.status, owner.process) != (
        decided.row_id,
        decided.status,
        decided.process,
    ):
        return Outcome(action, False, skipped="taken over meanwhile")
    engine = Engine(ledger, connections, site_paths(config), owner_kind=owner.kind)
    if action.kind is ActionKind.OWNER:
        return Outcome(action, True, engine.teardown(owner, graceful=False))
    rows = {r.row_id for r in action.resources}
    return Outcome(
        action, True, engine.teardown(owner, graceful=False, only=lambda r: r.row_id in rows)
    )


def _remove_domain(action: Action, ledger: Ledger, connections: Connections) -> Outcome:
    hv = connections(action.host_uri)
    info = next((d for d in hv.list_domains() if d.name == action.target), None)
    if info is None:
        return Outcome(action, False, skipped="already gone")
    mark = info.owner
    if mark is None or any(
        (o.kind.value == mark.kind and o.owner_id == mark.id)
        or any(r.name == action.target and r.kind.value == "domain" for r in ledger.resources(o))
        for o in ledger.owners()
    ):
        return Outcome(action, False, skipped="it has an owner now")
    try:
        hv.destroy(action.target)
        hv.undefine(action.target)
    except DomainNotFound:
        return Outcome(action, False, skipped="already gone")
    return Outcome(action, True)


def _remove_folder(action: Action, config: SiteConfig, ledger: Ledger) -> Outcome:
    folder = Path(action.target)
    if folder.parent != config.state_dir / JOBS_FOLDER or folder.is_symlink():
        return Outcome(action, False, skipped="not a job folder")
    if any(
        o.kind is OwnerKind.JOB and folder.name in _job_digests(Owned(o, ledger.resources(o)))
        for o in ledger.owners()
    ):
        return Outcome(action, False, skipped="it has an owner now")
    if not folder.exists():
        return Outcome(action, False, skipped="already gone")
    shutil.rmtree(folder)
    return Outcome(action, True)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"
