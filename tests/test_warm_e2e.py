"""End to end (real QEMU): jobs through a warm VM (`batch.warm`, issue 13).

A helper service of THIS checkout runs on a socket and a site of its own (its state folder
private, `[jobs] warm = ["minimal"]`), so what it leaves is told apart from other work on the
shared libvirtd. A job naming `minimal` takes the paused warm VM: its input and output disks are
plugged in before the guest ever ran, and the `minimal` guest finds them by serial as it does
cold-plugged ones. Checked: the job's inputs, outputs and exit code come back; a hold or remove
mid-run leaves nothing of the job (its domain is the warm VM's name) and the next warm VM waits;
stopping the service leaves no warm VM, file or ledger row.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_evict_e2e import COUNT_SH, COUNT_SUB, STEPS

from sd_batch.batch.warm import is_warm
from sd_batch.config.site import SYSTEM_CONFIG, load_config
from sd_batch.ledger.store import Ledger, ResourceKind

from conftest import (
    PrivateService,
    domain_state,
    qemu_host_missing,
    wait_until,
    write_site_toml,
)

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).resolve().parent.parent
SD = ROOT / ".venv" / "bin" / "sd"
PYTHON = ROOT / ".venv" / "bin" / "python"
SLOT_USER = "sdslot1"
TIMEOUT = 240.0
JOB_SH = "#!/bin/sh\ntr a-z A-Z < input.txt > result.txt\necho done\nexit 3\n"
JOB_SUB = """executable = job.sh
transfer_input_files = input.txt
output = job.out
error = job.err
+SDVMDescription = "minimal"
queue
"""
SLEEP_SUB = """executable = /bin/sleep
arguments = 120
transfer_executable = false
output = job.out
error = job.err
+SDVMDescription = "minimal"
queue
"""


class WarmService(PrivateService):
    """A private helper service on a site of its own (`[jobs] warm = ["minimal"]`)."""

    def __init__(self, folder: Path) -> None:
        config_file = _site_toml(folder)
        super().__init__(
            folder,
            environ={
                "PATH": "/usr/bin:/bin",
                "HOME": "/root",
                "CONDOR_CONFIG": "/dev/null",
                "SD_BATCH_CONFIG": str(config_file),
            },
        )
        self.config = load_config(config_file)

    def owners(self) -> dict[str, list[str]]:
        """Ledger owner id -> its domains."""
        with Ledger.for_site(self.config) as ledger:
            return {
                o.owner_id: [r.name for r in ledger.resources(o) if r.kind is ResourceKind.DOMAIN]
                for o in ledger.owners()
            }

    def warm_domain(self) -> str:
        """The idle warm VM, once the service has made it (and QEMU has it paused)."""

        def ready() -> str | None:
            said = re.findall(r"warm VM (\S+) of minimal: paused, ready", self.log())
            idle = {n for owner, names in self.owners().items() if is_warm(owner) for n in names}
            if said and said[-1] in idle and domain_state(said[-1]) == "paused":
                return str(said[-1])
            return None

        wait_until(ready, "a paused warm VM", seconds=TIMEOUT, every=0.2)
        found = ready()
        assert found is not None
        return found

    def assert_only_warm_left(self, gone: str) -> None:
        """GONE (a job's domain) is no more; the ledger and the job folders hold the idle warm
        VM at most."""
        assert gone not in _domains()
        owners = self.owners()
        assert all(is_warm(o) for o in owners), owners
        folders = {p.name for p in (self.config.state_dir / "jobs").iterdir()}
        warm = {n.removeprefix("sd-job-") for names in owners.values() for n in names}
        assert folders <= warm, f"job folders left: {folders - warm}"


def _domains() -> list[str]:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def _site_toml(folder: Path) -> Path:
    """The system site's hypervisor and images; state of its own; a warm `minimal` VM."""
    system = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    return write_site_toml(
        folder,
        system.default_uri,
        image_dir=system.image_dir,
        flavour=system.properties.get("sd.flavour", "qemu"),
        tables='[jobs]\nwarm = ["minimal"]\n',
    )


@pytest.fixture(scope="module")
def service() -> Iterator[WarmService]:
    reason = qemu_host_missing(SLOT_USER)
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="sd-warm-", dir="/run"))
    folder.chmod(0o755)
    made = WarmService(folder)
    try:
        made.start()
        yield made
    finally:
        made.stop(timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_job_through_the_warm_vm_gets_its_inputs_and_returns_outputs_and_exit_code(
    service: WarmService, tmp_path: Path
) -> None:
    warm = service.warm_domain()
    (tmp_path / "job.sh").write_text(JOB_SH)
    (tmp_path / "job.sh").chmod(0o755)
    (tmp_path / "input.txt").write_text("the input\n")
    (tmp_path / "job.sub").write_text(JOB_SUB)
    done = subprocess.run(
        [str(SD), "run", "job.sub"],
        cwd=tmp_path,
        env=service.environ(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 3, done.stderr + service.log()
    assert f"VM {warm} ready" in done.stderr, service.log()  # the warm VM
    assert (tmp_path / "result.txt").read_text() == "THE INPUT\n"
    assert (tmp_path / "job.out").read_text() == "done\n"
    service.assert_only_warm_left(warm)
    assert service.warm_domain() != warm  # the next one, made after the claim


@pytest.mark.parametrize(
    ("signum", "reason"), [(signal.SIGINT, "remove"), (signal.SIGUSR1, "hold")]
)
def test_a_warm_vm_job_held_or_removed_mid_run_leaves_nothing(
    service: WarmService, tmp_path: Path, signum: int, reason: str
) -> None:
    warm = service.warm_domain()
    (tmp_path / "sleep.sub").write_text(SLEEP_SUB)
    proc = subprocess.Popen(
        [str(SD), "run", "sleep.sub"],
        cwd=tmp_path,
        env=service.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if ": running " in line:
                break
        assert any(f"VM {warm} ready" in line for line in lines), "".join(lines)
        wait_until(lambda: domain_state(warm) == "running", f"{warm} running", seconds=TIMEOUT)
        time.sleep(1.0)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _out, rest = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, "".join(lines) + rest
    assert f"JOB_EXIT {reason}" in "".join(lines) + rest
    service.assert_only_warm_left(warm)


def test_an_evicted_job_on_a_warm_vm_resumes_where_it_stopped(
    service: WarmService, tmp_path: Path
) -> None:
    """Saved from the warm VM it took (under that VM's name), restored at its next start
    (into a warm VM or its own: the checkpoint's VM comes back under its saved name)."""
    warm = service.warm_domain()
    (tmp_path / "count.sub").write_text(COUNT_SUB)
    (tmp_path / "count.sh").write_text(COUNT_SH)
    done = subprocess.run(
        [str(SD), "run", "count.sub", "--evict-after", "10"],
        cwd=tmp_path,
        env=service.environ(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr + service.log()
    assert f"VM {warm} ready" in done.stderr
    assert "resumes from its checkpoint" in done.stderr, done.stderr + service.log()
    lines = (tmp_path / "count.txt").read_text().splitlines()
    started, *steps = (line.split() for line in lines)
    assert [int(s[1]) for s in steps] == list(range(1, STEPS + 1))  # each step once, in order
    assert {s[3] for s in steps} == {started[2]}  # one boot: the guest never booted again
    for domain in re.findall(r"VM (sd-job-[0-9a-f]+) ready", done.stderr):
        service.assert_only_warm_left(domain)


def test_stopping_the_service_leaves_no_warm_vm(service: WarmService) -> None:
    warm = service.warm_domain()
    assert service.stop(timeout=120) == 0
    assert warm not in _domains()
    assert service.owners() == {}
    assert list((service.config.state_dir / "jobs").iterdir()) == []
    assert re.search(rf"warm VM {warm} of minimal: removed", service.log())
