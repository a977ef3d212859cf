"""Site images on hypervisor hosts: `sd images push HOST NAME` puts a file (or a folder's files)
of the site image folder on HOST, at the same path, through that host's libvirt.

Each host keeps its own copy of the site image folder (descriptions name images relative to
it; `host_images.images_of` checks the VM's host has them). Pushing goes through libvirt's
storage API (virStorageVolUpload), so it needs nothing but the libvirt URI: no ssh, no shared
disk. Nothing is copied twice: beside each pushed file lies `FILE.sha256`, its checksum; a file
already there with the same checksum is left as it is (a file there without that record is read
back and hashed once). A file there with another checksum is refused, not overwritten: VMs'
overlays may be backed by it.
May import: config, errors, hypervisor (types, connections), the standard library.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..errors import DeployError, UsageError

if TYPE_CHECKING:
    from ..config.site import SiteConfig
    from ..hypervisor.connections import Connections
    from ..hypervisor.types import HypervisorAPI

SUFFIX = ".sha256"


@dataclass(frozen=True, slots=True)
class Pushed:
    """One file and what became of it on the host: `copied`, `present` (same checksum) or
    `verified` (there without a checksum record: read back, same checksum, record written)."""

    path: str
    sha256: str
    size: int
    outcome: str


def _local_files(config: SiteConfig, name: str) -> list[Path]:
    base = config.image_dir.resolve()
    source = (base / name.lstrip("/")).resolve()
    if not source.is_relative_to(base) or source == base:
        raise UsageError(
            f"{name!r} is not inside the site image folder {base}",
            hint="name an image relative to it: minimal, base.qcow2",
        )
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(
            p
            for p in source.rglob("*")
            if p.is_file() and not p.is_symlink() and not p.name.endswith(SUFFIX)
        )
        if files:
            return files
    raise UsageError(
        f"no image {name} in the site image folder {base}",
        hint="scripts/build-guest builds the minimal guest there",
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def push(
    config: SiteConfig,
    host: str,
    name: str,
    *,
    connections: Connections | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> list[Pushed]:
    """Put the site image NAME (a file, or every file of a folder) on HOST."""
    from ..hypervisor.connections import SHARED_CONNECTIONS

    uri = config.uri_for(host)
    sources = _local_files(config, name)  # a wrong name fails before any host is asked
    hv = (connections or SHARED_CONNECTIONS)(uri)
    results = []
    for source in sources:
        target = str(source)
        record = target + SUFFIX
        want = sha256_of(source)
        size = source.stat().st_size
        found = hv.host_file(target)
        if found is None:
            hv.delete_volume(record)  # a record of a file gone is no record
            progress(f"copying {target} ({size} bytes) to {uri}")
            hv.upload_file(target, source)
            _write_record(hv, record, want)
            results.append(Pushed(target, want, size, "copied"))
            continue
        said = bytearray()
        hv.read_file(record, said.extend, limit=128)
        there = said.decode("ascii", "replace").split()[:1]
        outcome = "present"
        if there != [want]:
            if there:
                raise _differs(uri, target, there[0], want)
            progress(f"{target} is on {uri} without a checksum record: reading it back")
            digest = hashlib.sha256()
            hv.read_file(target, digest.update)
            if digest.hexdigest() != want:
                raise _differs(uri, target, digest.hexdigest(), want)
            _write_record(hv, record, want)
            outcome = "verified"
        results.append(Pushed(target, want, size, outcome))
    return results


def _write_record(hv: HypervisorAPI, record: str, sha: str) -> None:
    """FILE.sha256 on the host, in sha256sum's format (upload sends files: a temporary one)."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=SUFFIX, encoding="ascii") as tmp:
        tmp.write(f"{sha}  {PurePosixPath(record).stem}\n")
        tmp.flush()
        hv.upload_file(record, Path(tmp.name))


def _differs(uri: str, target: str, there: str, want: str) -> DeployError:
    return DeployError(
        f"{uri} already has {target} with another checksum ({there[:12]}..., here "
        f"{want[:12]}...): not overwritten",
        hint="overlays of running VMs may be backed by it: give the new image another name, "
        "or remove the old one on that host first",
    )
