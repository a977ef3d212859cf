"""The evicted job's checkpoint file (batch.checkpoint): written, checked, refused, bounded."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest

from sd_batch.batch import checkpoint
from sd_batch.batch.checkpoint import Identity
from sd_batch.errors import CheckpointUnusable

KEY = b"k" * 32
MIB = 1024**2
ME = Identity("schedd#7.0#1", "minimal", "kvm", 256, 1, {"minimal/vmlinux": "ab" * 32})


def _files(tmp_path: Path) -> dict[str, Path]:
    state = tmp_path / "saved.state"
    state.write_bytes(b"QEMU state " * 1000 + os.urandom(4096))
    output = tmp_path / "output.img"
    with open(output, "wb") as out:
        out.truncate(4 * MIB)
        out.write(b"partial result")
    return {checkpoint.STATE: state, "output.img": output}


def _packed(tmp_path: Path, identity: Identity = ME, key: bytes = KEY) -> Path:
    folder = tmp_path / "old"
    folder.mkdir(exist_ok=True)
    out = tmp_path / "ckpt"
    checkpoint.pack(out, identity, _files(folder), key=key, folder=folder, limit=64 * MIB)
    return out


def _targets(tmp_path: Path, bound: int = 8 * MIB) -> dict[str, tuple[Path, int]]:
    new = tmp_path / "new"
    new.mkdir(exist_ok=True)
    return {checkpoint.STATE: (new / "state", bound), "output.img": (new / "output.img", bound)}


def test_a_checkpoint_comes_back_as_it_was_saved(tmp_path: Path) -> None:
    packed = _packed(tmp_path)
    assert packed.stat().st_size < 100_000  # compressed: the 4 MiB disk is mostly zeros
    with open(packed, "rb") as stream:
        restored = checkpoint.unpack(stream, ME, _targets(tmp_path), key=KEY, limit=64 * MIB)
    assert restored.old_folder == str(tmp_path / "old")
    assert sorted(restored.members) == ["output.img", "state"]
    for name, (path, _bound) in _targets(tmp_path).items():
        original = tmp_path / "old" / ("saved.state" if name == "state" else name)
        assert path.read_bytes() == original.read_bytes()


@pytest.mark.parametrize(
    ("other", "why"),
    [
        (Identity("schedd#8.0#1", "minimal", "kvm", 256, 1, ME.images), "another job"),
        (Identity(ME.job_id, "minimal", "qemu", 256, 1, ME.images), "flavour"),
        (Identity(ME.job_id, "minimal", "kvm", 512, 1, ME.images), "memory_mib"),
        (
            Identity(ME.job_id, "minimal", "kvm", 256, 1, {"minimal/vmlinux": "cd" * 32}),
            "other guest images",
        ),
    ],
)
def test_another_jobs_or_another_vms_checkpoint_is_refused(
    tmp_path: Path, other: Identity, why: str
) -> None:
    packed = _packed(tmp_path, identity=other)
    with open(packed, "rb") as stream, pytest.raises(CheckpointUnusable, match=why):
        checkpoint.unpack(stream, ME, _targets(tmp_path), key=KEY, limit=64 * MIB)
    assert not (tmp_path / "new" / "state").exists()  # refused before any member is written


def test_a_checkpoint_from_another_site_or_edited_is_refused(tmp_path: Path) -> None:
    packed = _packed(tmp_path, key=b"x" * 32)
    with open(packed, "rb") as stream, pytest.raises(CheckpointUnusable, match="signature"):
        checkpoint.unpack(stream, ME, _targets(tmp_path), key=KEY, limit=64 * MIB)
    # the job's own user rewrites the manifest to name their job: the signature fails
    forged = tmp_path / "forged"
    with tarfile.open(packed) as tar, tarfile.open(forged, "w") as out:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == checkpoint.MANIFEST:
                manifest = json.loads(data)
                manifest["identity"]["job_id"] = ME.job_id
                data = json.dumps(manifest).encode()
                info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    with open(forged, "rb") as stream, pytest.raises(CheckpointUnusable, match="signature"):
        checkpoint.unpack(stream, ME, _targets(tmp_path), key=b"x" * 32 + b"y", limit=64 * MIB)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_corrupt_checkpoint_is_refused(tmp_path: Path, damage: str) -> None:
    packed = _packed(tmp_path)
    data = bytearray(packed.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        with tarfile.open(packed) as tar:
            last = tar.getmembers()[-1]  # a byte inside the last member's compressed bytes
        data[last.offset_data + last.size // 2] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data = bytearray()
    with pytest.raises(CheckpointUnusable):
        checkpoint.unpack(io.BytesIO(bytes(data)), ME, _targets(tmp_path), key=KEY, limit=64 * MIB)


def _signed_bomb(tmp_path: Path, gib: int) -> bytes:
    """A validly signed checkpoint (as if the site key leaked) whose state inflates to GIB."""
    blob = io.BytesIO()
    with gzip.GzipFile(fileobj=blob, mode="wb", compresslevel=9) as gz:
        zeros = bytes(MIB)
        for _ in range(gib * 1024):
            gz.write(zeros)
    digest = hashlib.sha256(blob.getvalue()).hexdigest()
    manifest = json.dumps(
        {
            "format": 1,
            "identity": dataclasses.asdict(ME),
            "folder": "/x",
            "members": {"state": digest},
        },
        sort_keys=True,
    ).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (
            (checkpoint.MANIFEST, manifest),
            (checkpoint.SIGNATURE, checkpoint._sign(KEY, manifest)),
            ("state", blob.getvalue()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_decompression_bomb_stops_at_its_bound(tmp_path: Path) -> None:
    bomb = _signed_bomb(tmp_path, 1)  # 1 GiB of zeros in ~1 MiB
    assert len(bomb) < 4 * MIB
    targets = _targets(tmp_path, bound=8 * MIB)
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(CheckpointUnusable, match="decompresses to more"):
        checkpoint.unpack(io.BytesIO(bomb), ME, targets, key=KEY, limit=64 * MIB)
    took = time.monotonic() - started
    _now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert took < 5.0
    assert peak < 16 * MIB
    assert targets["state"][0].stat().st_size <= 8 * MIB


def test_a_checkpoint_over_the_site_limit_is_not_read_past_it(tmp_path: Path) -> None:
    packed = _packed(tmp_path)
    with open(packed, "rb") as stream, pytest.raises(CheckpointUnusable, match="max_checkpoint"):
        checkpoint.unpack(stream, ME, _targets(tmp_path), key=KEY, limit=10_000)


def test_a_checkpoint_over_the_limit_is_not_kept(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    files = _files(folder)
    out = tmp_path / "ckpt"
    with pytest.raises(CheckpointUnusable, match="max_checkpoint_mib"):
        checkpoint.pack(out, ME, files, key=KEY, folder=folder, limit=1000)
    assert not out.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["output.img", "saved.state"]


def test_the_site_key_is_made_once_and_root_only(tmp_path: Path) -> None:
    first = checkpoint.site_key(tmp_path)
    assert checkpoint.site_key(tmp_path) == first
    assert len(first) == 32
    assert (tmp_path / checkpoint.KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_a_huge_pax_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A 3 GiB extended header: refused from its 512-byte header, without reading it."""
    info = tarfile.TarInfo("manifest.json")
    info.type, info.size = tarfile.XHDTYPE, 3 * 1024**3
    bomb = info.tobuf(format=tarfile.USTAR_FORMAT) + bytes(1 << 20)
    tracemalloc.start()
    with pytest.raises(CheckpointUnusable, match="unexpected member"):
        checkpoint.unpack(io.BytesIO(bomb), ME, _targets(tmp_path), key=KEY, limit=4 * 1024**3)
    _now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * MIB
