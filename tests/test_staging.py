"""Moving sandbox bytes: the input tar the guest reads, the output disk, and the untrusted
result tar coming back (every attack its own test). Real files, real tarfile; the busybox
side is tests/test_guest_boot.py's."""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sd_batch.errors import StagingError
from sd_batch.guest import contract
from sd_batch.guest.contract import ExitStatus, Manifest, decode_entries
from sd_batch.staging import (
    HTCONDOR_FILES,
    JobResult,
    create_output_disk,
    read_result,
    result_tar_from_disk,
    write_input_tar,
)

MANIFEST = Manifest(["./run.sh", "a b", "it's"], {"X": "1", "EMPTY": ""}, "work")
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A FIFO opened for reading blocks forever: fail instead of hanging the suite."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError("staging hung (a FIFO opened?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "scratch"
    (root / "work" / "deep").mkdir(parents=True)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "work" / "data.txt").write_bytes(b"data\n")
    (root / "work" / "deep" / "empty").write_bytes(b"")
    (root / "empty-dir").mkdir()
    return root


def input_tar(sandbox: Path, **kwargs: object) -> bytes:
    out = io.BytesIO()
    kwargs.setdefault("max_bytes", 64 * MiB)
    count = write_input_tar(sandbox, MANIFEST, out, **kwargs)  # type: ignore[arg-type]
    assert count == len(out.getvalue())
    return out.getvalue()


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {member.name: member for member in tar}


