"""Test scaffolding: a private helper service on a test-driver site and hooks run as slot
users (`Service`, `Job`), a helper service of this checkout for real-QEMU tests
(`PrivateService`), and the checks those tests share. Test files import these through conftest.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sites import fake_kernel, wait_until, write_node, write_site_toml

from sd_batch.batch.key import JobKey
from sd_batch.condor.jobad import job_ad_from_submit
from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, SYSTEM_CONFIG, load_config
from sd_batch.data import HOOKS_DIR
from sd_batch.helper.hooks import global_job_id
from sd_batch.ledger.store import Ledger, Owner, OwnerKind

# --- a private helper service on a test-driver site, and hooks run as slot users ------------------
#: The job `new_job` makes unless told otherwise: hello.sh and an input file, on the minimal guest.
HELLO = {"hello.sh": "#!/bin/sh\necho hello\n", "input.txt": "input\n"}
SUBMIT = """executable = hello.sh
transfer_input_files = input.txt
+SDVMDescription = "minimal"
queue
"""


@dataclass(frozen=True)
class User:
    """An account hooks run as (a slot user, or one outside the slot group)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def named(cls, name: str) -> User:
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid)


@dataclass
class Service:
    """A private helper service (root) on the site in ROOT, listening on SOCKET."""

    root: Path
    socket: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def config(self) -> Path:
        return self.root / "site.toml"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def ask(self, raw: bytes, *, shut: bool = True, timeout: float = 30.0) -> dict[str, object]:
        """One raw request as root; the reply line."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.socket))  # blocking, as a hook's: waits out a full backlog
            sock.settimeout(timeout)
            try:
                sock.sendall(raw)
                if shut:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # it stopped reading: its reply is still there to read
            reply: dict[str, object] = json.loads(sock.makefile("rb").readline())
            return reply

    def leftovers(self) -> list[str]:
        config = load_config(self.config)
        with Ledger.for_site(config) as ledger:
            rows = [f"{o.kind.value} {o.owner_id}" for o in ledger.owners()]
        jobs = config.state_dir / "jobs"
        return rows + (sorted(str(p) for p in jobs.iterdir()) if jobs.is_dir() else [])


def helper_site(root: Path, policy: str = "") -> Path:
    """ROOT as a site for a private helper service: a 2-CPU 4 GiB test-driver host, the minimal
    guest's (fake) kernel, site.toml with POLICY's [policy] lines, and ROOT/bin holding what the
    hook scripts need on PATH (and no sudo: a hook falling back to the helper command fails)."""
    root.chmod(0o755)  # slot users pass through to the socket and their scratch dirs
    uri = write_node(root / "node.xml", cpus=2, memory_kib=4 << 20)
    fake_kernel(root / "images", (b"x", b"x"))
    write_site_toml(root, uri, template_dirs=[BUILTIN_TEMPLATE_DIR], tables=f"[policy]\n{policy}")
    (root / "bin").mkdir()
    for tool in ("dirname", "readlink"):
        (root / "bin" / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    return root


def start_service(root: Path, sock: Path | None = None, *args: str) -> Service:
    """`python -I -m sd_batch.helper.service [ARGS]` as root on ROOT's site, listening on SOCK
    (ROOT/run/helper.sock), once it accepts connections."""
    sock = sock or root / "run" / "helper.sock"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SD_BATCH_CONFIG": str(root / "site.toml"),
        "CONDOR_CONFIG": "/dev/null",
    }
    log = root / "service.log"
    proc = spawn_service(sys.executable, sock, log, env, args, timeout=10.0)
    return Service(root, sock, proc, log)


def spawn_service(
    python: str | Path,
    sock: Path,
    log: Path,
    env: Mapping[str, str] | None,
    args: Sequence[str] = (),
    *,
    timeout: float,
) -> subprocess.Popen[bytes]:
    """`PYTHON -I -m sd_batch.helper.service --socket SOCK [ARGS]`, its output appended to LOG,
    once it accepts connections (within TIMEOUT s; else killed, failing with its log)."""
    argv = [str(python), "-I", "-m", "sd_batch.helper.service", "--socket", str(sock), *args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    with contextlib.suppress(AssertionError):
        wait_until(lambda: answers(sock) or proc.poll() is not None, "the service", timeout)
    if proc.poll() is not None:
        raise AssertionError(f"the service exited: {log.read_text()}")
    if not answers(sock):
        proc.kill()
        raise AssertionError(f"the service never listened: {log.read_text()}")
    return proc


def answers(sock: Path) -> bool:
    """Whether something accepts a connection on SOCK."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(sock))
    except OSError:
        return False
    finally:
        probe.close()
    return True


