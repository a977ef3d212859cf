"""The README's main command from a fresh clone in a folder only root may enter.

A site admin clones as root into root's home (0700 on Debian) or a `mktemp -d` folder (0700), then
runs `scripts/quickstart`. The hooks run as the slot user, who cannot pass such a folder:
setup-host must grant the slot group traversal (x only) of it, or stop naming the folder, and the
job must then run in its VM. This clones the committed HEAD of this checkout (uncommitted changes
are not in the clone), runs its quickstart, and puts this checkout back in charge of the host
afterwards (setup-host points the sudoers rule and the helper service at the checkout it runs
from). Needs root, git, libvirtd and the built guest, as the other real-QEMU tests do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PATH": "/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin", "HOME": "/root", "LANG": "C.UTF-8"}
TIMEOUT = 900.0  # a new venv (pip, libvirt-python from pip's cache) and one boot on a busy host


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (quickstart sets the host up)"
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return "needs git and a git checkout to clone"
    if not Path("/etc/sudoers.d/sd-batch").is_file():
        return "the host is not set up (scripts/setup-host)"
    return None


@pytest.fixture
def private_clone() -> Iterator[Path]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    parent = Path(tempfile.mkdtemp(prefix="sd-quickstart-"))  # 0700, root's: as mktemp -d
    assert parent.stat().st_mode & 0o777 == 0o700
    clone = parent / "sd-batch"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, env=ENV)
    try:
        yield clone
    finally:
        # this checkout takes the host back: the sudoers rule and the helper service
        setup_host = [str(ROOT / "scripts" / "setup-host"), "--no-guest"]
        subprocess.run(setup_host, env=ENV, capture_output=True, check=False, timeout=TIMEOUT)
        shutil.rmtree(parent, ignore_errors=True)


def test_quickstart_runs_the_job_from_a_clone_only_root_may_enter(private_clone: Path) -> None:
    quickstart = [str(private_clone / "scripts" / "quickstart")]
    done = subprocess.run(
        quickstart, cwd=private_clone, env=ENV, capture_output=True, text=True, timeout=TIMEOUT
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "hello, world: this ran in a VM" in done.stdout, output[-4000:]
    assert "exit 0" in output
    # the one thing opened: the slot group may pass (not list) the private folder
    parent = private_clone.parent
    assert f"granted sd-slots traversal (x only) of {parent}" in done.stdout
    assert parent.stat().st_mode & 0o007 == 0  # others still may not enter
    getfacl = ["getfacl", "-cp", str(parent)]
    acl = subprocess.run(getfacl, capture_output=True, text=True, check=True).stdout
    assert {"group::---", "group:sd-slots:--x", "other::---"} <= set(acl.split())
