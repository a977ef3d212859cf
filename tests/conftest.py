"""Shared pytest wiring: the `--regenerate-golden` switch and the `golden` comparison fixture;
the scaffolding of a site on libvirt's test driver (host files, site.toml, in-process `sd`,
jobs handed to the root side's `jobs.prepare`), imported by the test files as
`from conftest import ...`.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from sd_batch.batch import jobs
from sd_batch.batch.key import JobKey
from sd_batch.cli.main import Environment, main
from sd_batch.condor.jobad import job_ad_from_submit
from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, SYSTEM_CONFIG, SiteConfig, load_config
from sd_batch.data import HOOKS_DIR
from sd_batch.errors import DescriptionError, Disposition, SdError
from sd_batch.guest.contract import Manifest
from sd_batch.helper.hooks import global_job_id
from sd_batch.hypervisor.connections import Connections
from sd_batch.ledger.store import Ledger, Owner, OwnerKind
from sd_batch.staging import write_input_tar

GoldenCheck = Callable[[Path, str], None]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regenerate-golden",
        action="store_true",
        default=False,
        help="rewrite every expected-output (golden) file from what the code now produces",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> GoldenCheck:
    """Compare text with a stored expected file, as virt-manager's test suite does.

    A missing file is written on first run (review it, then commit it); `--regenerate-golden`
    rewrites them all; a mismatch fails with a unified diff, expected first.
    """
    regenerate = bool(request.config.getoption("--regenerate-golden"))

    def check(path: Path, actual: str) -> None:
        if regenerate or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(actual, encoding="utf-8")
        expected = path.read_text(encoding="utf-8")
        if expected != actual:
            diff = difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=str(path),
                tofile="generated",
            )
            pytest.fail(
                f"output differs from {path} (pytest --regenerate-golden rewrites it):\n"
                + "".join(diff),
                pytrace=False,
            )

    return check


# --- a site on libvirt's test driver ------------------------------------------------------------
class Run(NamedTuple):
    """What one `sd` command did; unpacks as `code, out, err`."""

    code: int
    out: str
    err: str


def sd_in_process(environ: Mapping[str, str], *argv: str) -> Run:
    """`sd ARGV` run in this process (so on its `SHARED_CONNECTIONS`), with ENVIRON."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), Environment(stdout=out, stderr=err, environ=dict(environ)))
    return Run(code, out.getvalue(), err.getvalue())


def node_xml(cpus: int = 4, memory_kib: int = 8 << 20, images: Path | None = None) -> str:
    """A libvirt test-driver host: CPUS cores, MEMORY_KIB; with IMAGES, an `images` dir pool
    there holding a 64 MiB base.qcow2 (the site's base image, as the host sees it)."""
    pool = (
        ""
        if images is None
        else f"""
  <pool type='dir'><name>images</name><target><path>{images}</path></target>
    <volume type='file'><name>base.qcow2</name><capacity unit='MiB'>64</capacity>
      <target><format type='qcow2'/></target></volume></pool>"""
    )
    return f"""<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads>
    <active>{cpus}</active><mhz>2400</mhz><model>x86_64</model></cpu>
  <memory>{memory_kib}</memory>{pool}
</node>
"""


def write_node(
    path: Path, cpus: int = 4, memory_kib: int = 8 << 20, images: Path | None = None
) -> str:
    """Write a `node_xml` host file at PATH; its URI (each connection to it: a private host)."""
    path.write_text(node_xml(cpus, memory_kib, images), encoding="utf-8")
    return f"test://{path}"


def fake_kernel(image_dir: Path, content: tuple[bytes, bytes] = (b"kernel", b"initrd")) -> None:
    """The `minimal` flavour's kernel and initrd: files the test driver never boots."""
    (image_dir / "minimal").mkdir(parents=True, exist_ok=True)
    (image_dir / "minimal" / "vmlinux").write_bytes(content[0])
    (image_dir / "minimal" / "initrd.img").write_bytes(content[1])


def write_site_toml(
    root: Path,
    default_uri: str | None,
    *,
    image_dir: Path | None = None,
    template_dirs: Iterable[Path] = (),
    hosts: Mapping[str, str] | None = None,
    flavour: str | None = "qemu",
    tables: str = "",
) -> Path:
    """ROOT/site.toml: images in IMAGE_DIR (ROOT/images), state in ROOT/state, DEFAULT_URI,
    named HOSTS, the VM FLAVOUR (qemu: no KVM), then TABLES (`[policy]`, ... as text)."""
    lines = [f'image_dir = "{image_dir or root / "images"}"', f'state_dir = "{root / "state"}"']
    if default_uri is not None:
        lines.append(f'default_uri = "{default_uri}"')
    folders = list(template_dirs)
    if folders:
        lines.append("template_dirs = [" + ", ".join(f'"{d}"' for d in folders) + "]")
    if hosts is not None:
        lines += ["[hosts]", *(f'{name} = "{uri}"' for name, uri in hosts.items())]
    if flavour is not None:
        lines += ["[properties]", f'"sd.flavour" = "{flavour}"']
    path = root / "site.toml"
    path.write_text("\n".join(lines) + "\n" + tables, encoding="utf-8")
    return path