def content(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None
        return extracted.read()


# -- the input tar ----------------------------------------------------------------------------
def test_the_marker_is_the_first_member_with_no_extended_header_before_it(sandbox: Path) -> None:
    data = input_tar(sandbox, job_ad_text='Cmd = "x"\n')
    assert data[:18] == contract.INPUT_MARKER.encode() + b"\0"  # sector 0, as the guest looks
    assert data[156:157] == tarfile.REGTYPE  # a plain file header, not 'x' (PAX) or 'L' (GNU)
    first = next(iter(members(data).values()))
    assert (first.name, first.pax_headers) == (contract.INPUT_MARKER, {})
    assert content(data, contract.INPUT_MARKER) == contract.INPUT_MARKER_TEXT
    assert len(data) % contract.SECTOR == 0


def test_the_input_tar_round_trips_manifest_job_ad_and_sandbox(sandbox: Path) -> None:
    data = input_tar(sandbox, job_ad_text='Cmd = "x"\n')
    names = list(members(data))
    assert names[:5] == [contract.INPUT_MARKER, "meta/argv", "meta/env", "meta/cwd", "meta/job.ad"]
    assert names[5:] == [
        "sandbox",
        "sandbox/empty-dir",
        "sandbox/run.sh",
        "sandbox/work",
        "sandbox/work/data.txt",
        "sandbox/work/deep",
        "sandbox/work/deep/empty",
    ]
    assert decode_entries(content(data, "meta/argv")) == ["./run.sh", "a b", "it's"]
    assert decode_entries(content(data, "meta/env")) == ["X=1", "EMPTY="]
    assert decode_entries(content(data, "meta/cwd")) == ["work"]
    assert content(data, "meta/job.ad") == b'Cmd = "x"\n'
    assert content(data, "sandbox/work/data.txt") == b"data\n"
    info = members(data)["sandbox/run.sh"]
    assert (info.mode, info.uid, info.uname) == (0o755, 0, "")
    assert members(data)["sandbox/empty-dir"].isdir()


def test_the_input_tar_is_the_same_for_the_same_sandbox(sandbox: Path) -> None:
    assert input_tar(sandbox) == input_tar(sandbox)


def test_a_link_to_etc_shadow_is_not_read_into_the_input_tar(
    sandbox: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOP SECRET")
    (sandbox / "shadow").symlink_to("/etc/shadow")
    (sandbox / "secret").symlink_to(secret)
    (sandbox / "work" / "escape").symlink_to("../../secret")
    with caplog.at_level(logging.WARNING, logger="sd_batch.staging"):
        data = input_tar(sandbox)
    assert b"TOP SECRET" not in data
    names = members(data)
    assert not {"sandbox/shadow", "sandbox/secret", "sandbox/work/escape"} & names.keys()
    assert "shadow" in caplog.text and "outside the sandbox" in caplog.text


def test_links_that_stay_inside_are_shipped_as_links(sandbox: Path) -> None:
    (sandbox / "latest").symlink_to("work/data.txt")
    (sandbox / "work" / "up").symlink_to("..")  # the sandbox root itself: inside
    (sandbox / "sneaky").symlink_to("work/up/..")  # inside as written, outside once resolved
    names = members(input_tar(sandbox))
    assert names["sandbox/latest"].issym()
    assert names["sandbox/latest"].linkname == "work/data.txt"
    assert names["sandbox/work/up"].issym()
    assert "sandbox/sneaky" not in names


def test_a_fifo_in_the_sandbox_does_not_hang_and_is_left_out(sandbox: Path) -> None:
    os.mkfifo(sandbox / "pipe")
    assert "sandbox/pipe" not in members(input_tar(sandbox))


def test_htcondors_own_files_in_the_scratch_dir_are_left_out(sandbox: Path) -> None:
    for name in (*HTCONDOR_FILES, ".condor_ssh_to_job_1"):
        (sandbox / name).write_text("condor's")
    (sandbox / "work" / ".job.ad").write_text("the job's own file of that name")
    names = members(input_tar(sandbox))
    assert not any(name.count("/") == 1 and "condor" in name for name in names)
    assert not {f"sandbox/{name}" for name in HTCONDOR_FILES} & names.keys()
    assert "sandbox/work/.job.ad" in names


def test_setuid_and_sticky_bits_are_not_shipped(sandbox: Path) -> None:
    (sandbox / "run.sh").chmod(0o4755)
    (sandbox / "empty-dir").chmod(0o1777)
    names = members(input_tar(sandbox))
    assert names["sandbox/run.sh"].mode == 0o755
    assert names["sandbox/empty-dir"].mode == 0o777


def test_long_and_non_ascii_names_travel_in_pax_path_records(sandbox: Path) -> None:
    long_name = "x" * 150
    (sandbox / long_name).write_text("long")
    (sandbox / "café").write_text("utf-8")
    data = input_tar(sandbox)
    assert content(data, f"sandbox/{long_name}") == b"long"
    assert content(data, "sandbox/café") == b"utf-8"


def test_an_input_over_max_bytes_is_refused_naming_the_limit(sandbox: Path) -> None:
    (sandbox / "big").write_bytes(b"\1" * 200_000)
    with pytest.raises(StagingError, match=r"limit of 100000 bytes \(at 'sandbox/big'"):
        input_tar(sandbox, max_bytes=100_000)


# -- the output disk --------------------------------------------------------------------------
def test_a_new_output_disk_is_reserved_with_the_magic_in_sector_0(tmp_path: Path) -> None:
    disk = tmp_path / "out.img"
    create_output_disk(disk, 16 * MiB + 1)
    st = disk.stat()
    assert st.st_size == 16 * MiB + contract.SECTOR  # whole sectors
    assert st.st_blocks * 512 >= st.st_size  # every block reserved: no ENOSPC once the VM runs
    assert disk.read_bytes()[: contract.SECTOR] == contract.output_disk_header()
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_an_output_disk_never_replaces_a_file_or_follows_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "link.img").symlink_to(victim)
    for path in (victim, tmp_path / "link.img"):
        with pytest.raises(StagingError, match="cannot create the output disk"):
            create_output_disk(path, 2 * MiB)
    assert victim.read_text() == "keep"


def test_an_output_disk_below_the_contracts_minimum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="too small"):
        create_output_disk(tmp_path / "out.img", contract.MIN_OUTPUT_DISK_BYTES - 1)


# -- result tars ------------------------------------------------------------------------------
Member = tuple[str, bytes | None, Callable[[tarfile.TarInfo], None] | None]


