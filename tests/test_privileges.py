"""The privilege boundary: what a job's slot user can and cannot do on a worker.

Hooks and jobs run as a slot user. After `scripts/setup-host` that user cannot open libvirt
(the sockets are root's alone), may run exactly one command as root through sudo
(`condor_hooks/helper`), and the helper acts only on the caller's own jobs: the VM's name and
folder derive from (caller uid, job id), so a second slot user naming the first one's job id
reaches nothing. The helper refuses malformed arguments and ignores the caller's environment.
The helper service (when setup-host started it) is the same door without sudo: its socket is
the slot group's alone, and it knows the caller from the kernel, so the same holds through it.
No VM boots here: PREPARE_JOB only defines one. Needs root, sudo and setup-host's rule.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_batch.batch.key import JobKey
from sd_batch.condor.jobad import job_ad_from_submit
from sd_batch.data import HOOKS_DIR

from conftest import system_domains

pytestmark = pytest.mark.qemu

HELPER = str(HOOKS_DIR / "helper")
SUDOERS = Path("/etc/sudoers.d/sd-batch")
SERVICE_SOCKET = Path("/run/sd-batch/helper.sock")
SERVICE_LOG = Path("/var/log/sd-batch/helper.log")
GROUP = "sd-slots"
USER_A, USER_B = "sdslot1", "sdtest-b"  # B exists only while this module runs
SUBMIT = """executable = /bin/true
transfer_executable = false
+SDVMDescription = "minimal"
queue
"""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (to act as two slot users)"
    if shutil.which("sudo") is None or not SUDOERS.is_file():
        return "sudo or /etc/sudoers.d/sd-batch missing: run scripts/setup-host"
    if HELPER not in SUDOERS.read_text(encoding="utf-8"):
        return f"{SUDOERS} is for another checkout: run scripts/setup-host here"
    try:
        pwd.getpwnam(USER_A)
    except KeyError:
        return f"no slot user {USER_A}: run scripts/setup-host"
    if not Path("/run/libvirt/libvirt-sock").exists():
        return "libvirtd is not running (scripts/setup-host)"
    return None


@dataclass(frozen=True)
class Slot:
    name: str
    uid: int
    gid: int

    def run(
        self,
        argv: list[str],
        *,
        stdin: bytes = b"",
        cwd: str = "/",
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """ARGV as this user, with the starter's kind of minimal environment."""
        environ = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/",
            "CONDOR_CONFIG": "/dev/null",
            **(env or {}),
        }
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            cwd=cwd,
            env=environ,
            user=self.uid,
            group=self.gid,
            extra_groups=os.getgrouplist(self.name, self.gid),
            timeout=120,
            check=False,
        )
        return subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )

    def helper(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["sudo", "-n", HELPER, *args], env=env)


def _slot(name: str) -> Slot:
    entry = pwd.getpwnam(name)
    return Slot(entry.pw_name, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="module")
