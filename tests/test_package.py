"""sd-batch installed the way sites install it: a wheel, a Debian package, an upgrade under a
running job, and removal.

The wheel test builds `python -m build --wheel` and installs it into a fresh virtualenv of
Debian's python3: the package data is all there, with its modes, and the hooks find that
virtualenv's Python. The Debian package test (markers slow and qemu: two package builds, each
minutes on a busy machine, and real VMs) builds the .deb with scripts/build-deb, installs it
with apt, runs the README's job (examples/hello.sub) through the installed `sd run`, upgrades to
a rebuilt package while a VM job runs, removes and purges it, checking what is left each time.
The rebuilt package's modules refuse to be imported by a process of the old version: the job
spanning the upgrade ends well only if the old helper service, draining it, never imported code
from disk after the upgrade replaced it.

Installing the package takes this host's helper service and sudoers rule over. Whatever
happens, the test purges it (with a throw-away site config, so a purge never removes the host's
real state and image folders) and runs `$SD_BATCH_RESTORE_SETUP_HOST` (default: this
checkout's scripts/setup-host) with --no-guest to give the host back.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sd_batch" / "data"
EXAMPLES = ROOT / "examples"
INSTALL = Path("/usr/lib/sd-batch")
SUDOERS = Path("/etc/sudoers.d/sd-batch")
DROP_IN = Path("/etc/condor/config.d/99-smartdomains.conf")
SOCKET = Path("/run/sd-batch/helper.sock")
PIDFILE = Path("/run/sd-batch/helper.pid")
WANTS = Path("/etc/systemd/system/multi-user.target.wants/sd-batch-helper.service")
ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "CONDOR_CONFIG": "/dev/null",
}
APT = ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=300"]
NEW_VERSION = "99.0.1"
#: Appended to every module of the rebuilt package: a process of the old version that imports
#: one of them (a lazy import after the upgrade replaced the code on disk) fails loudly.
GUARD = """
import sys as _sd_guard  # tests/test_package.py: no process of another version imports this
if _sd_guard.modules["sd_batch"].__version__ != "{version}":
    raise ImportError(f"{{__name__}} of {version} imported by a "
                      f"{{_sd_guard.modules['sd_batch'].__version__}} process")
"""
SLOW_SUB = """executable = slow.sh
should_transfer_files = YES
when_to_transfer_output = ON_EXIT
output = slow.out
error = slow.err
+SDVMDescription = "minimal"
queue
"""
SITE_EDIT = "# a site's own line (tests/test_package.py)\n"
SLOW_SH = "#!/bin/sh\necho started\nsleep {seconds}\necho survived the upgrade > slow.txt\n"


def run(
    *argv: str | Path,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or ENV,
        timeout=timeout,
        check=False,
    )


def tracked_data_files() -> set[str]:
    listed = run("git", "-C", ROOT, "ls-files", "sd_batch/data")
    if listed.returncode != 0:  # not a git checkout: every file there
        return {
            p.relative_to(ROOT).as_posix()
            for p in DATA.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
    return set(listed.stdout.split())


# ---------------------------------------------------------------------------------- the wheel


def test_the_wheel_carries_what_a_worker_needs_and_its_hooks_find_its_python(
    tmp_path: Path,
) -> None:
    pytest.importorskip("build", reason="the dist extra (python -m build) is not installed")
    built = run(
        sys.executable,
        "-m",
        "build",
        "--wheel",
        "--outdir",
        tmp_path / "dist",
        ROOT,
        env={**os.environ},
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sd_batch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        modes = {i.filename: i.external_attr >> 16 for i in archive.infolist()}
    wanted = tracked_data_files()
    assert {
        "sd_batch/data/setup-host",
        "sd_batch/data/sudoers.in",
        "sd_batch/data/condor_hooks/99-smartdomains.conf",
        "sd_batch/data/condor_hooks/sd-batch-helper.service",
        "sd_batch/data/job_templates/minimal.sf",
    } <= wanted
    assert wanted - set(modes) == set(), "package data missing from the wheel"
    for name in (
        "setup-host",
        "subreaper",
        "condor_hooks/helper",
        "condor_hooks/prepare_job",
        "condor_hooks/job_exit",
        "condor_hooks/runner",
        "condor_hooks/startd_cron",
    ):
        assert modes[f"sd_batch/data/{name}"] & 0o111, f"{name} lost its exec bits"
    assert any(n.startswith("sd_batch/guest/") and n.endswith("build.py") for n in modes)

    # a fresh virtualenv of the interpreter a Debian worker has, the wheel alone in it
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    venv = tmp_path / "venv"
    assert run(python, "-m", "venv", venv).returncode == 0
    pip = run(venv / "bin" / "pip", "install", "-q", "--no-deps", wheel, env={**os.environ})
    assert pip.returncode == 0, pip.stderr
    paths = run(venv / "bin" / "sd", "admin", "paths", env={**os.environ})
    assert paths.returncode == 0, paths.stderr
    shown = dict(re.findall(r"^([^:]+):\s+(\S+)$", paths.stdout, re.M))
    site = run(
        venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
    ).stdout.strip()
    assert shown["SMARTDOMAINS_HOME"] == f"{site}/sd_batch/data"
    hooks = Path(shown["hooks"])
    assert (hooks / "prepare_job").is_file()
    assert (Path(shown["templates"]) / "minimal.sf").is_file()
    found = run(
        "sh",
        "-c",
        'here=$1; . "$here/find-python"; "$python" -I -c '
        '"import sys, sd_batch; print(sys.prefix, sd_batch.__file__)"',
        "sh",
        hooks,
    )
    prefix, package = found.stdout.split()
    assert (Path(prefix), Path(package).parent) == (venv, Path(site) / "sd_batch"), found.stderr
    helped = run(venv / "bin" / "sd", "admin", "setup-host", "--help", env={**os.environ})
    assert "--no-guest" in helped.stdout and "sudoers" in helped.stdout


def test_a_checkout_keeps_its_old_paths_as_links_into_the_package() -> None:
    for old, new in (
        ("condor_hooks", "sd_batch/data/condor_hooks"),
        ("job_templates", "sd_batch/data/job_templates"),
        ("scripts/subreaper", "sd_batch/data/subreaper"),
        ("scripts/site-config", "sd_batch/data/site-config"),
    ):
        assert (ROOT / old).resolve() == (ROOT / new).resolve(), old
    found = run(
        "sh",
        "-c",
        'here=$1; . "$here/find-python"; readlink -f "$python"',
        "sh",
        (ROOT / "condor_hooks").resolve(),
    )
    if (ROOT / ".venv" / "bin" / "python").exists():
        assert found.stdout.strip() == str((ROOT / ".venv" / "bin" / "python").resolve())


def test_the_helper_service_loads_all_its_code_before_an_upgrade_can_replace_it() -> None:
    """warm_up leaves no module of the root side to a lazy import (which, after an upgrade,
    would read the new version's file into the old process; the Debian package test below
    runs a real job across an upgrade)."""
    code = """
