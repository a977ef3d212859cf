"""Shared pytest wiring: the `--regenerate-golden` switch and the `golden` comparison fixture;
the scaffolding of a site on libvirt's test driver (host files, site.toml, in-process `sd`),
imported by the test files as `from conftest import ...`.
"""

from __future__ import annotations

import difflib
import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from sd_batch.cli.main import Environment, main
from sd_batch.config.site import SYSTEM_CONFIG, SiteConfig, load_config
from sd_batch.ledger.store import Ledger

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

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder, self.args = folder, args
        self.sock = folder / "helper.sock"
        self.log_path = folder / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        python = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
        argv = [str(python), "-I", "-m", "sd_batch.helper.service", "--socket", str(self.sock)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*argv, *self.args], stdout=log, stderr=log)
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
