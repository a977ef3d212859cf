"""The helper service's door: who may connect, what a request may be, how much one caller may
hold, and JOB_EXIT's cheap reading of the job ad. A private service as in
test_helper_service (root, a test:/// site); the outsider is a user outside the slot group,
run with Debian's own Python (the venv's is the slot group's alone).
"""

from __future__ import annotations

import grp
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sd_batch.condor.jobad import job_ad_from_submit, parse_job_ad
from sd_batch.helper.hooks import global_job_id

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("classad2", reason="the htcondor bindings are not installed")

import test_helper_service as private  # noqa: E402
from test_helper_service import GROUP, until, useradd  # noqa: E402

from conftest import SUBMIT, Service, User  # noqa: E402

users, service = private.users, private.service  # its fixtures: the slot users, the service
OUTSIDER = "sdtest-svc-x"


@pytest.fixture
def outsider(users: tuple[User, User]) -> Iterator[User]:
    for leftover in (["userdel", OUTSIDER], ["groupdel", OUTSIDER]):  # of an interrupted run
        subprocess.run(leftover, check=False, capture_output=True)
    useradd("-U", OUTSIDER)
    try:
        yield User.named(OUTSIDER)
    finally:
        subprocess.run(["userdel", OUTSIDER], check=False, capture_output=True)
        subprocess.run(["groupdel", OUTSIDER], check=False, capture_output=True)


CONNECT = """import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"errno": exc.errno}))
    raise SystemExit
try:
    s.sendall(b'{"action": "probe"}\\n')
except OSError:
    pass  # refused before it read: the reply is there to read
print(s.makefile("rb").readline().decode().strip())
"""


def ask_as(user: User, sock: Path) -> dict[str, object]:
    """A probe from a process of USER's (its primary group only: a slot user's is the slot
    group), with Debian's own Python; the reply, or the errno its connect met."""
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", CONNECT, str(sock)],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    reply: dict[str, object] = json.loads(done.stdout)
    return reply


def test_the_socket_is_root_and_the_slot_groups_alone(service: Service, outsider: User) -> None:
    info = service.socket.stat()
    assert (info.st_uid, info.st_gid, oct(info.st_mode & 0o777)) == (
        0,
        grp.getgrnam(GROUP).gr_gid,
        "0o660",
    )
    assert ask_as(outsider, service.socket) == {"errno": 13}  # EACCES, from the kernel
    service.socket.chmod(0o666)  # an admin's mistake: the service still asks the kernel who
    reply = ask_as(outsider, service.socket)
    assert reply["ok"] is False and "only root and the slot group" in str(reply["message"])
    assert f"refused uid {outsider.uid}" in service.log_text()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"action": "rm -rf /"}\n',
        b'{"action": "probe", "job": "x"}\n',
        b'{"action": "run"}\n',
        b'{"action": "cleanup", "job": 7}\n',
        b'{"action": "cleanup", "job": "x", "uid": 0}\n',
        b"x" * 10_000,
        b'{"action": "probe"}',
    ],
)
def test_a_malformed_request_gets_a_json_error_and_the_service_carries_on(
    service: Service, raw: bytes
) -> None:
    reply = service.ask(raw)
    assert (reply["ok"], reply["error"], reply["disposition"]) == (False, "BadRequest", "requeue")
    assert service.ask(b'{"action": "probe"}\n')["ok"] is True


def test_a_malformed_job_id_is_refused_as_the_helper_refuses_it(service: Service) -> None:
    reply = service.ask(b'{"action": "cleanup", "job": "../../etc/passwd"}\n')
    assert (reply["ok"], reply["disposition"]) == (False, "hold")
    assert "is not an HTCondor job id" in str(reply["message"])


def test_one_caller_cannot_take_every_request_thread(
    service: Service, users: tuple[User, User]
) -> None:
    """A slot user's connections that never send their line hold its own pending slots (for
    10 s each at most): its next request is Busy; root's and another user's are served."""
    from sd_batch.helper.door import CAPS

    user, other = users
    hold = subprocess.Popen(
        ["/usr/bin/python3", "-I", "-c", HOLD, str(service.socket), str(CAPS["pending"][0])],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hold.stdout is not None and hold.stdout.readline() == "ready\n"
        reply = ask_as(user, service.socket)
        assert (reply["ok"], reply["exit"], reply["disposition"]) == (False, 75, "requeue")
        assert reply["error"] == "Busy"
        assert service.ask(b'{"action": "probe"}\n')["ok"] is True  # root's
        assert ask_as(other, service.socket)["ok"] is True
    finally:
        hold.communicate("", timeout=30)
    until(lambda: ask_as(user, service.socket)["ok"] is True, 5.0)


HOLD = """import socket, sys
socks = [socket.socket(socket.AF_UNIX) for _ in range(int(sys.argv[2]))]
for s in socks:
    s.connect(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


# --- the cheap GlobalJobId of JOB_EXIT ----------------------------------------------------------
def test_job_exit_reads_the_global_job_id_as_the_classad_library_does(tmp_path: Path) -> None:
    (ad,) = job_ad_from_submit(
        SUBMIT, submit_dir=tmp_path, owner="u", schedd_name="s@h", qdate=1700000000
    )
    assert global_job_id(ad) == parse_job_ad(ad).global_job_id == "s@h#1.0#1700000000"
    twice = ad + 'GLOBALJOBID = "other#1.0#1"\n'  # the last one counts: left to the library
    assert global_job_id(twice) == parse_job_ad(twice).global_job_id == "other#1.0#1"
    built = re.sub(r"^GlobalJobId = .*$", 'GlobalJobId = strcat("a", "b")', ad, flags=re.M)
    assert global_job_id(built) == parse_job_ad(built).global_job_id == "ab"