def result_tar(
    *extra: Member, status: str | None = "exit 3", fmt: int = tarfile.GNU_FORMAT
) -> bytes:
    """A result tar as the guest's busybox writes it (GNU format), plus `extra` members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        base: list[Member] = [(contract.RESULT_MARKER, b"sd-batch job result, format 1\n", None)]
        if status is not None:
            base.append((contract.RESULT_EXIT_STATUS, f"{status}\n".encode(), None))
        base += [
            ("stdout", b"out\n", None),
            ("stderr", b"err\n", None),
            ("guest.log", b"log\n", None),
        ]
        for name, data, adjust in (*base, *extra):
            info = tarfile.TarInfo(name)
            info.size = len(data or b"")
            info.mode = 0o644
            info.mtime = 1_600_000_000
            if adjust is not None:
                adjust(info)
            tar.addfile(info, io.BytesIO(data) if data is not None and info.isreg() else None)
    return out.getvalue()


def lying(name: str, size: int) -> bytes:
    """A result whose last header claims `size` bytes that do not follow (no end blocks)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return result_tar()[: 5 * 1024] + info.tobuf(tarfile.GNU_FORMAT) + b"x" * 512


def kind(kind_: bytes, linkname: str = "") -> Callable[[tarfile.TarInfo], None]:
    def adjust(info: tarfile.TarInfo) -> None:
        info.type, info.linkname = kind_, linkname

    return adjust


