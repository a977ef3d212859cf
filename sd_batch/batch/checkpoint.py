"""An evicted job's VM as one file that travels with the job, and back (issue 18).

HTCondor's way to carry files from an evicted job to the access point and back is
`when_to_transfer_output = ON_EXIT_OR_EVICT`: at eviction the starter runs JOB_EXIT, then sends
the output sandbox to the schedd's SPOOL, and the next start copies it into the new scratch dir
with the input. So the checkpoint is a file in the sandbox (`staging.CHECKPOINT_FILE`), written
by the runner (the slot user) from what the privileged side packs here.

The file is a tar (streamed, never extracted to paths): `manifest.json`, `manifest.hmac`, then
one gzip member per saved file (`state` from virDomainSave, then the VM's disks that live in
its job folder: the output disk and any copy-on-write overlay; the input disk is made afresh
from the sandbox). It comes back as untrusted input: the manifest's HMAC-SHA256 under the
site's key (`checkpoint.key` in the state dir, the same on every worker of a pool) proves a
worker of this site wrote it; the manifest then names the job, the description, flavour,
memory, vCPUs and the SHA-256 of every site image the VM used, and each member's SHA-256.
Reading is bounded: the file by `[policy] max_checkpoint_mib`, each member's decompressed size
by what it restores (the VM's memory, the disk's size), the members by count and name.
May import: errors, stdlib.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Self

from ..errors import CheckpointUnusable

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.hmac"
STATE = "state"
KEY_FILE = "checkpoint.key"
MAX_MANIFEST_BYTES = 64 * 1024
MAX_MEMBERS = 16
#: Room over the memory size for the device state in a save file, and over a disk's size for
#: a qcow2 overlay's metadata.
STATE_SLACK = 64 * 1024**2
CHUNK = 1 << 20
GZIP_WBITS = 31  # zlib's gzip framing


@dataclass(frozen=True, slots=True)
class Identity:
    """What a checkpoint must match to be restored in place of a boot."""

    job_id: str
    description: str
    flavour: str
    memory_mib: int
    vcpus: int
    images: Mapping[str, str] = field(default_factory=dict)  # image path -> SHA-256

    def mismatch(self, other: Identity) -> str | None:
        """Why a checkpoint made for OTHER cannot resume as this job, or None."""
        if other.job_id != self.job_id:
            return f"it belongs to another job ({other.job_id})"
        for name in ("description", "flavour", "memory_mib", "vcpus"):
            if getattr(other, name) != getattr(self, name):
                return (
                    f"its VM had {name} {getattr(other, name)!r}, this one has "
                    f"{getattr(self, name)!r}"
                )
        if dict(other.images) != dict(self.images):
            return "it was saved with other guest images than this worker has"
        return None


def site_key(state_dir: Path) -> bytes:
    """The site's checkpoint key (32 random bytes, root's, 0600), made on first use. A pool
    copies one key to every worker so that a job resumes anywhere."""
    path = state_dir / KEY_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
    with open(path, "rb") as handle:
        key = handle.read(4096)
    if len(key) < 16:
        raise CheckpointUnusable(f"the site's checkpoint key {path} is shorter than 16 bytes")
    return key


def image_digests(xml: str, image_dir: Path) -> dict[str, str]:
    """SHA-256 of every site image file a domain's XML names (kernel, initrd, base disks)."""
    prefix = str(image_dir).rstrip("/") + "/"
    found = sorted(set(re.findall(r"(?:>|file=['\"])(" + re.escape(prefix) + r"[^<'\"]+)", xml)))
    digests = {}
    for name in found:
        with open(name, "rb") as handle:
            digests[name[len(prefix) :]] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def _sign(key: bytes, manifest: bytes) -> bytes:
    return hmac.new(key, manifest, hashlib.sha256).hexdigest().encode()


