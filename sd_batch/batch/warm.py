"""Warm VMs: a site template's VM started paused before any job asks, so a job's runner only
resumes it (issue 13: runner start to guest running <= 50 ms).

libvirt's paused start (QEMU's spawn, QMP, cgroups, namespaces: ~0.3 s quiet, up to ~0.9 s
loaded) outlasts the gap between PREPARE_JOB's reply and the runner's request, so starting a
job's VM after its prepare still leaves the runner waiting. The helper service therefore keeps,
per template the site lists (`[jobs] warm` in site.toml), one VM made from the site's template
alone (never from anything a user sent), defined, started paused and never resumed (QEMU's
prelaunch state). A job whose domain XML equals it (`vm.warm.comparable`: the same template
at the same size and flavour) takes it at PREPARE_JOB: its input and output disks are
hot-plugged (the guest, never run yet, finds them at boot as cold-plugged ones), the warm VM's
ledger rows become the job's (`Ledger.hand_over`), and the pool makes the next one in the
background. Everything else (a user's own description, another size, a checkpoint's restore
onto a template with disks of its own, the sudo door, which has no pool) takes the cold path.

A warm VM is a ledger job owner `warm:<template>.<token>` (no slot user's job id can spell that:
theirs are `<uid>:<id>`) whose process is the service's: its domain `sd-job-<digest>` and its
folder `<state_dir>/jobs/<digest>` follow from that id as a job's do, so the reaper removes
them if the service dies, and `WarmPool.stop` when it stops. After a claim the domain keeps its
name (libvirt cannot rename a running domain): the job's ledger rows say which domain is its
(`domains.job_domain`), and its files stay in the warm VM's folder until the job's cleanup.
May import: config, errors, deploy, hypervisor, ledger, placement, vm, batch.domains,
batch.description, batch.key, lang, the standard library.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config.site import SiteConfig
from ..errors import SdError
from ..hypervisor.connections import Connections
from ..placement.steps import VMPlan
from ..vm.domain_xml import ExtraDisk
from ..vm.warm import comparable, job_disk_targets
from .key import WARM_PREFIX, JobKey, WarmKey

if TYPE_CHECKING:
    from ..deploy.engine import Engine
    from ..ledger.store import Ledger, Owner
    from ..vm.spec import VMSpec

log = logging.getLogger(__name__)

#: After a failure to make a warm VM, wait this long before the next try, doubling to the max.
FIRST_BACKOFF, MAX_BACKOFF = 5.0, 600.0
#: After a claim, the next warm VM is made once a job's cleanup ends (`job_ended`), or this many
#: seconds after the claim: QEMU's start (~0.4-0.9 s of CPU) beside the booting guest of the
#: job that took the last one slowed that guest by ~0.5 s on a 2-core host (measured).
REFILL_AFTER = 10.0


def is_warm(owner_id: str) -> bool:
    """Whether a ledger job owner is a warm VM (not yet any job's)."""
    return owner_id.startswith(WARM_PREFIX)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A warm VM a job took at PREPARE_JOB, its disks not yet plugged in (`WarmPool.plug`)."""

    warm: WarmVM
    disks: tuple[str, ...]  # the `<disk>` XML of each, as a cold define has them
    plan: VMPlan  # the job's own VM, should the plug fail
    extra: tuple[ExtraDisk, ...]


@dataclass(frozen=True, slots=True)
class WarmVM:
    """One warm VM, paused, waiting for a job of its template: its XML's comparable form."""

    template: str
    key: WarmKey
    uri: str
    form: str


def warm_spec(config: SiteConfig, template: str, key: JobKey) -> VMSpec:
    """The VM a job naming TEMPLATE gets when it asks for nothing more than the template
    (`description.job_spec` with no requests and no slot): from the site's file only."""
    from ..config.templates import find_template
    from ..lang import load_file
    from ..vm.sizing import Resources
    from .description import JobAsks, job_spec

    description = load_file(
        find_template(template, config),
        include_dirs=[*config.include_dirs, *config.template_dirs],
        properties=dict(config.properties),
        environ=None,
        budgets=config.policy.budgets,
    )
    return job_spec(config, JobAsks(description, template, Resources(), None), key, config.policy)


class WarmPool:
    """The helper service's warm VMs: one per template it was given, refilled one at a time
    by a thread of its own after each claim, with a growing pause after a failure."""

    def __init__(
        self,
        templates: Sequence[str],
        connections: Connections,
        site: Callable[[], SiteConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.templates = tuple(templates)
        self.connections, self.site, self.clock = connections, site, clock
        self._lock = threading.Lock()
        self._idle: dict[str, WarmVM] = {}  # template -> its warm VM
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._after_claim: set[str] = set()  # templates whose refill waits for a job's end
        self._pending: dict[str, _Pending] = {}  # job owner id -> the warm VM it took
        self._doubted: set[str] = set()  # templates a job did not match: still current?
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the refill thread -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._refill, daemon=True, name="warm VMs")
        self._thread.start()

    def _refill(self) -> None:
        self.remove_orphans()
        while not self._stopping.is_set():
            self._wake.clear()
            wait = self.fill_once()
            if not self._stopping.is_set():
                self._wake.wait(wait)

    def fill_once(self) -> float | None:
        """Make the warm VM of each template that has none and is not pausing after a failure
        (one at a time); returns how long until a paused template may be tried (None: only a
        claim or a stop has anything for us)."""
        with self._lock:
            doubted, self._doubted = self._doubted, set()
        for template in doubted:
            self._check(template)
        for template in self.templates:
            if self._stopping.is_set():
                return None
            with self._lock:
                due = template not in self._idle and self._retry_at.get(template, 0) <= self.clock()
            if due:
                self._make(template)
        with self._lock:
            waits = [at - self.clock() for t, at in self._retry_at.items() if t not in self._idle]
        return max(0.05, min(waits)) if waits else None

    def _check(self, template: str) -> None:
        """A job of TEMPLATE did not match its warm VM: another size (the warm VM stays), or
        the template or the site config changed since it was made (it goes; a new one is
        made from the template as it is now)."""
        from .domains import job_engine

        with self._lock:
            warm = self._idle.get(template)
        if warm is None:
            return
        try:
            config = self.site()
            spec = warm_spec(config, template, warm.key)
            engine = job_engine(config, None, self.connections, warm.key)
            xml = engine.planned_xml(warm.key.owner_id, VMPlan(spec, config.default_uri))
            form = comparable(xml, str(warm.key.folder(config)), warm.key.domain)
        except (SdError, OSError) as exc:
            form = f"(unresolvable: {exc})"
        if form == warm.form:
            return
        with self._lock:
            if self._idle.get(template) is not warm:
                return  # taken meanwhile
            del self._idle[template]
        log.info("warm VM %s of %s: its template or the site changed", warm.key.domain, template)
        self.discard(warm)

    def _make(self, template: str) -> None:
        started = self.clock()
        try:
            made = self.make(template)
        except (SdError, OSError) as exc:
            delay = min(MAX_BACKOFF, self._backoff.get(template, FIRST_BACKOFF / 2) * 2)
            with self._lock:
                self._backoff[template] = delay
                self._retry_at[template] = self.clock() + delay
            log.warning(
                "warm VM of %s: cannot make one (%s); next try in %.0f s", template, exc, delay
            )
            return
        with self._lock:
            self._backoff.pop(template, None)
            self._retry_at.pop(template, None)
            self._after_claim.discard(template)
            if self._stopping.is_set():
                stale = made
            else:
                stale, self._idle[template] = None, made
        if stale is not None:
            self.discard(stale)
            return
        log.info(
            "warm VM %s of %s: paused, ready in %.0f ms",
            made.key.domain,
            template,
            1000 * (self.clock() - started),
        )

    def make(self, template: str) -> WarmVM:
        """One warm VM of TEMPLATE: resolved from the site's file, deployed (overlays, console
        log, domain) under a ledger owner whose process is this one, started paused."""
        from ..ledger.store import Ledger, OwnerKind
        from .domains import job_engine

        config = self.site()
        uri = config.default_uri
        key = WarmKey(-1, f"{template}.{secrets.token_hex(8)}")
        folder = key.folder(config)
        with Ledger.for_site(config) as ledger:
            owner = ledger.register_owner(OwnerKind.JOB, key.owner_id, uri, description=template)
            engine = job_engine(config, ledger, self.connections, key)
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                spec = warm_spec(config, template, key)
                xml = engine.deploy_vm(owner, VMPlan(spec, uri))
                self.connections(uri).start(key.domain, paused=True)
            except BaseException:
                with contextlib.suppress(SdError):
                    engine.teardown(owner, graceful=False)
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return WarmVM(template, key, uri, comparable(xml, str(folder), key.domain))

    # -- claims ----------------------------------------------------------------------------
    def take(
        self,
        ledger: Ledger,
        owner: Owner,
        engine: Engine,
        vm: VMPlan,
        extra: tuple[ExtraDisk, ...],
        template: str,
    ) -> str | None:
        """PREPARE_JOB's claim: the domain of the warm VM OWNER's job takes, its ledger rows
        now OWNER's; None when none matches (the cold path). Its disks EXTRA are plugged in by
        `plug`, which the service calls after PREPARE_JOB's reply (libvirt's hotplug of two
        disks takes ~25 ms, a define ~1.5 ms: it is done while the runner starts)."""
        if template not in self.templates or self._stopping.is_set():
            return None
        began = self.clock()
        paths = [str(disk.source.path) for disk in extra]
        job_xml = engine.planned_xml(owner.owner_id, vm, extra)
        form = comparable(job_xml, str(engine.paths.overlay_dir), vm.domain, paths)
        with self._lock:
            warm = self._idle.get(template)
            if warm is None or warm.form != form or warm.uri != vm.uri:
                if warm is not None:
                    log.info(
                        "job %s: not the warm VM of %s (another size, or the template changed)",
                        owner.owner_id,
                        template,
                    )
                    self._doubted.add(template)
                    self._wake.set()
                return None
            del self._idle[template]
            self._after_claim.add(template)
            self._retry_at[template] = self.clock() + REFILL_AFTER
        self._wake.set()  # the next one is made after the job's boot (`REFILL_AFTER`)
        from ..ledger.store import OwnerKind

        try:
            giver = ledger.owner(OwnerKind.JOB, warm.key.owner_id, warm.uri)
            if giver is None:
                raise SdError(f"warm VM {warm.key.domain} has no ledger owner")
            ledger.hand_over(giver, owner)
        except SdError as exc:
            log.warning("job %s: warm VM %s not taken: %s", owner.owner_id, warm.key.domain, exc)
            self.discard(warm)
            return None
        with self._lock:
            self._pending[owner.owner_id] = _Pending(
                warm, job_disk_targets(job_xml, paths), vm, extra
            )
        log.info(
            "job %s: took warm VM %s (%.0f ms)",
            owner.owner_id,
            warm.key.domain,
            1000 * (self.clock() - began),
        )
        return warm.key.domain

    def plug(self, uid: int, job_id: str) -> bool | None:
        """After PREPARE_JOB's reply: plug the job's disks into the warm VM it took; None
        when it took none. If that fails, the warm VM goes and the job's own VM is made and
        started paused instead (the cold path, late); False when that fails too (its run
        then says why)."""
        from ..ledger.store import Ledger, OwnerKind
        from .domains import job_domain

        key = JobKey(uid, job_id)
        with self._lock:
            pending = self._pending.pop(key.owner_id, None)
        if pending is None:
            return None
        config = self.site()
        uri = pending.warm.uri
        with Ledger.for_site(config) as ledger:
            owner = ledger.owner(OwnerKind.JOB, key.owner_id, uri)
            if owner is None or job_domain(ledger, owner, key) != pending.warm.key.domain:
                return None  # prepared again since, or cleaned up: not this VM's any more
        began = self.clock()
        try:
            self.connections(uri).attach_disks(pending.warm.key.domain, pending.disks)
        except SdError as exc:
            log.warning(
                "job %s: its disks could not be plugged into warm VM %s (%s): making its own VM",
                key.owner_id,
                pending.warm.key.domain,
                exc,
            )
            return self._cold_instead(config, key, pending)
        log.info(
            "job %s: its disks plugged into warm VM %s in %.0f ms",
            key.owner_id,
            pending.warm.key.domain,
            1000 * (self.clock() - began),
        )
        return True

    def _cold_instead(self, config: SiteConfig, key: JobKey, pending: _Pending) -> bool:
        """The taken warm VM removed from KEY's rows, and the job's own VM made as PREPARE_JOB
        makes it, started paused."""
        from ..ledger.store import Ledger, OwnerKind
        from .domains import job_engine

        warm, uri = pending.warm, pending.warm.uri
        folder = warm.key.folder(config)
        try:
            with Ledger.for_site(config) as ledger:
                owner = ledger.owner(OwnerKind.JOB, key.owner_id, uri)
                if owner is None:
                    return False
                engine = job_engine(config, ledger, self.connections, key)
                engine.teardown(
                    owner,
                    graceful=False,
                    only=lambda r: r.name == warm.key.domain or r.name.startswith(f"{folder}/"),
                )
                shutil.rmtree(folder, ignore_errors=True)
                engine.deploy_vm(owner, pending.plan, pending.extra)
            self.connections(uri).start(key.domain, paused=True)
        except (SdError, OSError) as exc:
            log.warning("job %s: its own VM could not be made either: %s", key.owner_id, exc)
            return False
        return True

    def remove_orphans(self) -> list[str]:
        """Remove the warm VMs of services that died (a SIGKILL, a crash) before this one
        started: what the reaper would, at once. Returns their domains."""
        from ..ledger.store import Ledger
        from .domains import job_engine

        config = self.site()
        removed = []
        try:
            with Ledger.for_site(config) as ledger:
                for owner in ledger.leftovers().owners:
                    if not is_warm(owner.owner_id):
                        continue
                    key = WarmKey(-1, owner.owner_id.removeprefix(WARM_PREFIX))
                    job_engine(config, ledger, self.connections, key).teardown(
                        owner, graceful=False
                    )
                    shutil.rmtree(key.folder(config), ignore_errors=True)
                    removed.append(key.domain)
                    log.info("warm VM %s of a service that died: removed", key.domain)
        except SdError as exc:  # the reaper finishes it
            log.warning("warm VMs of a service that died: not removed: %s", exc)
        return removed

    def job_ended(self) -> None:
        """A job's JOB_EXIT cleanup ended (the service calls this): no guest of the jobs that
        took warm VMs boots beside a refill now, so those taken since are made again."""
        with self._lock:
            for template in self._after_claim:
                if template not in self._backoff:
                    self._retry_at[template] = self.clock()
            self._after_claim.clear()
        self._wake.set()

    # -- the end -------------------------------------------------------------------------------
    def discard(self, warm: WarmVM) -> None:
        """Destroy WARM and remove its files and rows. Only ever one no job has: an idle one,
        or one whose take failed (a job's taken VM never comes back to the pool)."""
        from ..ledger.store import Ledger, OwnerKind
        from .domains import job_engine

        config = self.site()
        try:
            with Ledger.for_site(config) as ledger:
                owner = ledger.owner(OwnerKind.JOB, warm.key.owner_id, warm.uri)
                if owner is not None:
                    job_engine(config, ledger, self.connections, warm.key).teardown(
                        owner, graceful=False
                    )
            if owner is None:  # its rows are not in this ledger (a state folder replaced)
                self._destroy_unrecorded(warm, "its ledger rows are not there")
        except SdError as exc:  # the ledger cannot be written (a full disk): the VM goes all
            # the same; the reaper forgets its rows once we are gone
            self._destroy_unrecorded(warm, f"its ledger rows stay: {exc}")
        shutil.rmtree(warm.key.folder(config), ignore_errors=True)
        log.info("warm VM %s of %s: removed", warm.key.domain, warm.template)

    def _destroy_unrecorded(self, warm: WarmVM, why: str) -> None:
        """WARM's domain destroyed by its name once its metadata says it is that warm VM."""
        log.warning("warm VM %s: %s; destroying it by its name", warm.key.domain, why)
        try:
            hv = self.connections(warm.uri)
            if any(
                info.name == warm.key.domain
                and info.owner is not None
                and info.owner.id == warm.key.owner_id
                for info in hv.list_domains()
            ):
                hv.destroy(warm.key.domain)
                hv.undefine(warm.key.domain)
        except SdError as exc:
            log.warning("warm VM %s: not removed: %s", warm.key.domain, exc)

    def stop(self) -> None:
        """No more claims or refills; every idle warm VM destroyed and removed (the service
        stops: an upgrade or a restart must not leave paused QEMUs behind)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            idle, self._idle = list(self._idle.values()), {}
        for warm in idle:
            self.discard(warm)

    def idle(self) -> tuple[WarmVM, ...]:
        with self._lock:
            return tuple(self._idle.values())


def pool_for(config: SiteConfig, connections: Connections) -> WarmPool | None:
    """The service's pool for the site's `[jobs] warm` list (None: the site asked for none).
    Its VMs follow the site config as each is made (`privileged.site_config`)."""
    if not config.warm_templates:
        return None
    from .privileged import site_config

    return WarmPool(config.warm_templates, connections, site_config)
