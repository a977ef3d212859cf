"""A batch job's VM, on the privileged side: prepare it, run it, clean it up.

These run as root (in the helper, `privileged.py`), on behalf of a caller uid that sudo vouches
for. Nothing here trusts the caller: the description is resolved again from the job's own input
disk, site limits are applied to the resolved VM, names are derived from (caller uid, job id)
so one user can never name, see or touch another user's VM, and every file the VM uses lives in
a root-owned job folder, never at a path the user chose. Each creation is recorded in the
ledger first, so a crash is finished by the next cleanup (or the reaper).
May import: config, deploy, errors, guest.contract, hypervisor, ledger, placement, staging, vm,
batch.key, batch.confined, batch.description, batch.domains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from ..config.site import SiteConfig
from ..deploy.engine import disk_growth
from ..errors import (
    VM_LOST_EXIT,
    VM_TIMEOUT_EXIT,
    ChildFailed,
    DeployError,
    DiskWriteError,
    DomainNotFound,
    HostStorageError,
    HypervisorError,
    LimitExceeded,
    SdError,
    ShutoffTimeout,
    StagingError,
    VMFailed,
)
from ..guest import contract
from ..hypervisor.connections import Connections
from ..hypervisor.types import DAEMON_HINT, DomainState, HypervisorAPI
from ..placement.steps import VMPlan
from ..vm.domain_xml import DiskSource, ExtraDisk
from ..vm.site_policy import SitePolicy, check_capacity
from ..vm.sizing import check_disk
from ..vm.spec import DiskFormat
from . import resume
from .confined import CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, ChildLimits, run_confined
from .description import named, resolve_job
from .domains import WarmTaker, job_domain, job_engine
from .domains import job_folders as _job_folders
from .key import DEFAULT_LIMITS, WARM_PREFIX, JobKey, JobLimits
from .resume import Evicted

log = logging.getLogger(__name__)


def resolve_limits(policy: SitePolicy) -> ChildLimits:
    """The confined child's limits for a job's input and description, from [policy]."""
    return ChildLimits(
        memory_mib=policy.max_resolve_mib,
        cpu_seconds=policy.max_resolve_cpu_seconds,
        wall_seconds=float(policy.max_resolve_seconds),
        keep_capabilities=(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH),
        what="the job's description",
        doing="to resolve",
    )


def result_limits(policy: SitePolicy) -> ChildLimits:
    """... and for finding the result tar on the guest's output disk."""
    return ChildLimits(
        memory_mib=256,
        cpu_seconds=policy.max_resolve_cpu_seconds,
        wall_seconds=float(policy.max_resolve_seconds),
        keep_capabilities=(CAP_DAC_READ_SEARCH,),  # it only reads
        what="the job's result",
        doing="to read",
    )


@dataclass(frozen=True, slots=True)
class PreparedJob:
    domain: str
    uri: str
    memory_mib: int
    vcpus: int
    description: str


