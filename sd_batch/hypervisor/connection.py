"""The one edge to libvirt: connections, domain lifecycle, overlay volumes, host capacity.

Owns every libvirt call of sd-batch (volumes and pools in `storage`, which `Hypervisor` holds
and delegates to) and the translation of `libvirtError` into our exceptions (one function,
`translate_error`). `libvirt` and `tenacity` are imported lazily, so importing this module
stays cheap and works without libvirt-python. libvirt's own error printing is silenced: hook
stderr is HTCondor's StarterLog, and every error reaches the caller as an exception anyway.
May import: errors, hypervisor.types, hypervisor.storage, vm.domain_xml (owner metadata), libvirt,
tenacity, stdlib.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Self

from ..errors import DiskWriteError as DiskWriteError
from ..errors import DomainNotFound, HypervisorError
from ..errors import ShutoffTimeout as ShutoffTimeout
from .storage import Storage, dir_pool_xml
from .types import (
    DAEMON_HINT,
    MIB,
    PAUSED_REASONS,
    SHUTOFF_REASONS,
    DomainInfo,
    DomainOwner,
    DomainState,
    DomainStatus,
    HostCapacity,
    HostFile,
    HostLoad,
    HypervisorAPI,
)

log = logging.getLogger(__name__)

#: The value types live in hypervisor.types (pure); callers import them from here too.
__all__ = [
    "DAEMON_HINT",
    "MIB",
    "DiskWriteError",
    "DomainInfo",
    "DomainOwner",
    "DomainState",
    "DomainStatus",
    "HostCapacity",
    "HostLoad",
    "Hypervisor",
    "HypervisorAPI",
    "ShutoffTimeout",
    "connect",
    "dir_pool_xml",
    "is_transient",
    "translate_error",
]


# --- libvirt, loaded once ----------------------------------------------------------------------

_setup_lock = threading.Lock()
_event_loop_started = False


@functools.cache
def _libvirt() -> ModuleType:
    """Import libvirt on first use, with its error printing turned off."""
    try:
        import libvirt  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise HypervisorError(
            "libvirt-python is not installed", hint="pip install 'sd-batch[libvirt]'"
        ) from exc
    libvirt.registerErrorHandler(_ignore_libvirt_error, None)
    module: ModuleType = libvirt
    return module


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; ours reach callers as exceptions."""


def _ensure_event_loop(lv: ModuleType) -> None:
    """Register libvirt's event loop (it must precede any open) and run it in a daemon thread."""
    global _event_loop_started
    with _setup_lock:
        if _event_loop_started:
            return
        lv.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                lv.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


# --- the one error mapping ---------------------------------------------------------------------

_RETRYABLE_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
    }
)


def is_transient(exc: BaseException) -> bool:
    """True for connection-level libvirt failures that a later attempt may not meet."""
    lv = _libvirt()
    if not isinstance(exc, lv.libvirtError):
        return False
    code, domain = exc.get_error_code(), exc.get_error_domain()
    if code in (lv.VIR_ERR_OPERATION_TIMEOUT, lv.VIR_ERR_INVALID_CONN, lv.VIR_ERR_RPC):
        return True
    if code == lv.VIR_ERR_NO_CONNECT:
        # From VIR_FROM_NONE it means "no driver takes this URI": a typo, not a hiccup.
        return bool(domain != lv.VIR_FROM_NONE)
    if code == lv.VIR_ERR_SYSTEM_ERROR and domain in (lv.VIR_FROM_RPC, lv.VIR_FROM_REMOTE):
        return exc.get_int1() in _RETRYABLE_ERRNOS  # int1 holds the errno; EACCES will not heal
    return False


def translate_error(
    exc: BaseException, *, uri: str, action: str, name: str | None = None
) -> HypervisorError:
    """Our exception for a libvirtError: the URI, what failed, libvirt's words and a hint."""
    lv = _libvirt()
    if not isinstance(exc, lv.libvirtError):
        return HypervisorError(f"{uri}: cannot {action}: {exc}")
    code = exc.get_error_code()
    if code == lv.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(f"{uri}: no domain named {name}" if name else str(exc))
    message = f"{uri}: cannot {action} {name}: " if name else f"{uri}: cannot {action}: "
    message += str(exc.get_error_message()).strip()
    transient = is_transient(exc)
    hint: str | None = None
    if transient:
        hint = DAEMON_HINT if code == lv.VIR_ERR_SYSTEM_ERROR else "libvirtd may be restarting"
    elif code == lv.VIR_ERR_SYSTEM_ERROR and exc.get_int1() in (errno.EACCES, errno.EPERM):
        hint = "run as root, add this user to the libvirt group, or use qemu:///session"
    elif code in (lv.VIR_ERR_AUTH_FAILED, lv.VIR_ERR_AUTH_CANCELLED, lv.VIR_ERR_AUTH_UNAVAILABLE):
        hint = "check this user's polkit/SASL rights on that host"
    elif code == lv.VIR_ERR_NO_CONNECT:
        hint = "check the URI (qemu:///system, xen:///system, test:///...) and the host's drivers"
    elif code == lv.VIR_ERR_NO_SUPPORT:
        hint = "this libvirt driver does not offer that operation"
    return HypervisorError(message, transient=transient, hint=hint)