def read(data: bytes, sandbox: Path, **limits: int) -> JobResult:
    limits.setdefault("max_bytes", 64 * MiB)
    limits.setdefault("max_files", 1000)
    return read_result(io.BytesIO(data), sandbox, **limits)


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Everything under root, links not followed: to show a refusal changed nothing."""
    seen: dict[str, tuple[int, bytes | str | None]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        value = (
            str(path.readlink())
            if path.is_symlink()
            else (path.read_bytes() if stat.S_ISREG(st.st_mode) else None)
        )
        seen[str(path.relative_to(root))] = (st.st_mode, value)
    return seen


def test_a_result_gives_status_streams_log_and_the_outputs_in_place(sandbox: Path) -> None:
    (sandbox / "work" / "data.txt").write_text("old")
    data = result_tar(
        ("outputs/", None, kind(tarfile.DIRTYPE)),
        ("outputs/work", None, kind(tarfile.DIRTYPE)),
        ("outputs/work/data.txt", b"new\n", None),
        ("outputs/results/nested/r.bin", b"\0\1", lambda i: setattr(i, "mode", 0o6755)),
        ("outputs/private", b"p", lambda i: setattr(i, "mode", 0o400)),
    )
    result = read(data, sandbox)
    assert result.exit_status == ExitStatus("exit", 3)
    assert (result.stdout, result.stderr, result.guest_log, result.error) == (
        b"out\n",
        b"err\n",
        "log\n",
        None,
    )
    assert result.files == ("private", "results/nested/r.bin", "work/data.txt")
    assert (sandbox / "work" / "data.txt").read_text() == "new\n"
    produced = sandbox / "results" / "nested" / "r.bin"
    assert produced.read_bytes() == b"\0\1"
    assert stat.S_IMODE(produced.stat().st_mode) == 0o755  # no setuid/setgid
    assert stat.S_IMODE((sandbox / "private").stat().st_mode) == 0o600  # the owner can read it
    assert produced.stat().st_mtime == 1_600_000_000
    assert not list(sandbox.glob(".sd-batch-result-*"))


def test_a_result_without_exit_status_says_why_in_error(sandbox: Path) -> None:
    result = read(result_tar(("error", b"no command\n", None), status=None), sandbox)
    assert (result.exit_status, result.error) == (None, "no command\n")


def test_a_result_from_the_disk_image_reads_just_the_tar(sandbox: Path, tmp_path: Path) -> None:
    disk = tmp_path / "out.img"
    create_output_disk(disk, 2 * MiB)
    tar = result_tar(("outputs/o.txt", b"o", None))
    with disk.open("r+b") as f:
        f.write(tar)  # the guest writes from byte 0; the rest of the disk stays zero
    with result_tar_from_disk(disk) as stream:
        data = stream.read()
    assert tar.startswith(data)  # the tar up to its end-of-archive blocks, none of the disk
    assert len(tar.rstrip(b"\0")) < len(data) < len(tar)
    with result_tar_from_disk(disk) as stream:
        assert read_result(stream, sandbox, max_bytes=MiB, max_files=10).files == ("o.txt",)


def test_a_disk_the_guest_never_wrote_is_refused_at_once(tmp_path: Path) -> None:
    disk = tmp_path / "out.img"
    create_output_disk(disk, 2 * MiB)
    with pytest.raises(StagingError, match="the guest wrote nothing"):
        result_tar_from_disk(disk)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"garbage" * 100, "at byte 0 holds no valid tar header"),
        (lying("outputs/big", 3 * MiB), "runs past the end of its disk"),
        (result_tar()[:2048], "cut short at byte 2048"),
    ],
)
def test_a_disk_without_a_whole_tar_is_refused_before_streaming(
    tmp_path: Path, payload: bytes, message: str
) -> None:
    disk = tmp_path / "out.img"
    disk.write_bytes(payload)  # as small as the payload: the tar cannot end inside it
    if message.startswith("runs past"):
        disk.write_bytes(payload.ljust(2 * MiB, b"\0"))
    with pytest.raises(StagingError, match=message):
        result_tar_from_disk(disk)


ATTACKS: dict[str, tuple[Member, str]] = {
    "absolute path": (("/outputs/x", b"x", None), "absolute path"),
    "absolute path outside outputs": (("/etc/cron.d/evil", b"x", None), "absolute path"),
    "dot-dot": (("outputs/../../escape", b"x", None), r"'\.\.' in its path"),
    "device member": (("outputs/dev", None, kind(tarfile.CHRTYPE)), "special file"),
    "fifo member": (("outputs/fifo", None, kind(tarfile.FIFOTYPE)), "special file"),
    "htcondor file": (("outputs/_condor_stdout", b"forged", None), "belongs to HTCondor"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_each_unsafe_member_is_refused_and_the_sandbox_is_left_as_it_was(
    sandbox: Path, attack: str
) -> None:
    member, reason = ATTACKS[attack]
    before = snapshot(sandbox.parent)
    data = result_tar(("outputs/fine.txt", b"fine", None), member)
    with pytest.raises(StagingError, match=reason) as refused:
        read(data, sandbox)
    assert member[0] in str(refused.value)  # says which member
    assert snapshot(sandbox.parent) == before  # not even fine.txt: all or nothing


@pytest.mark.parametrize(
    "link",
    [kind(tarfile.SYMTYPE, "/etc/passwd"), kind(tarfile.LNKTYPE, "outputs/fine.txt")],
    ids=["symlink", "hard link"],
)
def test_links_the_job_made_are_skipped_and_reported_and_the_rest_returned(
    sandbox: Path, link: Any
) -> None:
    data = result_tar(("outputs/fine.txt", b"fine", None), ("outputs/link", None, link))
    result = read(data, sandbox)
    assert result.skipped == ("link",)
    assert result.files == ("fine.txt",)
    assert not (sandbox / "link").exists() and not (sandbox / "link").is_symlink()


def test_a_tar_that_writes_through_a_link_it_created_stays_inside_the_sandbox(
    sandbox: Path, tmp_path: Path
) -> None:
    target = tmp_path / "etc"
    target.mkdir()
    data = result_tar(
        ("outputs/link", None, kind(tarfile.SYMTYPE, str(target))),
        ("outputs/link/passwd", b"root::0:0::/:/bin/sh\n", None),
    )
    result = read(data, sandbox)
    assert list(target.iterdir()) == []  # the link was never made, so nothing went through it
    assert not (sandbox / "link").is_symlink()
    assert (sandbox / "link" / "passwd").read_bytes() == b"root::0:0::/:/bin/sh\n"
    assert result.skipped == ("link",)


@pytest.mark.parametrize("as_directory", [False, True])
def test_a_symlink_already_in_the_sandbox_is_never_written_through_or_replaced(
    sandbox: Path, tmp_path: Path, as_directory: bool
) -> None:
    victim = tmp_path / "victim"
    if as_directory:
        victim.mkdir()
        (sandbox / "results").symlink_to(victim)
        data = result_tar(("outputs/results/r.txt", b"r", None))
        reason = "goes through a symlink 'results'"
    else:
        victim.write_text("precious")
        (sandbox / "result.txt").symlink_to(victim)
        data = result_tar(("outputs/result.txt", b"r", None))
        reason = "already has a symlink 'result.txt'"
    with pytest.raises(StagingError, match=reason):
        read(data, sandbox)
    assert (sandbox / ("results" if as_directory else "result.txt")).is_symlink()
    assert (list(victim.iterdir()) == []) if as_directory else victim.read_text() == "precious"


def test_a_fifo_already_in_the_sandbox_is_not_replaced(sandbox: Path) -> None:
    os.mkfifo(sandbox / "out")
    with pytest.raises(StagingError, match="already has a special file 'out'"):
        read(result_tar(("outputs/out", b"x", None)), sandbox)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((("outputs/work", b"x", None),), "already has a directory 'work'"),
        ((("outputs/run.sh/x", b"x", None),), "goes through a regular file 'run.sh'"),
        ((("outputs/a", b"1", None), ("outputs/a/b", b"2", None)), "'a' is a file in this result"),
        ((("outputs/a", b"1", None), ("outputs/a", b"2", None)), "appears twice"),
        ((("stdout", b"again", None),), "appears twice"),
    ],
)
def test_conflicting_outputs_are_refused(
    sandbox: Path, extra: tuple[Member, ...], message: str
) -> None:
    with pytest.raises(StagingError, match=message):
        read(result_tar(*extra), sandbox)


def test_a_tar_bomb_of_many_files_is_refused_at_the_limit(sandbox: Path) -> None:
    bomb = [(f"outputs/f{i}", b"", None) for i in range(50)]
    with pytest.raises(StagingError, match="more than 20 members"):
        read(result_tar(*bomb), sandbox, max_files=20)
    assert not list(sandbox.glob("f*"))


def test_a_member_claiming_a_huge_size_is_refused_before_its_data(sandbox: Path) -> None:
    header = lying("outputs/huge", 1 << 40)
    with pytest.raises(StagingError, match="over the limit of 1048576 bytes per file"):
        read(header, sandbox, max_bytes=64 * MiB, max_file_bytes=MiB)


def test_outputs_over_the_total_limit_are_refused(sandbox: Path) -> None:
    parts = [(f"outputs/p{i}", b"\1" * 40_000, None) for i in range(5)]
    with pytest.raises(StagingError, match="more than 100000 bytes"):
        read(result_tar(*parts), sandbox, max_bytes=100_000)


def test_a_huge_stdout_is_bounded(sandbox: Path) -> None:
    data = result_tar(("stdout", b"y" * (2 * MiB), None))
    with pytest.raises(StagingError, match="'stdout' is 2097152 bytes"):
        read(data, sandbox, max_bytes=64 * MiB, max_file_bytes=MiB)


class _Endless(io.RawIOBase):
    """`head`, then 0x01 bytes for ever: a stream that never ends."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data, self.head = self.head[: len(buffer)], self.head[len(buffer) :]
        data += b"\1" * (len(buffer) - len(data))
        buffer[:] = data
        return len(buffer)