# -- writing ---------------------------------------------------------------------------------
def pack(
    out_path: Path,
    identity: Identity,
    files: Mapping[str, Path],
    *,
    key: bytes,
    folder: Path,
    limit: int,
    level: int = 1,
) -> int:
    """Write FILES (member name -> path: `state` and the disks) gzip-compressed into the
    checkpoint OUT_PATH with a signed manifest; returns its size. Over LIMIT bytes is a
    `CheckpointUnusable` (nothing is left behind): the job will start afresh."""
    blobs: dict[str, Path] = {}
    digests: dict[str, str] = {}
    total = 0
    try:
        for name, path in files.items():
            blob = folder / f".ckpt-{name}.gz"
            blobs[name] = blob
            digests[name], size = _compress(path, blob, level, limit - total)
            total += size
        manifest = json.dumps(
            {
                "format": FORMAT,
                "identity": asdict(identity),
                "folder": str(folder),
                "members": digests,
            },
            sort_keys=True,
        ).encode()
        with (
            open(out_path, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w|", format=tarfile.GNU_FORMAT) as tar,
        ):
            _add(tar, MANIFEST, io.BytesIO(manifest), len(manifest))
            signature = _sign(key, manifest)
            _add(tar, SIGNATURE, io.BytesIO(signature), len(signature))
            for name, blob in blobs.items():
                with open(blob, "rb") as source:
                    _add(tar, name, source, blob.stat().st_size)
        size = out_path.stat().st_size
        if size > limit:
            raise _too_big(limit)
        return size
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    finally:
        for blob in blobs.values():
            blob.unlink(missing_ok=True)


def _too_big(limit: int) -> CheckpointUnusable:
    return CheckpointUnusable(
        f"the checkpoint is over the site limit of {limit >> 20} MiB "
        "([policy] max_checkpoint_mib): it is not kept"
    )


def _add(tar: tarfile.TarFile, name: str, data: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o600
    tar.addfile(info, data)


def _compress(source: Path, target: Path, level: int, room: int) -> tuple[str, int]:
    packer = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as inp, open(target, "wb") as out:
        for chunk in iter(lambda: inp.read(CHUNK), b""):
            for data in (packer.compress(chunk),):
                digest.update(data)
                out.write(data)
                size += len(data)
            if size > room:
                raise _too_big(room)
        data = packer.flush()
        digest.update(data)
        out.write(data)
        size += len(data)
    return digest.hexdigest(), size


# -- reading (untrusted) -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Restored:
    """A checkpoint unpacked into the job's folder: the saved-from folder (to map paths)."""

    old_folder: str
    members: tuple[str, ...]


class _PlainMember(tarfile.TarInfo):
    """Only plain files: a PAX or GNU long-name header is refused from its 512-byte header,
    before tarfile reads its data into memory (whatever size it claims)."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise CheckpointUnusable(f"the checkpoint holds an unexpected member {info.name!r}")
        return info


class _Bounded(io.RawIOBase):
    """The checkpoint stream, refused past LIMIT bytes."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.stream, self.limit, self.count = stream, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(min(len(buffer), self.limit + 1 - self.count))
        self.count += len(data)
        if self.count > self.limit:
            raise _too_big(self.limit)
        buffer[: len(data)] = data
        return len(data)


def copy_bounded(stream: IO[bytes], path: Path, limit: int) -> int:
    """The checkpoint as it arrives, unparsed, into PATH; over LIMIT bytes is refused."""
    reader = _Bounded(stream, limit)
    total = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        buffer = bytearray(CHUNK)
        while count := reader.readinto(buffer):
            out.write(buffer[:count])
            total += count
    return total


def unpack_file(
    path: Path, identity: Identity, targets: Mapping[str, tuple[Path, int]], key: bytes, limit: int
) -> Restored:
    """`unpack` of the file `copy_bounded` wrote (what a confined child runs)."""
    with open(path, "rb") as stream:
        return unpack(stream, identity, targets, key=key, limit=limit)


def unpack(
    stream: IO[bytes],
    identity: Identity,
    targets: Mapping[str, tuple[Path, int]],
    *,
    key: bytes,
    limit: int,
) -> Restored:
    """Check and unpack a checkpoint from STREAM: member name -> (file to write, most bytes it
    may decompress to) for `state` and each disk. Every refusal is `CheckpointUnusable`
    saying why; files already written are the caller's to remove (they are in its folder)."""
    try:
        return _unpack(stream, identity, targets, key=key, limit=limit)
    except (tarfile.TarError, zlib.error, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointUnusable(f"the checkpoint is corrupt: {exc}") from exc


def _unpack(
    stream: IO[bytes],
    identity: Identity,
    targets: Mapping[str, tuple[Path, int]],
    *,
    key: bytes,
    limit: int,
) -> Restored:
    reader = io.BufferedReader(_Bounded(stream, limit), CHUNK)
    manifest: dict[str, Any] | None = None
    raw_manifest = b""
    done: list[str] = []
    with tarfile.open(fileobj=reader, mode="r|", tarinfo=_PlainMember) as tar:
        for count, info in enumerate(_members(tar)):
            if count >= MAX_MEMBERS or not info.isreg():
                raise CheckpointUnusable(f"the checkpoint holds an unexpected member {info.name!r}")
            data = tar.extractfile(info)
            if data is None:
                raise CheckpointUnusable(f"the checkpoint's {info.name!r} cannot be read")
            if count == 0 and info.name == MANIFEST and info.size <= MAX_MANIFEST_BYTES:
                raw_manifest = data.read()
            elif count == 1 and info.name == SIGNATURE and raw_manifest:
                if not hmac.compare_digest(data.read(128), _sign(key, raw_manifest)):
                    raise CheckpointUnusable(
                        "the checkpoint's signature does not match: it "
                        "was not written by this site's workers, or was "
                        "changed"
                    )
                manifest = _checked_manifest(raw_manifest, identity, targets)
            elif (
                manifest is not None and info.name in manifest["members"] and info.name not in done
            ):
                path, bound = targets[info.name]
                _inflate(data, path, bound, manifest["members"][info.name], info.name)
                done.append(info.name)
            else:
                raise CheckpointUnusable(f"the checkpoint holds an unexpected member {info.name!r}")
    if manifest is None or sorted(done) != sorted(manifest["members"]):
        raise CheckpointUnusable("the checkpoint is incomplete")
    return Restored(str(manifest["folder"]), tuple(done))


def _members(tar: tarfile.TarFile) -> Iterable[tarfile.TarInfo]:
    while (info := tar.next()) is not None:
        yield info


def _checked_manifest(
    raw: bytes, identity: Identity, targets: Mapping[str, tuple[Path, int]]
) -> dict[str, Any]:
    manifest = json.loads(raw)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointUnusable("the checkpoint is of another format")
    saved = Identity(**manifest["identity"])
    why = identity.mismatch(saved)
    if why:
        raise CheckpointUnusable(f"the checkpoint cannot resume this job: {why}")
    members = manifest.get("members")
    if not isinstance(members, dict) or STATE not in members or set(members) - set(targets):
        raise CheckpointUnusable("the checkpoint's VM has other disks than this job's VM")
    return manifest


def _inflate(data: IO[bytes], path: Path, bound: int, want: str, name: str) -> None:
    """Decompress DATA into PATH, at most BOUND bytes out whatever the input claims."""
    unpacker = zlib.decompressobj(GZIP_WBITS)
    digest = hashlib.sha256()
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in iter(lambda: data.read(CHUNK), b""):
            digest.update(chunk)
            pending = chunk
            while pending:
                piece = unpacker.decompress(pending, CHUNK)
                pending = unpacker.unconsumed_tail
                written += len(piece)
                if written > bound:
                    raise CheckpointUnusable(
                        f"the checkpoint's {name} decompresses to more "
                        f"than the {bound >> 20} MiB it may restore"
                    )
                out.write(piece)
        if not unpacker.eof:
            raise CheckpointUnusable(f"the checkpoint's {name} is truncated")
    if not hmac.compare_digest(digest.hexdigest(), str(want)):
        raise CheckpointUnusable(f"the checkpoint's {name} does not match its manifest")