def slots() -> Iterator[tuple[Slot, Slot]]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    subprocess.run(
        [
            "useradd",
            "-r",
            "-g",
            GROUP,
            "-M",
            "-d",
            "/nonexistent",
            "-s",
            "/usr/sbin/nologin",
            USER_B,
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield _slot(USER_A), _slot(USER_B)
    finally:
        subprocess.run(["userdel", USER_B], check=False, capture_output=True)


@pytest.fixture
def prepared(slots: tuple[Slot, Slot]) -> Iterator[tuple[str, str]]:
    """A job PREPARE_JOB made for slot user A: (its GlobalJobId, its VM's name)."""
    a, _ = slots
    scratch = tempfile.mkdtemp(prefix="sd-priv-")
    os.chown(scratch, a.uid, a.gid)
    (ad,) = job_ad_from_submit(
        SUBMIT,
        submit_dir=Path(scratch),
        owner=a.name,
        schedd_name=f"privileges-{os.getpid()}@test",
        qdate=1700000000,
    )
    job_id = next(
        line.split('"')[1] for line in ad.splitlines() if line.startswith("GlobalJobId = ")
    )
    domain = JobKey(a.uid, job_id).domain
    try:
        done = a.run(
            [str(HOOKS_DIR / "prepare_job")],
            stdin=ad.encode(),
            cwd=scratch,
            env={"_CONDOR_SCRATCH_DIR": scratch},
        )
        assert "HookStatusCode = 0" in done.stdout, done.stdout + done.stderr
        assert domain in system_domains()
        yield job_id, domain
    finally:
        a.run([str(HOOKS_DIR / "job_exit"), "exit"], stdin=ad.encode(), cwd=scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        assert domain not in system_domains()


# --- libvirt itself ------------------------------------------------------------------------
def test_libvirt_sockets_are_root_only(slots: tuple[Slot, Slot]) -> None:
    for sock in ("/run/libvirt/libvirt-sock", "/run/libvirt/libvirt-sock-ro"):
        info = Path(sock).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode) & 0o077) == (0, 0), sock


def test_a_slot_user_cannot_open_qemu_system(slots: tuple[Slot, Slot]) -> None:
    a, _ = slots
    for uri in ("qemu:///system", "qemu:///system?socket=/run/libvirt/libvirt-sock-ro"):
        done = a.run(["virsh", "-c", uri, "list", "--all"])
        assert done.returncode != 0
        assert "Permission denied" in done.stderr, done.stderr


# --- sudo allows the helper, nothing else ------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["/bin/true"],
        ["/bin/sh", "-c", "id"],
        [str(HOOKS_DIR / "prepare_job")],
        [
            str(HOOKS_DIR.parent / ".venv" / "bin" / "python"),
            "-m",
            "sd_batch.batch.privileged",
            "probe",
        ],
        ["-u", "root", "/usr/bin/virsh", "list"],
    ],
)
def test_sudo_refuses_anything_but_the_helper(slots: tuple[Slot, Slot], argv: list[str]) -> None:
    a, _ = slots
    done = a.run(["sudo", "-n", *argv])
    assert done.returncode == 1
    assert "password is required" in done.stderr or "not allowed" in done.stderr, done.stderr


def test_sudo_lets_a_slot_user_probe_through_the_helper(slots: tuple[Slot, Slot]) -> None:
    a, _ = slots
    done = a.helper("probe")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True


# --- the helper's arguments ----------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["probe", "extra"],
        ["rm", "-rf", "/"],
        ["cleanup"],
        ["cleanup", "a", "b"],
        ["--job", "x"],
        ["run", "1.0", "--force"],
    ],
)
def test_the_helper_refuses_extra_or_unknown_arguments(
    slots: tuple[Slot, Slot], args: list[str]
) -> None:
    a, _ = slots
    done = a.helper(*args)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert "usage: helper" in done.stderr


@pytest.mark.parametrize(
    "job_id", ["../../etc/passwd", "a b", "", "x" * 300, "1.0;reboot", "$(id)", "job\nid"]
)
def test_the_helper_refuses_malformed_job_ids(slots: tuple[Slot, Slot], job_id: str) -> None:
    a, _ = slots
    done = a.helper("cleanup", job_id)
    assert done.returncode == 1, done.stderr
    reply = json.loads(done.stdout)
    assert (reply["ok"], reply["disposition"]) == (False, "hold")
    assert "is not an HTCondor job id" in reply["message"]


