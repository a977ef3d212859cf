"""The storage half of a libvirt connection: overlay and blank volumes, dir pools over folders,
and the `qemu-img` fallback for URIs without a storage driver (qemu:///embed).

`connection.Hypervisor` owns the connection and hands this module what it needs: the libvirt
connection and module, the URI, its error translation and its test for transient failures
(this module never imports libvirt, nor `connection`). Its volume methods delegate here.
May import: errors, hypervisor.types, vm (volume XML, names), stdlib.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import HypervisorError
from .types import HostFile

Errors = Callable[[str, str | None], contextlib.AbstractContextManager[None]]


class Storage:
    """Volumes by path, in pools made on demand over folders. Deleting a missing one is fine."""

    def __init__(
        self,
        conn: Any,
        lv: Any,
        uri: str,
        errors: Errors,
        is_transient: Callable[[BaseException], bool],
    ) -> None:
        self._conn = conn  # a libvirt connection, and LV the libvirt module: the caller's
        self._lv = lv
        self._uri = uri
        self._errors = errors  # every libvirt call runs in here: a libvirtError leaves as ours
        self._is_transient = is_transient

    def create_overlay(
        self,
        pool_or_dir: str | Path,
        name: str,
        backing_path: str | Path,
        capacity_bytes: int = 0,
        backing_format: str = "qcow2",
    ) -> str:
        """Create a qcow2 copy-on-write volume over BACKING_PATH; returns the new volume's path.

        POOL_OR_DIR is a storage pool name, or a folder (a Path, or a str with a '/') for which a
        transient dir pool is made. Capacity 0 keeps the base's size. Where the URI has no
        storage driver (qemu:///embed), a folder gets `qemu-img create` instead.
        """
        base = (str(backing_path), backing_format)
        return self._create(pool_or_dir, name, capacity_bytes, "qcow2", base)

    def create_blank(
        self, pool_or_dir: str | Path, name: str, capacity_bytes: int, format: str = "qcow2"
    ) -> str:
        """Create an empty volume (a scratch disk); returns its path. See create_overlay."""
        return self._create(pool_or_dir, name, capacity_bytes, format, None)

    def _create(
        self, where: str | Path, name: str, capacity: int, fmt: str, base: tuple[str, str] | None
    ) -> str:
        from ..vm.domain_xml import volume_xml
        from ..vm.spec import NAME_PATTERN, DiskFormat

        if not NAME_PATTERN.fullmatch(name):
            raise HypervisorError(f"{self._uri}: {name!r} is not a safe volume name")
        try:
            pool = self._pool(where)
        except HypervisorError as exc:
            cause = exc.__cause__
            no_storage = isinstance(cause, self._lv.libvirtError) and (
                cause.get_error_code() == self._lv.VIR_ERR_NO_SUPPORT
            )
            if not no_storage or not _is_dir(where):
                raise
            qemu_img_create(Path(where) / name, fmt, capacity, base)
            return str(Path(where) / name)
        if base is not None and not capacity:
            capacity = self._capacity_of(base[0])
        try:
            xml = volume_xml(
                name, capacity, base and base[0], base and DiskFormat(base[1]), DiskFormat(fmt)
            )
        except ValueError as exc:
            raise HypervisorError(f"{self._uri}: cannot create volume {name}: {exc}") from exc
        with self._errors("create volume", name):
            return str(pool.createXML(xml, 0).path())

    def _pool(self, pool_or_dir: str | Path) -> Any:
        if _is_dir(pool_or_dir):
            return self.ensure_dir_pool(Path(pool_or_dir))
        with self._errors("find storage pool", str(pool_or_dir)):
            pool = self._conn.storagePoolLookupByName(str(pool_or_dir))
            if not pool.isActive():
                pool.create(0)
            return pool

    def image_capacity(self, path: str | Path) -> int:
        """A base image's virtual size in bytes: what an overlay on it can grow to."""
        return self._capacity_of(str(path))

    def _capacity_of(self, path: str) -> int:
        """A base image's virtual size, as libvirt reads it on the host that has the file."""
        found = self.host_file(path)
        if found is None:
            raise HypervisorError(
                f"{self._uri}: no base image {path} on that host",
                hint="sd images push <host> <name> puts a site image on it",
            )
        return found.size_bytes

    def host_file(self, path: str | Path) -> HostFile | None:
        """The file at PATH on this connection's host, read through libvirt (its folder
        rescanned first: files come and go behind libvirt's back); None if it has none."""
        path = str(path)
        with self._errors("look for", path):
            vol = self._rescan_for(path)
            if vol is None:
                return None
            info = vol.info()
            fmt = ET.fromstring(vol.XMLDesc(0)).find("target/format")
        return HostFile(path, int(info[1]), fmt.get("type", "raw") if fmt is not None else "raw")

    def ensure_folder(self, folder: str | Path) -> None:
        """FOLDER exists on this connection's host (libvirt builds a dir pool's folder)."""
        self.ensure_dir_pool(Path(folder))

    def upload_file(self, target: str | Path, source: Path) -> None:
        """Copy the local file SOURCE to TARGET on this connection's host through libvirt's
        storage API (virStorageVolUpload: works over any remote URI, no ssh or shared disk).
        TARGET must not exist; a failed copy leaves no partial file behind."""
        from ..vm.domain_xml import volume_xml
        from ..vm.spec import DiskFormat

        target = Path(target)
        size = source.stat().st_size
        pool = self.ensure_dir_pool(target.parent)
        xml = volume_xml(target.name, max(size, 1), None, None, DiskFormat.RAW)
        with self._errors("create volume", str(target)):
            vol = pool.createXML(xml, 0)
        try:
            with self._errors("upload", str(target)), open(source, "rb") as handle:
                stream = self._conn.newStream(0)
                vol.upload(stream, 0, size, 0)
                try:
                    stream.sendAll(lambda _s, nbytes, _o: handle.read(min(nbytes, 1 << 20)), None)
                    stream.finish()
                except BaseException:
                    with contextlib.suppress(self._lv.libvirtError):
                        stream.abort()
                    raise
        except BaseException:
            with contextlib.suppress(self._lv.libvirtError):
                vol.delete(0)
            raise

    def read_file(
        self, path: str | Path, sink: Callable[[bytes], object], limit: int | None = None
    ) -> bool:
        """Stream the file at PATH on this connection's host (its first LIMIT bytes) into SINK
        through libvirt (virStorageVolDownload); False when the host has no such file."""
        found = self.host_file(path)
        if found is None:
            return False
        with self._errors("download", str(path)):
            vol = self._conn.storageVolLookupByPath(str(path))
            length = 0 if limit is None else min(limit, found.size_bytes)  # 0: to the end
            stream = self._conn.newStream(0)
            vol.download(stream, 0, length, 0)
            while True:
                data = stream.recv(1 << 18)
                if not isinstance(data, bytes) or not data:
                    break
                sink(data)
            stream.finish()
        return True

    def volume_path(self, pool_or_dir: str | Path, name: str) -> str:
        """Where create_overlay will put NAME: what the ledger records before creating it."""
        if _is_dir(pool_or_dir):
            return str(Path(os.path.normpath(str(pool_or_dir))) / name)
        with self._errors("find storage pool", str(pool_or_dir)):
            pool_xml = self._conn.storagePoolLookupByName(str(pool_or_dir)).XMLDesc(0)
        return str(Path(ET.fromstring(pool_xml).findtext("target/path") or "/") / name)

    def delete_volume(self, path: str | Path) -> None:
        """Delete a volume by path; one that is already gone is fine."""
        lv = self._lv
        path = str(path)
        with self._errors("delete volume", path):
            try:
                vol = self._conn.storageVolLookupByPath(path)
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_NO_SUPPORT:  # no storage driver: qemu-img
                    Path(path).unlink(missing_ok=True)
                    return
                if exc.get_error_code() != lv.VIR_ERR_NO_STORAGE_VOL:
                    raise
                vol = self._rescan_for(path)
            try:
                if vol is not None:
                    vol.delete(0)
            except lv.libvirtError as exc:
                if exc.get_error_code() != lv.VIR_ERR_NO_STORAGE_VOL:
                    raise

    def _rescan_for(self, path: str) -> Any | None:
        """Look for PATH again after rescanning its folder's pool, re-made if libvirtd restarted
        (transient pools die with the daemon). None: libvirt sees no such file."""
        lv = self._lv
        folder = str(Path(path).parent)
        try:
            pool = self._find_pool(folder) or self._conn.storagePoolCreateXML(
                dir_pool_xml(_pool_name(folder), folder), 0
            )
            pool.refresh(0)
            return pool.storageVolLookupByName(Path(path).name)
        except lv.libvirtError as exc:
            if self._is_transient(exc):
                raise
            return None  # no such folder, or no such file in it

    def ensure_dir_pool(self, folder: Path) -> Any:
        """The active pool over FOLDER: an existing one, or a new transient dir pool.

        The name derives from the path, so two hooks racing to create it meet the same pool.
        """
        lv = self._lv
        wanted = os.path.normpath(str(folder))
        xml = dir_pool_xml(_pool_name(wanted), wanted)
        with self._errors("create a storage pool for", wanted):
            pool = self._find_pool(wanted)
            if pool is not None:
                return pool
            try:
                return self._conn.storagePoolCreateXML(xml, lv.VIR_STORAGE_POOL_CREATE_WITH_BUILD)
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_INVALID_ARG:
                    return self._conn.storagePoolCreateXML(xml, 0)  # the driver cannot build
                if exc.get_error_code() == lv.VIR_ERR_OPERATION_FAILED:
                    pool = self._find_pool(wanted)  # another process made it meanwhile
                if pool is None:
                    raise
                return pool

    def _find_pool(self, folder: str) -> Any | None:
        """The pool whose target is FOLDER, started if it was inactive."""
        for pool in self._conn.listAllStoragePools(0):
            path = ET.fromstring(pool.XMLDesc(0)).findtext("target/path")
            if path and os.path.normpath(path) == folder:
                if not pool.isActive():
                    pool.create(0)
                return pool
        return None


def _is_dir(pool_or_dir: str | Path) -> bool:
    return isinstance(pool_or_dir, Path) or "/" in pool_or_dir


def _pool_name(folder: str) -> str:
    import hashlib

    digest = hashlib.sha256(folder.encode()).hexdigest()[:10]
    return f"sd-batch-{Path(folder).name or 'root'}-{digest}"


def dir_pool_xml(name: str, folder: str) -> str:
    """A `<pool type='dir'>` over FOLDER."""
    pool = ET.Element("pool", type="dir")
    ET.SubElement(pool, "name").text = name
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = folder
    return ET.tostring(pool, encoding="unicode")


def qemu_img_create(
    target: Path, fmt: str, capacity_bytes: int, base: tuple[str, str] | None
) -> None:
    """Only for URIs without a storage driver: the same volume, made by qemu-img here."""
    import subprocess

    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if base is not None:
        argv += ["-b", base[0], "-F", base[1]]  # never let QEMU probe the base's format
    argv.append(str(target))
    if capacity_bytes or base is None:
        argv.append(str(capacity_bytes))
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise HypervisorError("qemu-img is missing", hint="apt-get install qemu-utils") from exc
    except subprocess.CalledProcessError as exc:
        raise HypervisorError(f"cannot create volume {target}: {exc.stderr.strip()}") from exc