import pkgutil, sys, sd_batch
from sd_batch.helper.service import NOT_WARMED, warm_up
warm_up()
every = {m.name for m in pkgutil.walk_packages(sd_batch.__path__, "sd_batch.")}
print(sorted(m for m in every if not m.startswith(NOT_WARMED) and m not in sys.modules))
"""
    done = run(sys.executable, "-I", "-c", code, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------- the .deb


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (apt installs the package)"
    if not shutil.which("dpkg-buildpackage"):
        return "dpkg-dev is not installed"
    if run("dpkg-query", "-W", "-f", "${db:Status-Status}", "sd-batch").stdout == "installed":
        return "sd-batch's Debian package is installed here already: not touching it"
    if not Path("/var/lib/sd-batch/images/minimal/vmlinux").is_file():
        return "the minimal guest is not built (scripts/setup-host)"
    if run("virsh", "-q", "-c", "qemu:///system", "version").returncode != 0:
        return "qemu:///system does not answer (scripts/setup-host)"
    return None


def package_status() -> str:
    done = run("dpkg-query", "-W", "-f", "${Version} ${db:Status-Abbrev}", "sd-batch")
    return done.stdout.strip()


def service_pid() -> int:
    return int(PIDFILE.read_text().strip())


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def installed_processes() -> list[str]:
    """Every process running the package's Python (from /proc: ps truncates)."""
    return [
        line
        for proc in Path("/proc").iterdir()
        if proc.name.isdigit()
        if str(INSTALL) in (line := cmdline(int(proc.name)))
    ]


def throwaway_config(folder: Path, *, job_recorded: bool) -> dict[str, str]:
    """A site config whose state and image folders are FOLDER's, for purging: a purge with the
    host's own config would remove the host's real images. JOB_RECORDED: its ledger records one."""
    state, images = folder / "state", folder / "images"
    (images / "minimal").mkdir(parents=True)
    (images / "minimal" / "vmlinux").write_bytes(b"x")
    state.mkdir()
    config = folder / "site.toml"
    config.write_text(f'state_dir = "{state}"\nimage_dir = "{images}"\n', encoding="utf-8")
    if job_recorded:
        db = sqlite3.connect(state / "ledger.sqlite3")
        db.execute("CREATE TABLE owner (kind TEXT, owner_id TEXT, status TEXT)")
        db.execute("INSERT INTO owner VALUES ('job', 'sd-run-1@x#1.0#1', 'active')")
        db.commit()
        db.close()
    return {**ENV, "SD_BATCH_CONFIG": str(config)}