def test_an_endless_stream_is_cut_at_the_limit(sandbox: Path) -> None:
    # after the marker, a PAX header announcing a gigabyte of records: tarfile would hold them
    # in memory, so its header is refused before tarfile reads any (`tarscan`)
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, 1 << 30
    head = result_tar()[:1024] + pax.tobuf(tarfile.USTAR_FORMAT)
    stream = io.BufferedReader(_Endless(head))
    with pytest.raises(StagingError, match="extended tar header of 1073741824 bytes, over the"):
        read_result(stream, sandbox, max_bytes=MiB, max_files=10)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a readable tar|empty"),
        (bytes(10240), "empty"),
        (result_tar()[1024:], "not an sd-batch result"),
        (result_tar(("outputs/x", b"x", None))[: 512 * 3 + 100], "not a readable tar"),
    ],
)
def test_what_is_not_a_whole_result_is_refused(sandbox: Path, data: bytes, message: str) -> None:
    with pytest.raises(StagingError, match=message):
        read(data, sandbox)


def test_a_reader_that_went_away_is_a_broken_pipe_not_a_sandbox_error(sandbox: Path) -> None:
    (sandbox / "big").write_bytes(b"\1" * (4 * MiB))  # more than a pipe buffer
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "wb") as out, pytest.raises(BrokenPipeError):
        write_input_tar(sandbox, MANIFEST, out, max_bytes=64 * MiB)