def prepare(
    config: SiteConfig,
    key: JobKey,
    input_stream: BinaryIO,
    *,
    limits: JobLimits | None = None,
    connections: Connections | None = None,
    warm: WarmTaker | None = None,
) -> PreparedJob:
    """Store the job's input disk, resolve its description, define its VM (not started), or
    take WARM's paused VM of the same XML (the helper service's `batch.warm.WarmPool`).

    LIMITS default to the site's [policy]; every refusal is a `PolicyError` (a hold), but too
    many VMs already (per user, per host) is `PolicyLimitReached` (back to Idle).
    """
    from ..ledger.store import Ledger, OwnerKind, ResourceKind

    limits = limits or JobLimits.of(config.policy)
    connections = connections or Connections()
    uri = config.default_uri
    folder = key.folder(config)
    with Ledger.for_site(config) as ledger, _counting_lock(ledger.path.parent) as counted:
        others = [
            o
            for o in ledger.owners()
            if o.kind is OwnerKind.JOB
            and o.host_uri == uri
            and o.owner_id != key.owner_id
            and not o.owner_id.startswith(WARM_PREFIX)  # a job's VM to be, not one more
        ]
        mine = sum(1 for o in others if o.owner_id.startswith(f"{key.uid}:"))
        check_capacity(mine, len(others), limits.policy)
        existing = ledger.owner(OwnerKind.JOB, key.owner_id, uri)
        engine = job_engine(config, ledger, connections, key)
        if existing is not None:  # a retried PREPARE_JOB: start from nothing again
            taken = _job_folders(config, ledger, existing, key)[1:]  # a warm VM's it took
            engine.teardown(existing, graceful=False)
            for gone in taken:
                shutil.rmtree(gone, ignore_errors=True)
        owner = ledger.register_owner(OwnerKind.JOB, key.owner_id, uri, pid=None)
        counted.release()
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)
            input_path = folder / "input.img"
            with ledger.intent(owner, ResourceKind.FILE, str(input_path)):
                _copy_bounded(input_stream, input_path, limits.max_input_bytes)
            # the job's untrusted work (its tar, its description) in a confined child
            spec, name, slot = run_confined(
                resolve_job,
                (config, key, input_path, folder, limits),
                resolve_limits(limits.policy),
            )
            owner = ledger.register_owner(
                OwnerKind.JOB, key.owner_id, uri, description=name, pid=None
            )
            growth = disk_growth(spec, limits.output_disk_bytes, config.image_dir, connections(uri))
            check_disk(growth, slot, named(name))
            output_path = folder / "output.img"
            with ledger.intent(owner, ResourceKind.FILE, str(output_path)):
                from ..staging import create_output_disk

                create_output_disk(output_path, limits.output_disk_bytes)
            serials = not spec.flavour.is_xen  # Xen disks have no serial: the guest reads magic
            extra = (
                ExtraDisk(
                    DiskSource(PurePosixPath(input_path), DiskFormat.RAW),
                    readonly=True,
                    serial=contract.INPUT_SERIAL if serials else None,
                ),
                ExtraDisk(
                    DiskSource(PurePosixPath(output_path), DiskFormat.RAW),
                    serial=contract.OUTPUT_SERIAL if serials else None,
                ),
            )
            domain = None
            if warm is not None and not name.endswith(".sf"):
                domain = warm.take(ledger, owner, engine, VMPlan(spec, uri), extra, name)
            if domain is None:
                engine.deploy_vm(owner, VMPlan(spec, uri), extra)
        except BaseException as exc:
            folders = _job_folders(config, ledger, owner, key)
            engine.teardown(owner, graceful=False)
            for gone in folders:
                shutil.rmtree(gone, ignore_errors=True)
            storage = _storage_failure(exc, folder)
            if storage is not None:
                raise storage from exc
            raise
    return PreparedJob(domain or key.domain, uri, spec.memory_mib, spec.vcpus, name)


def _storage_failure(exc: BaseException, folder: Path) -> HostStorageError | None:
    """EXC as the host storage problem it is, or None when it is not one.

    Only a disk that cannot take the job's files (full, over quota, read-only, failing, a
    stale network mount, a file too big for its filesystem) is the host's storage problem: the
    job goes back to Idle with a message for the site. Any other OSError (EACCES, ENOENT of a
    file we made, a hook that hung up) is a bug or another host fault: it surfaces as itself,
    its file named, never blamed on the disk. A StagingError counts only when such a disk
    caused it; every other SdError already says what it is."""
    import errno

    hints = {  # the errnos that mean "this disk cannot take the files", and what the site does
        errno.ENOSPC: "free space in its state_dir",
        errno.EDQUOT: "raise the quota of its state_dir",
        errno.EFBIG: "keep its state_dir on a filesystem that holds files this large",
        errno.EROFS: "check the disk of its state_dir (mounted read-only)",
        errno.EIO: "check the disk of its state_dir (I/O errors)",
        errno.ESTALE: "check the network filesystem of its state_dir (stale file handle)",
    }
    cause = exc if isinstance(exc, OSError) else None
    if isinstance(exc, StagingError) and not isinstance(exc, HostStorageError):
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else None
    if cause is None or cause.errno not in hints:
        return None
    what = cause.strerror or str(cause)
    if cause.filename:  # which file: an unexpected cause is then found from the message alone
        what = f"{what}: {cause.filename}"
    log.warning("job files in %s: %r", folder, cause)
    return HostStorageError(
        f"the worker cannot write the job's files in {folder.parent}: {what}",
        hint=f"the site must {hints[cause.errno]} (the job runs again, here or elsewhere)",
    )