@dataclass
class Job:
    """One job of USER's: its scratch dir, job ad and id, and the hooks run as USER."""

    service: Service
    user: User
    scratch: Path
    ad: str

    @property
    def id(self) -> str:
        return global_job_id(self.ad)

    @property
    def key(self) -> JobKey:
        return JobKey(self.user.uid, self.id)

    def env(self) -> dict[str, str]:
        return {
            "PATH": str(self.service.root / "bin"),
            "HOME": "/",
            "CONDOR_CONFIG": "/dev/null",
            "_CONDOR_SCRATCH_DIR": str(self.scratch),
            "_CONDOR_SMARTDOMAINS_HELPER_SOCKET": str(self.service.socket),
        }

    def start(
        self,
        hook: str,
        *argv: str,
        user: User | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        who = user or self.user
        return subprocess.Popen(
            [str(HOOKS_DIR / hook), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.scratch,
            env={**self.env(), **(env or {})},
            user=who.uid,
            group=who.gid,
            extra_groups=os.getgrouplist(who.name, who.gid),
        )

    def hook(
        self, hook: str, *argv: str, user: User | None = None, timeout: float = 60.0
    ) -> tuple[int, str, str]:
        """Run HOOK as the starter would (the job ad on stdin) as USER (the job's): its exit
        code, stdout and stderr."""
        proc = self.start(hook, *argv, user=user)
        out, err = proc.communicate(self.ad.encode(), timeout=timeout)
        return proc.returncode, out.decode(), err.decode()

    def prepare(self) -> None:
        code, out, err = self.hook("prepare_job")
        assert (code, "HookStatusCode = 0" in out) == (0, True), out + err

    def owner(self) -> Owner | None:
        with Ledger.for_site(load_config(self.service.config)) as ledger:
            return ledger.owner(
                OwnerKind.JOB, self.key.owner_id, f"test://{self.service.root}/node.xml"
            )


def new_job(
    service: Service,
    user: User,
    name: str,
    files: Mapping[str, str] = HELLO,
    submit: str = SUBMIT,
) -> Job:
    """USER's job NAME: a scratch dir of USER's holding FILES (executable when they start with
    #!), and the job ad condor_submit makes of SUBMIT there."""
    scratch = service.root / f"scratch-{name}"
    scratch.mkdir()
    for file, text in files.items():
        (scratch / file).write_text(text, encoding="utf-8")
        (scratch / file).chmod(0o755 if text.startswith("#!") else 0o644)
    for path in (scratch, *scratch.iterdir()):
        os.chown(path, user.uid, user.gid)
    (ad,) = job_ad_from_submit(
        submit,
        submit_dir=scratch,
        owner=user.name,
        schedd_name=f"svc-{name}-{os.getpid()}@test",
        qdate=1700000000,
    )
    return Job(service, user, scratch, ad)


def qemu_host_missing(slot_user: str) -> str | None:
    """Why this machine cannot boot a job's VM for SLOT_USER, or None: root, the slot user,
    the built `minimal` guest and an answering libvirtd (what the real-QEMU job tests need)."""
    if os.geteuid() != 0:
        return "needs root (sd run drops to the slot user; the helper is root's)"
    if subprocess.run(["id", slot_user], capture_output=True, check=False).returncode != 0:
        return f"no slot user {slot_user}: run scripts/setup-host"
    config = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    if not (config.image_dir / "minimal" / "vmlinux").is_file():
        return "the minimal guest is not built (scripts/build-guest)"
    probe = subprocess.run(
        ["virsh", "-q", "-c", config.default_uri, "version"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return f"{config.default_uri} does not answer (scripts/setup-host starts libvirtd)"
    return None


def domain_state(domain: str) -> str:
    """`virsh domstate` of DOMAIN on the system libvirtd ("" when there is none)."""
    done = subprocess.run(
        ["virsh", "-c", "qemu:///system", "domstate", domain],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def system_domains() -> set[str]:
    """Every domain's name on the system config's libvirt (virsh, as an admin would look)."""
    config = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    listed = subprocess.run(
        ["virsh", "-c", config.default_uri, "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(listed.stdout.split())


def assert_jobs_gone(domains: list[str]) -> None:
    """No domain and no job folder (input/output disks, console) of these jobs anywhere."""
    config = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    left = set(domains) & system_domains()
    assert not left, f"domains left: {left}"
    for domain in domains:
        folder = config.state_dir / "jobs" / domain.removeprefix("sd-job-")
        assert not folder.exists(), f"job folder left: {sorted(folder.rglob('*'))}"


class PrivateService:
    """A helper service of this checkout on a socket of its own in FOLDER (the system one
    may run another checkout's code); started again on the same socket by `start`."""

    def __init__(self, folder: Path, *args: str, environ: Mapping[str, str] | None = None) -> None:
        """ENVIRON (None: this process's) is the service's environment, e.g. SD_BATCH_CONFIG."""
        self.folder, self.args, self.service_environ = folder, args, environ
        self.sock = folder / "helper.sock"
        self.log_path = folder / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        python = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
        self.proc = spawn_service(
            python, self.sock, self.log_path, self.service_environ, self.args, timeout=timeout
        )
        return self.proc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def environ(self) -> dict[str, str]:
        """What `sd run` needs to reach this service rather than the system one."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/root",
            "CONDOR_CONFIG": "/dev/null",
            "_CONDOR_SMARTDOMAINS_HELPER_SOCKET": str(self.sock),
        }