def site_environ(config_file: Path) -> dict[str, str]:
    """The environment of `sd` for the site of CONFIG_FILE (and no other site's settings)."""
    return {"SD_BATCH_CONFIG": str(config_file), "PATH": os.environ["PATH"]}


def ledger_rows(config: SiteConfig) -> tuple[list[str], list[str]]:
    """(owners, resources) CONFIG's ledger holds, as `kind id` / `kind name` strings."""
    with Ledger.for_site(config) as ledger:
        owners = ledger.owners()
        resources = [r for o in owners for r in ledger.resources(o)]
    return (
        [f"{o.kind.value} {o.owner_id}" for o in owners],
        [f"{r.kind.value} {r.name}" for r in resources],
    )


@dataclass
class SdSite:
    """A test site's folder and `sd`'s environment there: the base of the files' `Site`s."""

    root: Path
    environ: dict[str, str]

    @property
    def config_file(self) -> Path:
        return self.root / "site.toml"

    def sd(self, *argv: str) -> Run:
        return sd_in_process(self.environ, *argv)


# --- jobs on the root side (`jobs.prepare`) on libvirt's test driver -----------------------------
#: A user's my.sf on the site's minimal template, open for its attributes and the closing "}".
MINIMAL = '#include "minimal.sf"\nsfConfig extends MinimalVM {\n    '


@dataclass
class JobSite:
    """A private site on `test:///ROOT/node.xml` and a submit folder (SANDBOX): jobs as
    condor_submit makes them, their input disks as PREPARE_JOB writes them, handed to
    `jobs.prepare`, the root side, as the helper does."""

    root: Path
    sandbox: Path
    connections: Connections
    count: int = 0

    @property
    def config_path(self) -> Path:
        return self.root / "site.toml"

    def write_config(self, policy: str = "", templates: tuple[Path, ...] = ()) -> SiteConfig:
        write_site_toml(
            self.root,
            f"test://{self.root / 'node.xml'}",
            template_dirs=[*templates, BUILTIN_TEMPLATE_DIR],
            tables=f"[policy]\n{policy}",
        )
        return load_config(self.config_path)

    def submit(self, description: str, requests: str = "", sf_text: str | None = None) -> str:
        """The job ad of a job asking for DESCRIPTION, with REQUESTS (submit commands) and my.sf
        holding SF_TEXT: what condor_submit makes of it (the real bindings)."""
        inputs = ""
        if sf_text is not None:
            (self.sandbox / "my.sf").write_text(sf_text, encoding="utf-8")
            inputs = "transfer_input_files = my.sf\n"
        self.count += 1
        text = (
            f"executable = /bin/true\n{inputs}{requests}+SDVMDescription = {description}\nqueue\n"
        )
        (ad,) = job_ad_from_submit(
            text,
            submit_dir=self.sandbox,
            owner="tester",
            schedd_name=f"job-{os.getpid()}-{self.count}@test",
            qdate=1700000000,
        )
        return ad

    def input_disk(self, ad: str, machine: str | None = None) -> tuple[JobKey, bytes]:
        """The job of AD: its key and the input disk PREPARE_JOB writes (with the slot's
        MACHINE ad, if any)."""
        job_id = next(
            line.split('"')[1] for line in ad.splitlines() if line.startswith("GlobalJobId = ")
        )
        out = io.BytesIO()
        write_input_tar(
            self.sandbox,
            Manifest(("/bin/true",), {}, "."),
            out,
            job_ad_text=ad,
            machine_ad_text=machine,
            max_bytes=1 << 30,
        )
        return JobKey(os.getuid(), job_id), out.getvalue()

    def job(self, description: str, sf_text: str | None = None) -> tuple[JobKey, bytes]:
        """A job asking for DESCRIPTION (with my.sf holding SF_TEXT): its key and input disk."""
        return self.input_disk(self.submit(description, sf_text=sf_text))

    def prepare(
        self,
        config: SiteConfig,
        description: str,
        sf_text: str | None = None,
        key: JobKey | None = None,
    ) -> jobs.PreparedJob:
        made_key, disk = self.job(description, sf_text)
        return jobs.prepare(config, key or made_key, io.BytesIO(disk), connections=self.connections)

    def prepare_ad(self, config: SiteConfig, ad: str, machine: str | None) -> jobs.PreparedJob:
        """`jobs.prepare` of the job of AD, in a slot whose machine ad is MACHINE."""
        key, disk = self.input_disk(ad, machine)
        return jobs.prepare(config, key, io.BytesIO(disk), connections=self.connections)

    def refusal(self, sf_text: str, policy: str = "") -> SdError:
        """The hold a job with SF_TEXT as its my.sf gets, under POLICY; nothing left behind."""
        config = self.write_config(policy)
        with pytest.raises(SdError) as caught:
            self.prepare(config, '"my.sf"', sf_text)
        assert caught.value.disposition is Disposition.HOLD
        assert self.leftovers(config) == []
        return caught.value

    def leftovers(self, config: SiteConfig) -> list[str]:
        with Ledger.for_site(config) as ledger:
            rows = [f"{o.kind.value} {o.owner_id}" for o in ledger.owners()]
        folder = config.state_dir / "jobs"
        return rows + (sorted(str(p) for p in folder.iterdir()) if folder.is_dir() else [])

    def job_ids(self, config: SiteConfig) -> list[str]:
        """The job ids of the job owners in the ledger."""
        with Ledger.for_site(config) as ledger:
            return [o.owner_id.partition(":")[2] for o in ledger.owners()]

    def clean_up(self, config: SiteConfig) -> None:
        """`jobs.cleanup` of every job the ledger has."""
        for job_id in self.job_ids(config):
            jobs.cleanup(config, JobKey(os.getuid(), job_id), connections=self.connections)

    def prepare_job_hook(self, ad: str, **environ: str) -> subprocess.CompletedProcess[bytes]:
        """The real PREPARE_JOB hook process on AD in the sandbox, on this site, reaching the
        root side through the helper command run directly (no sudo); ENVIRON adds to its
        environment (the starter's _CONDOR_* variables)."""
        return subprocess.run(
            [str(HOOKS_DIR / "prepare_job")],
            input=ad.encode(),
            cwd=self.sandbox,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(self.root),
                "SD_BATCH_CONFIG": str(self.config_path),
                "CONDOR_CONFIG": "/dev/null",
                "_CONDOR_SMARTDOMAINS_HELPER": f"{sys.executable} -m sd_batch.batch.privileged",
                **environ,
            },
            capture_output=True,
            timeout=60,
            check=False,
        )

    def domain_xml(self, config: SiteConfig, domain: str) -> ET.Element:
        hv = self.connections(config.default_uri)
        return ET.fromstring(hv._lookup(domain).XMLDesc(0))  # type: ignore[attr-defined]


