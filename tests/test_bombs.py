"""Bombs at the root side, through the real hooks and a private helper service (as in
test_helper_service: root, a test:/// site): each is refused within seconds, with a message
that names what it overran, the service's peak memory stays bounded, it still answers, and
nothing of the job is left (the `service` fixture checks the ledger and the job folders).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("classad2", reason="the htcondor bindings are not installed")

import test_helper_service as private  # noqa: E402
from test_helper_service import GROUP  # noqa: E402

from conftest import Service, User, new_job  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bombs import HOARD, INPUT_CASES, LANGUAGE, as_uid, crafted, probe_as  # noqa: E402

users, service = private.users, private.service  # its fixtures: the slot users, the service
MiB = 1024 * 1024
#: The service's own peak resident memory may not pass this, whatever a job sends.
SERVICE_PEAK = 300 * MiB


def peak_rss(service: Service) -> int:
    """The service process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{service.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def still_answers(service: Service) -> None:
    assert service.ask(b'{"action": "probe"}\n')["ok"] is True
    assert service.proc.poll() is None
    assert "Traceback" not in service.log_text()


# --- a job's own description, through PREPARE_JOB -------------------------------------------------
@pytest.mark.parametrize("case", sorted(LANGUAGE))
def test_a_description_bomb_is_held_by_the_childs_limits_not_the_service(
    service: Service, users: tuple[User, User], case: str
) -> None:
    """Without the language's own budgets: the confined child's limits alone hold it."""
    with open(service.config, "a", encoding="utf-8") as config:  # under [policy]
        config.write(
            "max_resolve_mib = 256\nmax_resolve_cpu_seconds = 10\nmax_resolve_seconds = 20\n"
        )
    files, description = LANGUAGE[case]
    job = new_job(service, users[0], "bomb")
    for name, text in files.items():
        (job.scratch / name).write_text(text, encoding="utf-8")
        os.chown(job.scratch / name, job.user.uid, job.user.gid)
    job.ad = job.ad.replace('SDVMDescription = "minimal"', f'SDVMDescription = "{description}"')
    started = time.monotonic()
    code, out, err = job.hook("prepare_job")
    took = time.monotonic() - started
    assert code == 1 and "HookStatusCode = 180" in out, out + err  # held, not requeued
    assert (
        any(
            limit in out
            for limit in (
                "needed more than 256 MiB to resolve (site limit [policy] max_resolve_mib)",
                "needed more than 10 s of CPU to resolve "
                "(site limit [policy] max_resolve_cpu_seconds)",
                "took more than 20 s to resolve (site limit [policy] max_resolve_seconds)",
            )
        )
        or "budget" in out
    ), out
    assert took < 35
    assert peak_rss(service) < SERVICE_PEAK
    still_answers(service)


# --- crafted input disks, sent as a slot user's process could -----------------------------
def prepare_raw(service: Service, job: str, data: bytes) -> tuple[dict[str, object], float]:
    started = time.monotonic()
    reply = service.ask(json.dumps({"action": "prepare", "job": job}).encode() + b"\n" + data)
    return reply, time.monotonic() - started


@pytest.mark.parametrize("case", INPUT_CASES)
def test_a_crafted_input_disk_is_held_at_once_naming_the_problem(
    service: Service, case: str
) -> None:
    job, data, says = crafted(case)
    reply, took = prepare_raw(service, job, data)
    assert (reply["ok"], reply["disposition"]) == (False, "hold"), reply
    assert says in str(reply["message"]), reply
    assert took < 10
    assert peak_rss(service) < SERVICE_PEAK
    still_answers(service)


# --- the service's door ------------------------------------------------------------------------
def test_a_2000_deep_json_request_is_a_clean_bad_request(service: Service) -> None:
    reply = service.ask(b"[" * 2000 + b"]" * 2000 + b"\n")
    assert (reply["ok"], reply["error"]) == (False, "BadRequest")
    assert "nests deeper than 4 levels" in str(reply["message"])
    still_answers(service)


def test_a_request_trickling_a_byte_every_two_seconds_is_cut_at_the_whole_requests_deadline(
    service: Service,
) -> None:
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(service.socket))
        sock.settimeout(0.1)
        reply = b""
        for byte in b'{"action": "probe"        ':  # each read well inside any per-read limit
            sock.sendall(bytes([byte]))
            time.sleep(2)
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                continue
            break
    took = time.monotonic() - started
    assert b"no whole request line within 10 s" in reply, reply
    assert 9 < took < 14
    still_answers(service)


def test_sixteen_uids_hoarding_32_connections_each_starve_neither_root_nor_another_user(
    service: Service,
) -> None:
    import grp

    gid = grp.getgrnam(GROUP).gr_gid  # uids of no account: the kernel's credentials count
    hoarders = [as_uid(61000 + i, gid, HOARD, str(service.socket), "32") for i in range(16)]
    try:
        for proc in hoarders:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        started = time.monotonic()
        assert service.ask(b'{"action": "probe"}\n')["ok"] is True  # root's
        assert probe_as(61999, gid, service.socket)["ok"] is True  # a user who hoards nothing
        assert probe_as(61000, gid, service.socket)["error"] == "Busy"  # a hoarder's own
        assert time.monotonic() - started < 10
    finally:
        for proc in hoarders:
            proc.communicate("", timeout=30)
    still_answers(service)