# --- the connection ----------------------------------------------------------------------------


class Hypervisor:
    """One libvirt connection. Teardown calls are idempotent: the exit hook may run twice."""

    def __init__(self, conn: Any, uri: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._conn = conn
        self._uri = uri
        self._clock = clock  # for wait_shutoff's timeout; tests pass a fake
        self._lv = _libvirt()
        #: Volumes and storage pools on this connection.
        self.storage = Storage(conn, self._lv, uri, self._errors, is_transient)

    @classmethod
    def connect(
        cls,
        uri: str,
        *,
        attempts: int = 6,
        max_delay: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> Self:
        """Open URI, retrying transient failures (daemon down or restarting) with backoff.

        The waits grow 0.25, 0.5, 1, 2, 4 s: 6 attempts sleep 7.75 s at most, well inside
        HTCondor's 30 s hook timeout. Auth errors and bad URIs fail at the first attempt.
        """
        import tenacity

        lv = _libvirt()
        _ensure_event_loop(lv)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_after_delay(max_delay),
            wait=tenacity.wait_exponential(multiplier=0.25, max=4.0),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
            sleep=sleep,
            reraise=True,
        )
        try:
            conn = retrying(lv.open, uri)
        except lv.libvirtError as exc:
            raise translate_error(exc, uri=uri, action="connect") from exc
        with contextlib.suppress(lv.libvirtError):  # local drivers have no keepalive
            conn.setKeepAlive(5, 3)  # a hung daemon fails our calls after ~20 s, not never
        return cls(conn, uri, clock=clock)

    @property
    def uri(self) -> str:
        return self._uri

    def close(self) -> None:
        with contextlib.suppress(self._lv.libvirtError):
            self._conn.close()

    def libvirt_connection(self) -> Any:
        """The libvirt connection itself, for what this class does not wrap: a test driver's
        host lives only in its connection, so tests set up and read back its state here."""
        return self._conn

    def is_alive(self) -> bool:
        """Whether the connection still works (libvirtd restarted, ssh dropped: it does not)."""
        try:
            return bool(self._conn.isAlive())
        except self._lv.libvirtError:
            return False

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self, action: str, name: str | None = None) -> Iterator[None]:
        """Every libvirt call runs in here: a libvirtError leaves as one of ours."""
        try:
            yield
        except self._lv.libvirtError as exc:
            raise translate_error(exc, uri=self._uri, action=action, name=name) from exc

    # -- volumes (HypervisorAPI): the storage's -------------------------------------------------
    def create_overlay(
        self,
        pool_or_dir: str | Path,
        name: str,
        backing_path: str | Path,
        capacity_bytes: int = 0,
        backing_format: str = "qcow2",
    ) -> str:
        return self.storage.create_overlay(
            pool_or_dir, name, backing_path, capacity_bytes, backing_format
        )

    def create_blank(
        self, pool_or_dir: str | Path, name: str, capacity_bytes: int, format: str = "qcow2"
    ) -> str:
        return self.storage.create_blank(pool_or_dir, name, capacity_bytes, format)

    def volume_path(self, pool_or_dir: str | Path, name: str) -> str:
        return self.storage.volume_path(pool_or_dir, name)

    def delete_volume(self, path: str | Path) -> None:
        self.storage.delete_volume(path)

    def image_capacity(self, path: str | Path) -> int:
        return self.storage.image_capacity(path)

    def host_file(self, path: str | Path) -> HostFile | None:
        return self.storage.host_file(path)

    def ensure_folder(self, folder: str | Path) -> None:
        self.storage.ensure_folder(folder)

    def upload_file(self, target: str | Path, source: Path) -> None:
        self.storage.upload_file(target, source)

    def read_file(
        self, path: str | Path, sink: Callable[[bytes], object], limit: int | None = None
    ) -> bool:
        return self.storage.read_file(path, sink, limit)

    def _lookup(self, name: str) -> Any:
        with self._errors("look up domain", name):
            return self._conn.lookupByName(name)

    # --- domains ---

    def define(self, xml: str) -> str:
        """Define a persistent domain, validated against libvirt's schema; returns its name."""
        with self._errors("define domain"):
            return str(self._conn.defineXMLFlags(xml, self._lv.VIR_DOMAIN_DEFINE_VALIDATE).name())

    def start(self, name: str, *, paused: bool = False) -> None:
        """Boot NAME; PAUSED makes its process and devices but runs no guest code yet
        (`resume` does), so a job's VM is ready before its runner asks for it. A driver
        without VIR_DOMAIN_START_PAUSED (the test driver) starts, then suspends at once."""
        lv = self._lv
        dom = self._lookup(name)
        with self._errors("start domain", name):
            if not paused:
                dom.create()
                return
            try:
                dom.createWithFlags(lv.VIR_DOMAIN_START_PAUSED)
            except lv.libvirtError as exc:
                if exc.get_error_code() not in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT):
                    raise
                dom.create()
                dom.suspend()

    def attach_disks(self, name: str, disks: Sequence[str]) -> None:
        """Plug DISKS (`<disk>` XML each) into NAME, running or paused, and into its persistent
        definition too (a checkpoint's restore and a cleanup read that one). Into a VM started
        paused and never resumed (QEMU's prelaunch), the guest finds them at its boot as if they
        had been there from the start. The test driver has no hotplug (and runs no guest): there
        only the definition gets them."""
        lv = self._lv
        dom = self._lookup(name)
        live, config = lv.VIR_DOMAIN_AFFECT_LIVE, lv.VIR_DOMAIN_AFFECT_CONFIG
        with self._errors("attach a disk to", name):
            for disk in disks:
                try:
                    dom.attachDeviceFlags(disk, live | config)
                except lv.libvirtError as exc:
                    if exc.get_error_code() != lv.VIR_ERR_NO_SUPPORT or not self.uri.startswith(
                        "test:"
                    ):
                        raise
                    self._define_with(dom, disk)

    def _define_with(self, dom: Any, disk: str) -> None:
        """The test driver's stand-in for a hotplug: DISK added to the persistent definition."""
        root = ET.fromstring(dom.XMLDesc(self._lv.VIR_DOMAIN_XML_INACTIVE))
        devices = root.find("devices")
        if devices is None:
            devices = ET.SubElement(root, "devices")
        devices.append(ET.fromstring(disk))
        self._conn.defineXML(ET.tostring(root, encoding="unicode"))

    def start_or_resume(self, name: str) -> None:
        """Run NAME's guest: resume it when a paused start made it ready, else boot it.
        A domain paused by a failing host disk (ioerror) is not resumed: `wait_shutoff` says
        why it stopped."""
        dom = self._lookup(name)
        with self._errors("start domain", name):
            status = _status(*dom.state())
            if status.state is DomainState.PAUSED and status.reason != "ioerror":
                dom.resume()
            else:
                dom.create()  # refused for a domain that already runs, as before

    def save(self, name: str, path: str | Path) -> None:
        """Pause NAME and save its memory and device state to PATH (virDomainSaveFlags); the
        domain is off afterwards. Pausing first stops the guest touching its disks."""
        dom = self._lookup(name)
        with self._errors("save domain", name):
            if dom.isActive():
                dom.suspend()
            dom.saveFlags(str(path), None, 0)

    def saved_xml(self, path: str | Path) -> str:
        """The domain XML a save file holds (virDomainSaveImageGetXMLDesc)."""
        with self._errors("read save file"):
            return str(self._conn.saveImageGetXMLDesc(str(path), 0))

    def restore(self, path: str | Path, xml: str | None) -> None:
        """Start a domain from a save file running, with XML (ABI-compatible with the saved
        one: this host's paths and name) in place of the saved definition, or None: as saved
        (virDomainRestoreFlags)."""
        lv = self._lv
        with self._errors("restore domain"):
            try:
                self._conn.restoreFlags(str(path), xml, lv.VIR_DOMAIN_SAVE_RUNNING)
            except lv.libvirtError as exc:  # the test driver takes no flags: resume after
                if exc.get_error_code() not in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT):
                    raise
                self._conn.restoreFlags(str(path), xml, 0)
                saved = xml or self._conn.saveImageGetXMLDesc(str(path), 0)
                name = ET.fromstring(saved).findtext("name") or ""
                dom = self._conn.lookupByName(name)
                if dom.state()[0] == lv.VIR_DOMAIN_PAUSED:
                    dom.resume()

    def domain_xml(self, name: str) -> str:
        dom = self._lookup(name)
        with self._errors("read domain XML", name):
            return str(dom.XMLDesc(0))

    def shutdown(self, name: str) -> None:
        """Ask the guest to power off (ACPI); nothing to do when it is already off."""
        dom = self._lookup(name)
        with self._errors("shut down domain", name):
            if dom.isActive():
                dom.shutdown()

    def destroy(self, name: str) -> None:
        """Power off at once. A missing or already stopped domain is fine."""
        lv = self._lv
        with contextlib.suppress(DomainNotFound), self._errors("destroy domain", name):
            dom = self._conn.lookupByName(name)
            try:
                dom.destroy()
            except lv.libvirtError as exc:
                refused = (lv.VIR_ERR_OPERATION_INVALID, lv.VIR_ERR_INTERNAL_ERROR)
                if exc.get_error_code() not in refused or dom.isActive():
                    raise  # not the driver's way of saying "it is not running"

    def undefine(self, name: str) -> None:
        """Remove the definition with its managed save, snapshots and NVRAM; missing is fine.

        Drivers accept different flag sets (the test driver refuses NVRAM, libxl snapshots), so
        we step down through the combinations rather than probe each driver.
        """
        lv = self._lv
        save, snaps = lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE, lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        nvram, checkpoints = (
            lv.VIR_DOMAIN_UNDEFINE_NVRAM,
            lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
        )
        refused = (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT)  # "unsupported flags"
        with contextlib.suppress(DomainNotFound), self._errors("undefine domain", name):
            dom = self._conn.lookupByName(name)
            # QEMU takes all; the test driver save | snaps; libxl save | nvram.
            for flags in (save | snaps | nvram | checkpoints, save | snaps, save | nvram, save, 0):
                try:
                    dom.undefineFlags(flags)
                    return
                except lv.libvirtError as exc:
                    if flags == 0 or exc.get_error_code() not in refused:
                        raise

    def state(self, name: str) -> DomainStatus:
        dom = self._lookup(name)
        with self._errors("query domain", name):
            return _status(*dom.state())

    def wait_shutoff(self, name: str, timeout: float, *, poll: float = 1.0) -> DomainStatus:
        """Block until the domain is off, woken by libvirt lifecycle events.

        The guest having finished (the SHUTDOWN event: QEMU stopped its vCPUs at the guest's
        power-off) counts as off: libvirt's own teardown of the process (~0.2 s of killing
        QEMU on on_poweroff=destroy) is not waited for. The callback is registered before the
        state is read, so a stop in between is not lost; the state is read again every `poll`
        s in case an event never comes (a dropped connection). Raises ShutoffTimeout once
        `timeout` seconds of the clock have passed.
        """
        clock = self._clock
        lv = self._lv
        dom = self._lookup(name)
        changed = threading.Event()
        finished = threading.Event()

        def on_lifecycle(_c: object, _d: object, event: int, _detail: int, _o: object) -> None:
            if event == lv.VIR_DOMAIN_EVENT_SHUTDOWN:
                finished.set()  # any detail: guest- or host-initiated, no guest code runs now
            if event in (
                lv.VIR_DOMAIN_EVENT_STOPPED,
                lv.VIR_DOMAIN_EVENT_UNDEFINED,
                lv.VIR_DOMAIN_EVENT_SUSPENDED,
                lv.VIR_DOMAIN_EVENT_SHUTDOWN,
            ):
                changed.set()

        deadline = clock() + timeout
        with self._errors("watch domain", name):
            callback_id = self._conn.domainEventRegisterAny(
                dom, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None
            )
        try:
            while True:
                changed.clear()
                if finished.is_set():
                    return DomainStatus(DomainState.SHUTDOWN, "finished")
                status = self.state(name)
                if status.state.is_off:
                    return status
                if status.state is DomainState.PAUSED and status.reason == "ioerror":
                    raise DiskWriteError(
                        f"{self._uri}: domain {name} was paused: {self._disk_errors(dom)}",
                        hint="free space on the host's disk (overlays, "
                        "output disks live in the state dir)",
                    )
                remaining = deadline - clock()
                if remaining <= 0:
                    still = f"still {status.state.name.lower()} after {timeout:g} s"
                    raise ShutoffTimeout(f"{self._uri}: domain {name} {still}")
                changed.wait(min(remaining, poll))
        finally:
            with contextlib.suppress(lv.libvirtError):
                self._conn.domainEventDeregisterAny(callback_id)

    def _disk_errors(self, dom: Any) -> str:
        """Which disks failed and how, in words ("vdc: no space left on the host's disk")."""
        lv = self._lv
        words = {
            lv.VIR_DOMAIN_DISK_ERROR_NO_SPACE: "no space left on the host's disk",
            lv.VIR_DOMAIN_DISK_ERROR_UNSPEC: "the host's disk failed a write",
        }
        try:
            errors = dom.diskErrors() or {}
        except lv.libvirtError:
            errors = {}
        said = [
            f"{disk}: {words.get(code, f'error {code}')}"
            for disk, code in sorted(errors.items())
            if code != lv.VIR_DOMAIN_DISK_ERROR_NONE
        ]
        return "; ".join(said) or "a disk write failed on the host"

    def list_domains(self) -> tuple[DomainInfo, ...]:
        """All domains, with our owner metadata; domains vanishing meanwhile are skipped."""
        from ..vm.domain_xml import SD_NAMESPACE

        lv = self._lv
        found = []
        with self._errors("list domains"):
            for dom in self._conn.listAllDomains(0):
                try:
                    state = _status(*dom.state()).state
                    meta = dom.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, SD_NAMESPACE, 0)
                except lv.libvirtError as exc:
                    if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                        continue
                    if exc.get_error_code() != lv.VIR_ERR_NO_DOMAIN_METADATA:
                        raise
                    meta = None
                found.append(DomainInfo(dom.name(), state, _parse_owner(meta)))
        return tuple(sorted(found, key=lambda d: d.name))

    # --- host ---

    def host_capacity(self) -> HostCapacity:
        """CPUs and memory from virNodeGetInfo; free memory where the driver knows it."""
        with self._errors("read host capacity"):
            arch, memory_mib, cpus, *_ = self._conn.getInfo()
            driver = str(self._conn.getType())
            free = self._free_memory_mib() if driver != "TEST" else 0  # the test driver's
            caps = ET.fromstring(self._conn.getCapabilities())  # is a made-up constant
        types = {d.get("type", "") for d in caps.iterfind("guest/arch/domain")} - {""}
        return HostCapacity(
            uri=self._uri,
            hypervisor=driver,
            arch=str(arch),
            cpus=int(cpus),
            memory_mib=int(memory_mib),
            free_memory_mib=free or None,  # 0 means "not known" (test driver node files)
            domain_types=tuple(sorted(types)),
        )

    def _free_memory_mib(self) -> int:
        """Memory the host could give a new VM: free plus page cache and buffers (the kernel
        drops those on demand), from virNodeGetMemoryStats; else virNodeGetFreeMemory (free
        alone); 0 where the driver knows neither."""
        lv = self._lv
        try:
            stats = self._conn.getMemoryStats(lv.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
            return sum(int(stats.get(k, 0)) for k in ("free", "buffers", "cached")) // 1024
        except lv.libvirtError:
            pass
        try:
            return int(self._conn.getFreeMemory()) // MIB
        except lv.libvirtError:
            return 0

    def host_load(self) -> HostLoad:
        """Active domains and their maximum memory and vCPUs: what placement counts as used
        (a shut-off domain holds nothing). Domains vanishing meanwhile are skipped."""
        lv = self._lv
        memory_kib = vcpus = count = 0
        with self._errors("read host load"):
            for dom in self._conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    _state, max_kib, _kib, nr_vcpus, _cpu_time = dom.info()
                except lv.libvirtError as exc:
                    if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                        continue
                    raise
                memory_kib += int(max_kib)
                vcpus += int(nr_vcpus)
                count += 1
        return HostLoad(count, memory_kib // 1024, vcpus)


connect = Hypervisor.connect


# --- small pure helpers ------------------------------------------------------------------------


def _status(state: int, reason: int) -> DomainStatus:
    try:
        kind = DomainState(state)
    except ValueError:
        kind = DomainState.NOSTATE
    names = {DomainState.SHUTOFF: SHUTOFF_REASONS, DomainState.PAUSED: PAUSED_REASONS}.get(kind)
    if names is None:
        return DomainStatus(kind)
    return DomainStatus(kind, names[reason] if 0 <= reason < len(names) else str(reason))


def _parse_owner(meta: str | None) -> DomainOwner | None:
    try:
        element = ET.fromstring(meta) if meta else None
    except ET.ParseError:
        return None
    if element is None or element.get("kind") is None or element.get("id") is None:
        return None
    return DomainOwner(str(element.get("kind")), str(element.get("id")))