@pytest.fixture
def job_site(tmp_path: Path) -> Iterator[JobSite]:
    """A JobSite in TMP_PATH: a 2-CPU 4 GiB test-driver host, the minimal guest's (fake) kernel.
    Test files take it by their own name: `site = job_site`."""
    write_node(tmp_path / "node.xml", cpus=2, memory_kib=4 << 20)
    fake_kernel(tmp_path / "images")
    sandbox = tmp_path / "scratch"
    sandbox.mkdir()
    made = JobSite(tmp_path, sandbox, Connections())
    yield made
    made.connections.close()


def held(error: SdError) -> str:
    """The HoldReason's text, as the hook writes it (one line, file:line:col first)."""
    text = error.headline() if isinstance(error, DescriptionError) else str(error)
    assert "\n" not in text
    return text


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


def start_service(root: Path, sock: Path | None = None) -> Service:
    """`python -I -m sd_batch.helper.service` as root on ROOT's site, listening on SOCK
    (ROOT/run/helper.sock), once it accepts connections."""
    sock = sock or root / "run" / "helper.sock"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SD_BATCH_CONFIG": str(root / "site.toml"),
        "CONDOR_CONFIG": "/dev/null",
    }
    log = root / "service.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "sd_batch.helper.service", "--socket", str(sock)],
            env=env,
            stdout=out,
            stderr=out,
        )
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError(f"the service exited: {log.read_text()}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(sock))
            return Service(root, sock, proc, log)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the service never listened: {log.read_text()}")


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


def wait_until(
    condition: Callable[[], object], what: str, seconds: float = 30.0, every: float = 0.05
) -> None:
    """Poll CONDITION (another process's state: nothing to wait on) until true; fail after
    SECONDS naming WHAT. The bound is only a hang guard: no test asserts on the time taken."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


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


def assert_jobs_gone(domains: list[str]) -> None:
    """No domain and no job folder (input/output disks, console) of these jobs anywhere."""
    config = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    listed = subprocess.run(
        ["virsh", "-c", config.default_uri, "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not set(domains) & set(listed), f"domains left: {set(domains) & set(listed)}"
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
        argv = [str(python), "-I", "-m", "sd_batch.helper.service", "--socket", str(self.sock)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*argv, *self.args], stdout=log, stderr=log, env=self.service_environ
            )
        wait_until(
            lambda: self.answers() or self.proc is None or self.proc.poll() is not None,
            "the helper service to listen",
            timeout,
        )
        assert self.answers(), self.log()
        return self.proc

    def answers(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.sock))
        except OSError:
            return False
        finally:
            probe.close()
        return True

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