def test_an_unreadable_sandbox_file_is_named(sandbox: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    (sandbox / "work" / "data.txt").chmod(0)
    with pytest.raises(StagingError, match="cannot read 'work/data.txt' in the sandbox"):
        input_tar(sandbox)


# -- the guest's own tar, run here (the .deb scripts/build-guest caches) ------------------------
@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sd_batch.guest.common import default_cache_dir

    debs = sorted(default_cache_dir().glob("busybox-static_*.deb"))
    if not debs or shutil.which("dpkg-deb") is None:
        pytest.skip("no busybox-static .deb cached (scripts/build-guest fetches it)")
    root = tmp_path_factory.mktemp("busybox")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    return root / "bin" / "busybox"


def test_the_guests_busybox_tar_unpacks_the_input_tar(sandbox: Path, busybox: Path) -> None:
    long_name = "n" * 150
    (sandbox / "work" / long_name).write_text("long")
    (sandbox / "café").write_text("utf-8")
    (sandbox / "latest").symlink_to("work/data.txt")
    tar = sandbox.parent / "in.tar"
    tar.write_bytes(input_tar(sandbox))
    unpacked = sandbox.parent / "in"
    unpacked.mkdir()
    subprocess.run([busybox, "tar", "-x", "-o", "-f", tar, "-C", unpacked], check=True)
    assert (unpacked / contract.INPUT_MARKER).read_bytes() == contract.INPUT_MARKER_TEXT
    assert (unpacked / "sandbox" / "work" / long_name).read_text() == "long"
    assert (unpacked / "sandbox" / "café").read_text() == "utf-8"
    assert str((unpacked / "sandbox" / "latest").readlink()) == "work/data.txt"
    assert (unpacked / "sandbox" / "run.sh").stat().st_mode & 0o777 == 0o755


def test_a_result_tar_written_by_the_guests_busybox_is_read_from_the_disk(
    sandbox: Path, busybox: Path, tmp_path: Path
) -> None:
    out = tmp_path / "result"
    (out / "outputs" / "deep" / ("d" * 120)).mkdir(parents=True)
    (out / "outputs" / "deep" / ("d" * 120) / "r.txt").write_text("result")
    (out / contract.RESULT_MARKER).write_text("sd-batch job result, format 1\n")
    (out / "exit_status").write_text("signal 15\n")
    (out / "stdout").write_text("out")
    disk = tmp_path / "out.img"
    create_output_disk(disk, 2 * MiB)
    names = [contract.RESULT_MARKER, "exit_status", "stdout", "outputs"]
    subprocess.run([busybox, "tar", "-cf", disk, *names], cwd=out, check=True)  # as init.sh
    with result_tar_from_disk(disk) as stream:
        result = read_result(stream, sandbox, max_bytes=MiB, max_files=100)
    assert result.exit_status == ExitStatus("signal", 15)
    assert result.stdout == b"out"
    assert (sandbox / "deep" / ("d" * 120) / "r.txt").read_text() == "result"