def purge_and_restore(scratch: Path) -> None:
    """Leave the host as it was: no package, the checkout's set-up back in force."""
    if package_status():
        folder = Path(tempfile.mkdtemp(dir=scratch))
        run(*APT, "purge", "sd-batch", env=throwaway_config(folder, job_recorded=False))
    restore = os.environ.get("SD_BATCH_RESTORE_SETUP_HOST", str(ROOT / "scripts" / "setup-host"))
    done = run(restore, "--no-guest", env={**ENV, "PATH": os.environ.get("PATH", ENV["PATH"])})
    assert done.returncode == 0, f"{restore} --no-guest failed:\n{done.stdout}\n{done.stderr}"


def rebuilt_tree(target: Path, version: str) -> Path:
    """A copy of the checkout whose every module refuses a process of another version."""
    listed = run(
        "git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"
    ).stdout.split("\0")
    for name in filter(None, listed):
        source, copy = ROOT / name, target / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(source.readlink())
        elif source.is_file():
            shutil.copy2(source, copy)
    for module in (target / "sd_batch").rglob("*.py"):
        if module != target / "sd_batch" / "__init__.py":
            with open(module, "a", encoding="utf-8") as out:
                out.write(GUARD.format(version=version))
    return target


def build_deb(source: Path, out: Path, *version: str) -> Path:
    done = run(source / "scripts" / "build-deb", "--out", out, *version, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"lintian: 0 errors", done.stdout), done.stdout
    (deb,) = out.glob(f"sd-batch_{version[-1] if version else '*'}_*.deb")
    return deb


def job_folder(scratch: Path, name: str, files: dict[str, str]) -> Path:
    folder = scratch / name
    folder.mkdir()
    folder.chmod(0o755)
    for file, text in files.items():
        (folder / file).write_text(text, encoding="utf-8")
    for script in folder.glob("*.sh"):
        script.chmod(0o755)
    return folder


