"""Crafted results from a guest, and messages a job or its guest can make long: each is refused
or clipped within a bound on time, with a message, and the sandbox is left as it was. The
runner reads a result through `staging.read_result` (the same as here); the root side only
finds the result's extent on the output disk (`result_tar_from_disk`), checked the same way.
"""

from __future__ import annotations

import io
import resource
import sys
import tarfile
import time
from pathlib import Path

import pytest

from sd_batch.errors import DescriptionError, StagingError
from sd_batch.guest import contract
from sd_batch.helper.hooks import _finish, status_for
from sd_batch.staging import JobResult, read_result, result_tar_from_disk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bombs import pax_header, record  # noqa: E402  (what benchmarks/bombs.py sends too)

MiB = 1024 * 1024


def header(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, len(data), 0o644, 1_600_000_000
    return info.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512)


def result(*members: bytes, status: bytes = b"exit 0\n") -> bytes:
    start = header(contract.RESULT_MARKER, b"sd-batch job result, format 1\n")
    return start + header(contract.RESULT_EXIT_STATUS, status) + b"".join(members) + bytes(1024)


def deep(levels: int) -> bytes:
    """One file LEVELS directories down: a GNU long name of 2*LEVELS bytes (16 KB for 8000)."""
    return header("outputs/" + "a/" * levels + "f", b"x")


BOMBS = {
    "a tree 8000 directories deep": (result(deep(8000)), "nested deeper than 64 directories"),
    "PAX mtime 1e300": (
        result(pax_header(record("mtime", b"1e300")) + header("outputs/f", b"x")),
        "PAX mtime b'1e300' is not a time",
    ),
    "PAX mtime nan": (
        result(pax_header(record("mtime", b"nan")) + header("outputs/f", b"x")),
        "PAX mtime b'nan' is not a time",
    ),
    "exit status signal 999": (result(status=b"signal 999\n"), "impossible exit status"),
    "exit status signal 0": (result(status=b"signal 0\n"), "impossible exit status"),
    "exit status exit 300": (result(status=b"exit 300\n"), "impossible exit status"),
    "PAX header of 200,000 digits (CVE-2024-6232)": (
        result(pax_header(b"9" * 200_000) + header("outputs/f", b"x")),
        "extended tar header of",
    ),
    "PAX record of 60,000 digits": (
        result(pax_header(record("comment", b"7" * 60_000)) + header("outputs/f", b"x")),
        "more than 40 digits in a row",
    ),
    "PAX record whose length lies": (
        result(pax_header(b"5 comment=" + b"x" * 60_000 + b"\n") + header("outputs/f", b"x")),
        "malformed PAX record",
    ),
    "sparse records after a MiB of PAX header": (
        result(pax_header(record("comment", b"x" * MiB) + record("GNU.sparse.major", b"1"))),
        "extended tar header of",
    ),
    "sparse records in a small PAX header": (
        result(pax_header(record("GNU.sparse.major", b"1")) + header("outputs/f", b"x")),
        "sparse member",
    ),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_a_crafted_result_is_refused_quickly_and_leaves_the_sandbox_alone(
    tmp_path: Path, case: str
) -> None:
    data, says = BOMBS[case]
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "mine").write_text("kept\n")
    started = time.process_time()
    with pytest.raises(StagingError, match=says.replace("(", r"\(").replace(")", r"\)")):
        read_result(io.BytesIO(data), sandbox, max_bytes=64 * MiB, max_files=1000)
    assert time.process_time() - started < 2.0  # was 94 s (the deep tree), 39 s (the digits)
    assert sorted(p.name for p in sandbox.iterdir()) == ["mine"]  # no tree, no staging left


@pytest.mark.parametrize(
    "case", sorted(c for c in BOMBS if "exit status" not in c and "deep" not in c)
)
def test_the_root_side_refuses_the_same_headers_on_the_output_disk(
    tmp_path: Path, case: str
) -> None:
    disk = tmp_path / "output.img"
    disk.write_bytes(BOMBS[case][0].ljust(4 * MiB, b"\0"))
    started = time.process_time()
    with pytest.raises(StagingError, match=BOMBS[case][1].replace("(", r"\(").replace(")", r"\)")):
        result_tar_from_disk(disk)
    assert time.process_time() - started < 2.0


def test_a_hold_reason_is_one_clipped_printable_line() -> None:
    code, message = status_for(DescriptionError("\x1b[2J" + "x" * 980_000, hint="\nforged"))
    assert int(code) == 180
    # one printable line of at most 1 KiB; the message is cut where it is made (errors keep
    # a window of a huge message, "..." in the middle) or where it leaves ("[... clipped]")
    assert len(message) <= 1024 and message.isprintable() and "\x1b" not in message
    assert "..." in message and message.count("x") < 1024


def test_the_guests_error_reaches_the_runners_stderr_clipped(
    capfd: pytest.CaptureFixture[str],
) -> None:
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    found = JobResult(
        contract.ExitStatus("exit", 0), b"", b"", "\x1b]0;owned\x07" + "e" * 980_000, (), ""
    )
    assert _finish(found) == 0
    sys.stderr.flush()
    err = capfd.readouterr().err
    assert len(err) < 1100 and "\x1b" not in err and "\x07" not in err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 64 * 1024