class _CountingLock:
    """Counting a host's job VMs and registering one more is one step across processes."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


@contextlib.contextmanager
def _counting_lock(folder: Path) -> Iterator[_CountingLock]:
    import fcntl

    fd = os.open(folder / "prepare.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    lock = _CountingLock(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield lock
    finally:
        lock.release()


def _copy_bounded(source: BinaryIO, target: Path, limit: int) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    total = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise StagingError(
                    f"the job's input is larger than the site limit of {limit // 1024**2} MiB",
                    hint="transfer fewer or smaller input files",
                )
            out.write(chunk)
        if total == 0:
            raise StagingError("the job's input disk is empty")
        out.write(b"\0" * (-total % contract.SECTOR))


def run(
    config: SiteConfig,
    key: JobKey,
    out: BinaryIO,
    *,
    limits: JobLimits = DEFAULT_LIMITS,
    connections: Connections | None = None,
    install_signals: Callable[[Callable[[], None]], None] | None = None,
    runner_pid: int | None = None,
    ready: Callable[[], None] | None = None,
    install_evict: Callable[[Callable[[], None]], None] | None = None,
) -> Evicted | None:
    """Boot (or resume) the prepared VM, or restore its checkpoint (`resume`), wait until it
    powers off, then stream its result tar to OUT. READY is called just before: the helper
    service waits there for the VM's paused start (`start_paused`), after the ledger work.

    INSTALL_EVICT receives a callback that saves the VM (the runner was told the job is being
    vacated); the run then ends with the packed checkpoint (`Evicted`) instead of a result.

    INSTALL_SIGNALS receives a callback that destroys the VM at once: the sudo helper wires it
    to SIGTERM (HTCondor's hold, remove and evict kill the runner, and sudo relays the signal),
    the helper service to the runner hanging up. RUNNER_PID is the process whose life is the
    job's, recorded for the reaper (None: this one; the service names its caller, the runner).
    """
    from ..ledger.store import THIS_PROCESS, Ledger, OwnerStatus, ProcessRef, ResourceKind

    asked = time.monotonic()
    connections = connections or Connections()
    uri = config.default_uri
    with Ledger.for_site(config) as ledger:
        owner = prepared_owner(ledger, key, uri)
        # The same runner again (pid and start time): the service that ran its VM stopped
        # (an upgrade under systemd, a crash) and the runner came back to the next one.
        again = (
            runner_pid is not None
            and owner.status is OwnerStatus.ACTIVE
            and owner.process == ProcessRef.of(runner_pid)
        )
        # a second `run` (another process of the same uid) must neither move the reaper's
        # watch from the live runner nor start or take up its VM
        runner = owner.process if owner.status is OwnerStatus.ACTIVE else None
        if not again and runner is not None and runner.is_alive():
            raise DeployError(
                f"job {key.job_id} already has its runner (process {runner.pid})",
                hint="a job's VM runs for one runner; JOB_EXIT ends it",
            )
        # the reaper's sign of life: while this process lives, the job does
        ledger.set_status(
            owner, OwnerStatus.ACTIVE, pid=THIS_PROCESS if runner_pid is None else runner_pid
        )
        domain = job_domain(ledger, owner, key)
        with contextlib.suppress(SdError):  # an unreadable save file: the restore says why
            saved = resume.saved_name(config, key, connections(uri))
            if saved is not None and saved != domain:
                # the checkpoint's VM comes back under its own name: recorded first
                ledger.mark_created(ledger.record_intent(owner, ResourceKind.DOMAIN, saved))

    def destroy_now() -> None:
        with contextlib.suppress(SdError):
            connections(uri).destroy(domain)  # a new connection if libvirtd restarted

    evict = _Eviction(
        lambda: resume.save_state(connections(uri), domain, key.folder(config)), destroy_now
    )
    if install_signals is not None:
        install_signals(destroy_now)
    if install_evict is not None:
        install_evict(evict.save)
    if ready is not None:
        ready()
    started = time.monotonic()
    if again and reattach(connections(uri), domain, key.folder(config) / "output.img"):
        log.info("job %s: its runner came back: waiting on its VM again", key.job_id)
    elif resume.restore_or_start(config, key, connections(uri), domain):
        with Ledger.for_site(config) as ledger:  # the checkpoint's VM, under its saved name
            domain = job_domain(ledger, owner, key)
        log.info(
            "job %s: its VM resumed from its checkpoint in %.2f s",
            key.job_id,
            time.monotonic() - started,
        )
    else:  # where the runner's wait goes: ours (ledger, the wait for a paused start), libvirt's
        log.info(
            "job %s: VM %s running %.0f ms after the run request (%.0f ms of it libvirt's)",
            key.job_id,
            domain,
            1000 * (time.monotonic() - asked),
            1000 * (time.monotonic() - started),
        )
    try:
        wait_off_across_restarts(connections, uri, domain, limits.run_timeout_seconds)
    except HypervisorError as exc:
        if evict.requested.is_set():
            return evict.packed(
                config, key, connections(uri), domain, limits, owner.description or ""
            )
        destroy_now()
        if isinstance(exc, ShutoffTimeout):
            raise VMFailed(
                f"the job's VM did not power off within {limits.run_timeout_seconds:.0f} s "
                "(the site's [policy] max_run_seconds); it was destroyed",
                run_exit=VM_TIMEOUT_EXIT,
                hint="make the payload finish sooner, or ask the site",
            ) from exc
        raise
    if evict.requested.is_set():
        return evict.packed(config, key, connections(uri), domain, limits, owner.description or "")
    from ..staging import result_extent, result_tar_from_disk

    # The guest is done: read its output disk now; libvirt ends the process meanwhile and
    # JOB_EXIT's cleanup (or the reaper) removes the domain and the files.
    disk = key.folder(config) / "output.img"
    try:  # the guest wrote the disk: its headers are checked in a confined child
        end = run_confined(result_extent, (disk,), result_limits(limits.policy))
        result = result_tar_from_disk(disk, end)
    except (StagingError, ChildFailed, LimitExceeded) as exc:  # off, but no whole result
        raise VMFailed(
            f"the job's VM stopped without a result (it crashed or was destroyed "
            f"from outside): {exc}",
            run_exit=VM_LOST_EXIT,
        ) from exc
    with result:
        shutil.copyfileobj(result, out)
    return None


def reattach(hv: HypervisorAPI, domain: str, output: Path) -> bool:
    """Take up the job's VM DOMAIN a stopped service left running for the same runner: True
    when there is one to wait on (a paused one is resumed: the old service stopped between its
    paused start and the resume), False when it is off (booted, never run) and is to be
    started."""
    status = hv.state(domain)
    if status.state is DomainState.SHUTOFF:
        # It ran to its end (powered off, crashed, destroyed): its result, or that it left
        # none, is read below; its payload never runs twice. Off for no known reason, a blank
        # output disk means the old service stopped before the boot (a libvirtd restarted
        # since forgets the reason: a disk the guest wrote is read then, too).
        if status.reason != "unknown":
            return True
        from ..staging import guest_wrote

        return guest_wrote(output)
    if status.state is DomainState.PAUSED:
        hv.start_or_resume(domain)
    return True


class _Eviction:
    """The runner said the job is being vacated: save the VM (on the watcher's thread, while
    `run` waits for the VM to stop), then `run` packs what was saved."""

    def __init__(self, save: Callable[[], None], destroy: Callable[[], None]) -> None:
        self._save, self._destroy = save, destroy
        self.requested, self.done = threading.Event(), threading.Event()
        self.error: str = ""

    def save(self) -> None:
        if self.requested.is_set():
            return
        self.requested.set()
        started = time.monotonic()
        try:
            self._save()
            log.info("the VM was saved in %.2f s", time.monotonic() - started)
        except SdError as exc:
            self.error = f"the VM could not be saved: {exc}"
            self._destroy()
        finally:
            self.done.set()

    def packed(
        self,
        config: SiteConfig,
        key: JobKey,
        hv: HypervisorAPI,
        domain: str,
        limits: JobLimits,
        description: str,
    ) -> Evicted:
        self.done.wait(SAVE_SECONDS)
        if not self.done.is_set():
            self._destroy()
            return Evicted(None, reason=f"the VM was not saved within {SAVE_SECONDS:.0f} s")
        if self.error:
            return Evicted(None, reason=self.error)
        saved = key.folder(config) / resume.SAVED_STATE
        if not saved.is_file():
            return Evicted(None, reason="the VM stopped before it could be saved")
        xml = hv.domain_xml(domain)  # type: ignore[attr-defined]
        return resume.pack_saved(config, key, xml, description, limits, domain)


#: How long `run` waits for an eviction's save after the VM stopped (HTCondor's vacate time,
#: JobMaxVacateTime, is 10 minutes by default: saving and packing must fit in it).
SAVE_SECONDS = 300.0


def start_paused(
    config: SiteConfig, key: JobKey, *, connections: Connections | None = None
) -> bool:
    """Make the prepared VM's process and devices now, paused, so `run` only resumes it.

    The helper service calls this right after answering PREPARE_JOB, while the starter gets
    the runner going (QEMU's start under libvirt takes ~0.3 s of TCG host time). A failure
    is only logged: `run` then boots the VM itself and reports what goes wrong. The paused
    domain is torn down like a defined one (`cleanup`, the reaper): destroy, then undefine.
    """
    from ..ledger.store import Ledger

    connections = connections or Connections()
    uri = config.default_uri
    try:
        with Ledger.for_site(config) as ledger:
            domain = job_domain(ledger, prepared_owner(ledger, key, uri), key)
        if domain != key.domain:
            return True  # it took a warm VM: started paused long before
        connections(uri).start(key.domain, paused=True)
    except SdError as exc:
        log.warning("job %s: cannot start its VM paused ahead of the runner: %s", key.job_id, exc)
        return False
    return True


#: How long a runner keeps trying to reach libvirtd again while its VM runs on without it.
DAEMON_AWAY_SECONDS = 300.0


def wait_off_across_restarts(
    connections: Connections,
    uri: str,
    name: str,
    timeout: float,
    *,
    away_limit: float = DAEMON_AWAY_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait until NAME powers off, reconnecting when libvirtd restarts under us.

    QEMU keeps a VM running while libvirtd is away (an upgrade, a crash, `systemctl restart`),
    and the new daemon takes it back: a runner that gave up on the dropped connection would
    throw away a healthy job. Gives up (the error, a requeue) once the daemon stayed
    unreachable for AWAY_LIMIT seconds; TIMEOUT counts on through the outage.
    """
    deadline = clock() + timeout
    away_since: float | None = None
    while True:
        hv: HypervisorAPI | None = None
        try:
            hv = connections(uri)
            hv.wait_shutoff(name, max(0.0, deadline - clock()))
            return
        except HypervisorError as exc:
            answered = isinstance(exc, (ShutoffTimeout, DiskWriteError, DomainNotFound))
            if answered or (hv is not None and hv.is_alive()):
                raise  # an answer from a live daemon, not a lost connection
            # the next connections(uri) finds this one dead and opens another
            away_since = clock() if away_since is None else away_since
            if clock() - away_since >= away_limit:
                raise HypervisorError(
                    f"{uri}: lost libvirtd while the job's VM ran, and it "
                    f"did not come back within {away_limit:.0f} s: {exc}",
                    transient=True,
                    hint=DAEMON_HINT,
                ) from exc
            log.warning("lost %s while %s runs (%s): reconnecting", uri, name, exc)
            sleep(1.0)


def prepared_owner(ledger: Any, key: JobKey, uri: str) -> Any:
    """The job's ledger owner, which PREPARE_JOB registered; a DeployError without one."""
    from ..ledger.store import OwnerKind

    owner = ledger.owner(OwnerKind.JOB, key.owner_id, uri)
    if owner is None:
        raise DeployError(
            f"job {key.job_id} has no prepared VM on this host",
            hint="PREPARE_JOB did not run or failed",
        )
    return owner


def restore_checkpoint(
    config: SiteConfig, key: JobKey, stream: BinaryIO, *, connections: Connections | None = None
) -> str | None:
    """After `prepare`: check the job's checkpoint (untrusted, from its sandbox) and unpack
    it so that `run` restores instead of booting. None when it will resume, else why not (the
    job then starts afresh: never a hold)."""
    from ..errors import CheckpointUnusable
    from ..ledger.store import Ledger

    connections = connections or Connections()
    uri = config.default_uri
    with Ledger.for_site(config) as ledger:
        owner = prepared_owner(ledger, key, uri)
        domain = job_domain(ledger, owner, key)
    try:
        resume.unpack_into_job(
            config,
            key,
            connections(uri),
            stream,
            owner.description,
            JobLimits.of(config.policy),
            domain,
        )
    except (CheckpointUnusable, ChildFailed, LimitExceeded) as exc:
        return str(exc)
    except OSError as exc:
        return f"the checkpoint could not be unpacked: {exc}"
    return None


def cleanup(config: SiteConfig, key: JobKey, *, connections: Connections | None = None) -> str:
    """Destroy and undefine the job's VM, delete its disks and folder. Safe to run twice."""
    from ..ledger.store import Ledger, OwnerKind

    connections = connections or Connections()
    uri = config.default_uri
    removed = "nothing (already clean)"
    folders = [key.folder(config)]
    with Ledger.for_site(config) as ledger:
        owner = ledger.owner(OwnerKind.JOB, key.owner_id, uri)
        if owner is not None:
            folders = _job_folders(config, ledger, owner, key)
            removed = job_engine(config, ledger, connections, key).teardown(owner, graceful=False)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def default_signal_installer(callback: Callable[[], None]) -> None:
    """SIGTERM, SIGINT, SIGHUP: destroy the VM, then die of the signal as HTCondor expects."""

    def handler(signum: int, _frame: object) -> None:
        callback()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)