def hello(scratch: Path, name: str) -> None:
    """The README's job, through the installed `sd run` (/usr/bin/sd)."""
    files = ("hello.sub", "hello.sh", "greeting.txt")
    texts = {f: (EXAMPLES / f).read_text(encoding="utf-8") for f in files}
    folder = job_folder(scratch, name, texts)
    done = run("/usr/bin/sd", "run", "hello.sub", cwd=folder, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "this ran in a VM" in (folder / "hello.out").read_text(encoding="utf-8")
    assert (folder / "result.txt").is_file()


@pytest.fixture
def scratch() -> Iterator[Path]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="sd-package-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        try:
            purge_and_restore(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.qemu
def test_the_debian_package_installs_runs_a_job_upgrades_under_a_job_and_goes_away(
    scratch: Path,
) -> None:
    old_deb = build_deb(ROOT, scratch / "dist")
    new_deb = build_deb(
        rebuilt_tree(scratch / "src-new", NEW_VERSION), scratch / "dist", "--version", NEW_VERSION
    )

    # install: the host is set up from the package, and the README's job runs from it
    installed = run(*APT, "install", "--no-install-recommends", old_deb)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "setup-host: ready" in installed.stdout
    old_version = package_status().split()[0]
    assert package_status() == f"{old_version} ii"
    helper = (
        INSTALL
        / "lib"
        / "python3.11"
        / "site-packages"
        / "sd_batch"
        / "data"
        / "condor_hooks"
        / "helper"
    )
    assert f"NOPASSWD: {helper}" in SUDOERS.read_text(encoding="utf-8")
    assert run("visudo", "-cf", SUDOERS).returncode == 0
    assert "SMARTDOMAINS_HOME = /usr/lib/sd-batch" in DROP_IN.read_text(encoding="utf-8")
    old_pid = service_pid()
    assert cmdline(old_pid).startswith(f"{INSTALL}/bin/python -I -m sd_batch.helper.service")
    assert SOCKET.is_socket()
    hello(scratch, "hello-1")

    # upgrade while a VM job runs: it ends well, on the old service, which then goes
    slow = job_folder(
        scratch, "slow", {"slow.sub": SLOW_SUB, "slow.sh": SLOW_SH.format(seconds=90)}
    )
    with open(scratch / "slow.progress", "w+", encoding="utf-8") as progress:
        job = subprocess.Popen(
            ["/usr/bin/sd", "run", "slow.sub"],
            cwd=slow,
            env=ENV,
            stdout=progress,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 240
            while "running runner" not in (scratch / "slow.progress").read_text():
                assert job.poll() is None, (scratch / "slow.progress").read_text()
                assert time.monotonic() < deadline, "the slow job's VM never started"
                time.sleep(0.5)
            upgraded = run(*APT, "install", "--no-install-recommends", new_deb)
            assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
            assert job.poll() is None, "the job ended before the upgrade did: lengthen it"
            assert package_status() == f"{NEW_VERSION} ii"
            assert "restarted: its code changed" in upgraded.stdout
            new_pid = service_pid()
            assert new_pid != old_pid and cmdline(new_pid).startswith(f"{INSTALL}/bin/python")
            assert "sd_batch.helper.service" in cmdline(old_pid), "the old service did not drain"
            assert job.wait(timeout=300) == 0, (scratch / "slow.progress").read_text()
        finally:
            if job.poll() is None:
                job.send_signal(signal.SIGTERM)
                job.wait(timeout=120)
    assert (slow / "slow.txt").read_text(encoding="utf-8") == "survived the upgrade\n"
    for _ in range(100):
        if not cmdline(old_pid):
            break
        time.sleep(0.1)
    assert not cmdline(old_pid), "the old service still runs after its last job"
    hello(scratch, "hello-2")  # and the new version takes new jobs

    # remove: no service, socket, sudoers rule, drop-in or code left
    with open(DROP_IN, "a", encoding="utf-8") as conf:
        conf.write(SITE_EDIT)  # an admin's change to a conffile
    removed = run(*APT, "remove", "sd-batch")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert package_status() == f"{NEW_VERSION} rc"
    assert installed_processes() == []
    for path in (SOCKET, PIDFILE, SUDOERS, DROP_IN, INSTALL, Path("/usr/bin/sd")):
        assert not path.exists(), f"{path} is left after apt remove"

    # reinstalled after the removal: the conffiles come back with the admin's change, jobs run
    again = run(*APT, "install", "--no-install-recommends", new_deb)
    assert again.returncode == 0, again.stdout + again.stderr
    assert package_status() == f"{NEW_VERSION} ii"
    assert DROP_IN.read_text(encoding="utf-8").endswith(SITE_EDIT)
    assert run("visudo", "-cf", SUDOERS).returncode == 0
    assert SOCKET.is_socket()
    for aside in (
        SUDOERS.with_name(".sd-batch.removed"),
        DROP_IN.with_name(".99-smartdomains.conf.removed"),
    ):
        assert not aside.exists(), f"{aside} is left after the reinstall"
    hello(scratch, "hello-3")
    removed = run(*APT, "remove", "sd-batch")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert installed_processes() == []

    # purge while the (site config's) ledger still records a job: its folders stay, and it says so
    recorded = throwaway_config(scratch / "busy", job_recorded=True)
    purged = run(*APT, "purge", "sd-batch", env=recorded)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert "its ledger still records 1 job" in purged.stdout + purged.stderr
    assert (scratch / "busy" / "state").is_dir() and (scratch / "busy" / "images").is_dir()
    assert package_status() == ""
    for path in (
        SUDOERS.with_name(".sd-batch.removed"),
        DROP_IN.with_name(".99-smartdomains.conf.removed"),
        WANTS,
    ):
        assert not path.is_symlink() and not path.exists(), f"{path} is left after apt purge"

    # ...and when nothing is recorded, the same postrm removes both folders
    control = scratch / "control"
    assert run("dpkg-deb", "-e", new_deb, control).returncode == 0
    idle = throwaway_config(scratch / "idle", job_recorded=False)
    cleared = run(control / "postrm", "purge", env=idle)
    assert cleared.returncode == 0, cleared.stderr
    assert not (scratch / "idle" / "state").exists()
    assert not (scratch / "idle" / "images").exists()


def test_the_services_systemd_unit_is_valid_and_hands_runs_over(tmp_path: Path) -> None:
    """The unit as setup-host and debian/rules install it (@PYTHON@ made a real Python):
    systemd's own checker accepts it (no systemd needs to run for that), and it stops the
    service with --on-stop handover, because systemd's restart stops the old service before
    it starts the new (tests/test_service_restart_e2e.py runs a job across a handover)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "sd-batch-helper.service"
    text = (DATA / "condor_hooks" / "sd-batch-helper.service").read_text(encoding="utf-8")
    unit.write_text(text.replace("@PYTHON@", sys.executable), encoding="utf-8")
    checked = run(analyze, "verify", unit, env={**ENV, "SYSTEMD_LOG_LEVEL": "notice"})
    assert (checked.returncode, checked.stderr) == (0, ""), checked.stderr
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit.read_text(encoding="utf-8"), re.M)
    argv = exec_start.split()
    assert argv[:4] == [sys.executable, "-I", "-m", "sd_batch.helper.service"]
    assert argv[4:] == ["--on-stop", "handover"]
    helped = run(*argv, "--help", env={**os.environ})
    assert helped.returncode == 0 and "handover" in helped.stdout, helped.stderr