def test_the_helper_ignores_the_callers_environment(
    slots: tuple[Slot, Slot], tmp_path: Path
) -> None:
    """SD_BATCH_CONFIG and PYTHONPATH of the caller never reach the root side."""
    a, _ = slots
    evil = Path(tempfile.mkdtemp(prefix="sd-evil-"))
    try:
        (evil / "templates").mkdir()
        (evil / "templates" / "evil.sf").write_text(
            '#include "minimal.sf"\nsfConfig extends MinimalVM;\n', encoding="utf-8"
        )
        (evil / "site.toml").write_text(
            f'template_dirs = ["{evil / "templates"}"]\ndefault_uri = "test:///default"\n',
            encoding="utf-8",
        )
        marker = evil / "pwned"
        (evil / "sd_batch").mkdir()
        (evil / "sd_batch" / "__init__.py").write_text(
            f"open({str(marker)!r}, 'w').write('root ran my code')\n", encoding="utf-8"
        )
        for path in [evil, *evil.rglob("*")]:
            os.chown(path, a.uid, a.gid)
        env = {
            "SD_BATCH_CONFIG": str(evil / "site.toml"),
            "PYTHONPATH": str(evil),
            "PYTHONSTARTUP": str(evil / "sd_batch" / "__init__.py"),
        }
        done = a.helper("probe", env=env)
        assert done.returncode == 0, done.stderr
        assert "evil" not in json.loads(done.stdout)["templates"]
        assert not marker.exists()
        refused = a.run(["sudo", "-n", f"SD_BATCH_CONFIG={evil / 'site.toml'}", HELPER, "probe"])
        assert refused.returncode == 1 and "not allowed" in refused.stderr, refused.stderr
    finally:
        shutil.rmtree(evil, ignore_errors=True)


# --- one slot user against another's job --------------------------------------------------
def test_another_slot_user_cannot_touch_a_prepared_job(
    slots: tuple[Slot, Slot], prepared: tuple[str, str]
) -> None:
    _, b = slots
    job_id, domain = prepared
    cleaned = b.helper("cleanup", job_id)
    assert cleaned.returncode == 0, cleaned.stderr
    assert json.loads(cleaned.stdout) == {"ok": True, "removed": "nothing (already clean)"}
    ran = b.helper("run", job_id)
    assert ran.returncode != 0
    assert "has no prepared VM" in ran.stderr
    assert ran.stdout == ""
    assert domain in system_domains()  # A's VM: still defined, never started by B
    state = subprocess.run(
        ["virsh", "-c", "qemu:///system", "domstate", domain],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert state in ("shut off", "paused")  # defined, or started paused by the service: never run


# --- the same through the helper service ----------------------------------------------------
@pytest.fixture
def service(slots: tuple[Slot, Slot]) -> Path:
    if not SERVICE_SOCKET.is_socket():
        pytest.skip("the helper service is not running (scripts/setup-host starts it)")
    return SERVICE_SOCKET


def test_the_helper_services_socket_is_root_and_the_slot_groups_alone(service: Path) -> None:
    info, folder = service.stat(), service.parent.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        0,
        grp.getgrnam(GROUP).gr_gid,
        0o660,
    )
    assert (folder.st_uid, stat.S_IMODE(folder.st_mode)) == (0, 0o755)


def test_another_slot_user_cannot_touch_a_prepared_job_through_the_service(
    slots: tuple[Slot, Slot], prepared: tuple[str, str], service: Path
) -> None:
    _, b = slots
    job_id, domain = prepared
    ad = f'GlobalJobId = "{job_id}"\n'.encode()
    env = {"_CONDOR_SCRATCH_DIR": "/nonexistent"}
    cleaned = b.run([str(HOOKS_DIR / "job_exit"), "remove"], stdin=ad, env=env)
    assert "removed nothing (already clean)" in cleaned.stderr, cleaned.stderr
    ran = b.run([str(HOOKS_DIR / "runner"), "--job", job_id], env=env)
    assert (ran.returncode, ran.stdout) == (1, "")
    assert "has no prepared VM" in ran.stderr, ran.stderr
    if os.access(SERVICE_LOG, os.R_OK):  # both went through the service, as B
        log = SERVICE_LOG.read_text(encoding="utf-8", errors="replace")
        for action in ("cleanup", "run"):
            assert f"{action} {job_id} for uid {b.uid} (pid" in log
    state = subprocess.run(
        ["virsh", "-c", "qemu:///system", "domstate", domain],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A's VM: still defined (or started paused by the service after A's prepare), never run by B
    assert state in ("shut off", "paused")
