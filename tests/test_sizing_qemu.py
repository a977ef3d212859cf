"""The VM is the slot, seen from inside a real QEMU guest: `request_memory = 1024` and
`request_cpus = 2` give `nproc` 2 and a MemTotal within 10 % of 1024 MiB (the guest kernel
keeps the rest). Through `sd run` as tests/test_run_e2e.py runs jobs: the hooks as the slot
user `sdslot1`, real libvirtd and QEMU, the `minimal` guest.

The root side is a private helper service of THIS checkout (its socket given to the hooks
with `_CONDOR_SMARTDOMAINS_HELPER_SOCKET`, its own state dir), so the test needs no sudoers
rule for this checkout and never touches the system service other checkouts may run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_run_e2e import SD, SLOT_USER, TIMEOUT, Run, _read

from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, SYSTEM_CONFIG, load_config

pytestmark = pytest.mark.qemu

SIZED_SUB = """executable = sized.sh
output = job.out
error = job.err
request_memory = 1024
request_cpus = 2
+SDVMDescription = "minimal"
queue
"""
SIZED_SH = """#!/bin/sh
echo "nproc $(nproc)"
awk '/MemTotal/ { print "memtotal_kib " $2 }' /proc/meminfo
"""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (sd run drops to the slot user; the helper service is root's)"
    if subprocess.run(["id", SLOT_USER], capture_output=True, check=False).returncode != 0:
        return f"no slot user {SLOT_USER}: run scripts/setup-host"
    system = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    if not (system.image_dir / "minimal" / "vmlinux").is_file():
        return "the minimal guest is not built (scripts/build-guest)"
    if (
        subprocess.run(
            ["virsh", "-q", "-c", system.default_uri, "version"], capture_output=True, check=False
        ).returncode
        != 0
    ):
        return f"{system.default_uri} does not answer (scripts/setup-host starts libvirtd)"
    return None


@pytest.fixture
def private_site() -> Iterator[tuple[dict[str, str], Path]]:
    """A site of this checkout: the system's guest images and libvirtd, a state dir of its own,
    and a helper service of this checkout on a socket the slot group may use."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    system = load_config(SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None)
    root = Path(tempfile.mkdtemp(prefix="sd-sizing-"))
    root.chmod(0o755)  # the slot user reaches the socket below it
    (root / "run").mkdir(mode=0o755)
    config = root / "site.toml"
    config.write_text(
        f'image_dir = "{system.image_dir}"\nstate_dir = "{root / "state"}"\n'
        f'default_uri = "{system.default_uri}"\ntemplate_dirs = ["{BUILTIN_TEMPLATE_DIR}"]\n'
        '[properties]\n"sd.flavour" = "qemu"\n',
        encoding="utf-8",
    )
    sock = root / "run" / "helper.sock"
    log = (root / "service.log").open("ab")
    service = subprocess.Popen(
        [sys.executable, "-I", "-m", "sd_batch.helper.service", "--socket", str(sock)],
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": "/root",
            "SD_BATCH_CONFIG": str(config),
            "CONDOR_CONFIG": "/dev/null",
        },
        stdout=log,
        stderr=log,
    )
    log.close()
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sock.exists(), (root / "service.log").read_text(errors="replace")
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/root",
            "CONDOR_CONFIG": "/dev/null",
            "SD_BATCH_CONFIG": str(config),
            "_CONDOR_SMARTDOMAINS_HELPER_SOCKET": str(sock),
        }
        yield env, root
    finally:
        service.terminate()
        service.wait(timeout=120)
        leftovers = list((root / "state" / "jobs").glob("*")) if (root / "state").is_dir() else []
        shutil.rmtree(root, ignore_errors=True)
        assert leftovers == [], f"job folders left: {leftovers}"


def test_request_memory_and_cpus_are_what_the_guest_sees(
    tmp_path: Path, private_site: tuple[dict[str, str], Path]
) -> None:
    env, root = private_site
    (tmp_path / "sized.sub").write_text(SIZED_SUB, encoding="utf-8")
    (tmp_path / "sized.sh").write_text(SIZED_SH, encoding="utf-8")
    done = subprocess.run(
        [str(SD), "run", str(tmp_path / "sized.sub")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )
    run = Run(done.returncode, done.stdout, done.stderr)
    service_log = (root / "service.log").read_text(errors="replace")
    assert run.code == 0, run.out + run.err + _read(tmp_path / "job.err") + service_log
    assert "(minimal, 1024 MiB, 2 vCPUs)" in run.err  # sd run's progress line says the size
    seen = dict(line.split(" ", 1) for line in (tmp_path / "job.out").read_text().splitlines())
    assert seen["nproc"] == "2"
    memtotal_mib = int(seen["memtotal_kib"]) / 1024
    assert 0.9 * 1024 <= memtotal_mib <= 1024, memtotal_mib
    listed = subprocess.run(
        [
            "virsh",
            "-c",
            load_config(Path(env["SD_BATCH_CONFIG"])).default_uri,
            "list",
            "--all",
            "--name",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not set(run.domains) & set(listed)
    print(f"guest: nproc {seen['nproc']}, MemTotal {memtotal_mib:.0f} MiB")
