"""Whether a VM's host has the images it boots from, and where they are.

A local URI's host is this machine: its images are read here. A host of its own (a URI with a
host name, `hypervisor.types.is_remote`) keeps the site folders at the same paths with its own
files, reached only through its libvirt (a dir pool's volumes), so a host that lacks an image
is found before anything is created on any host.
May import: errors, hypervisor (types), vm (spec), the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..errors import DeployError, SpecError
from ..hypervisor.types import HypervisorAPI, is_remote
from ..vm.spec import DiskFormat, KernelBoot, VMSpec


def resolve_image(image_dir: Path, relative: PurePosixPath, what: str, spec: VMSpec) -> Path:
    """An image-folder path from a description, refusing anything outside the folder.
    Whether the file is there is its host's business (`host_image`)."""
    base = image_dir.resolve()
    candidate = (base / str(relative).lstrip("/")).resolve()
    if not candidate.is_relative_to(base):
        raise SpecError(
            f"{spec.path}: {what} {relative} is outside the site image folder {base}",
            loc=spec.loc,
            path=spec.path,
            hint="descriptions name guest images relative to the site image folder",
        )
    return candidate


def host_image(
    spec: VMSpec,
    uri: str,
    connect: Callable[[str], HypervisorAPI],
    image_dir: Path,
    relative: PurePosixPath,
    what: str,
) -> tuple[Path, str]:
    """The image RELATIVE of SPEC on URI's host, and its format (qcow2 or raw)."""
    path = resolve_image(image_dir, relative, what, spec)
    if not is_remote(uri):
        if not path.is_file():
            raise DeployError(
                f"{spec.path}: {what} {relative} does not exist in the site image folder "
                f"{image_dir.resolve()}",
                hint="scripts/build-guest builds the minimal guest there",
            )
        return path, image_format(path)
    found = connect(uri).host_file(path)
    if found is None:
        raise DeployError(
            f"{spec.path}: {what} {relative} does not exist on host {uri} (its site image "
            f"folder {image_dir.resolve()})",
            hint=f"put it there first: sd images push {uri} {relative}",
        )
    return path, "qcow2" if found.format == "qcow2" else DiskFormat.RAW.value


def images_of(
    spec: VMSpec, uri: str, connect: Callable[[str], HypervisorAPI], image_dir: Path
) -> dict[str, tuple[Path, str]]:
    """Every image SPEC boots from on URI's host: `kernel`, `initrd`, `disk:NAME` -> (path,
    format)."""
    wanted: list[tuple[str, PurePosixPath, str]] = []
    if isinstance(spec.boot, KernelBoot):
        wanted.append(("kernel", spec.boot.kernel, "kernel"))
        if spec.boot.initrd is not None:
            wanted.append(("initrd", spec.boot.initrd, "initrd"))
    wanted += [(f"disk:{d.name}", d.image, "disk image") for d in spec.disks if d.image is not None]
    return {key: host_image(spec, uri, connect, image_dir, rel, what) for key, rel, what in wanted}


def image_format(path: Path) -> str:
    """qcow2 or raw, from the file's magic: never let QEMU probe a format (unsafe)."""
    with open(path, "rb") as handle:
        return "qcow2" if handle.read(4) == b"QFI\xfb" else DiskFormat.RAW.value
