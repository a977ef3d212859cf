"""Which failures of `jobs.prepare` are the host's storage (the job goes back to Idle, the site
told to fix its disk) and which are not (they surface as themselves, their file named).

A full, read-only or failing state_dir is no fault of the job: `HostStorageError`, requeued.
Any other OSError writing the job's files (EACCES, ENOENT of a file sd made, a path that is
not a folder) is a bug or another host fault, and blaming the disk for it would send the site
looking in the wrong place: it stays what it is. Real prepares on libvirt's test driver, and
the classifier itself for the errnos no test host can produce on demand.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from sd_batch.batch.jobs import _storage_failure
from sd_batch.errors import Disposition, HostStorageError, StagingError
from sd_batch.helper.hooks import HookStatus, status_for

from conftest import MINIMAL, JobSite, job_site

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("classad2", reason="the htcondor bindings are not installed")

FOLDER = Path("/var/lib/sd-batch/jobs/0123abcd")
STORAGE = [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.ESTALE]
NOT_STORAGE = [errno.EACCES, errno.ENOENT, errno.ENOTDIR, errno.EPERM, errno.ECONNRESET]


site = job_site  # conftest's fixture, as `site` here


def _os_error(number: int, filename: str | None = None) -> OSError:
    return OSError(number, os.strerror(number), filename)


def _raised_from(error: StagingError, cause: OSError) -> StagingError:
    """ERROR as staging code raises it: `raise ERROR from CAUSE`."""
    try:
        raise error from cause
    except StagingError as raised:
        return raised


# --- the host's storage: requeued, the site told what to fix -------------------------------------
@pytest.mark.parametrize("number", STORAGE, ids=errno.errorcode.get)
def test_a_disk_that_cannot_take_the_files_is_host_storage(number: int) -> None:
    error = _storage_failure(_os_error(number, str(FOLDER / "input.img")), FOLDER)
    assert isinstance(error, HostStorageError)
    assert error.disposition is Disposition.REQUEUE
    assert status_for(error)[0] is HookStatus.REQUEUE
    assert error.message == (
        f"the worker cannot write the job's files in {FOLDER.parent}: "
        f"{os.strerror(number)}: {FOLDER / 'input.img'}"
    )
    assert error.hint is not None and error.hint.startswith("the site must ")


@pytest.mark.parametrize("number", STORAGE, ids=errno.errorcode.get)
def test_a_staging_error_a_full_or_failing_disk_caused_is_host_storage(number: int) -> None:
    staging = _raised_from(StagingError("cannot create the output disk"), _os_error(number))
    error = _storage_failure(staging, FOLDER)
    assert isinstance(error, HostStorageError)
    assert os.strerror(number) in error.message


def test_the_hint_fits_the_failure() -> None:
    full = _storage_failure(_os_error(errno.ENOSPC), FOLDER)
    read_only = _storage_failure(_os_error(errno.EROFS), FOLDER)
    assert full is not None and "free space in its state_dir" in str(full)
    assert read_only is not None and "mounted read-only" in str(read_only)
    assert "free space" not in str(read_only)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_state_dir_requeues_the_job_and_leaves_nothing(site: JobSite) -> None:
    config = site.write_config()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=2M", "sd-full", str(config.state_dir)]
    subprocess.run(mount, check=True)
    try:
        filler = "# " + "x" * (3 << 20) + "\n"  # the input disk is larger than the state dir
        with pytest.raises(HostStorageError) as caught:
            site.prepare(config, '"my.sf"', filler + MINIMAL + "}\n")
        assert caught.value.disposition is Disposition.REQUEUE
        assert "No space left on device" in caught.value.message
        assert isinstance(caught.value.__cause__, OSError)  # the real error, kept for the log
        assert site.leftovers(config) == []
    finally:
        subprocess.run(["umount", str(config.state_dir)], check=False)


# --- everything else: itself, its file named, never blamed on the disk -----------------------
@pytest.mark.parametrize("number", NOT_STORAGE, ids=errno.errorcode.get)
def test_other_os_errors_are_not_host_storage(number: int) -> None:
    assert _storage_failure(_os_error(number, str(FOLDER / "input.img")), FOLDER) is None


@pytest.mark.parametrize("number", NOT_STORAGE, ids=errno.errorcode.get)
def test_a_staging_error_with_another_cause_stays_a_staging_error(number: int) -> None:
    staging = _raised_from(StagingError("cannot open the output disk"), _os_error(number))
    assert _storage_failure(staging, FOLDER) is None


def test_a_host_storage_error_is_not_wrapped_again() -> None:
    storage = _raised_from(HostStorageError("the worker cannot write"), _os_error(errno.ENOSPC))
    assert _storage_failure(storage, FOLDER) is None  # prepare raises it as it is


def test_a_job_folder_that_cannot_be_made_surfaces_as_itself_naming_it(site: JobSite) -> None:
    """Something not a folder where the job folders go (a host fault, not a full disk): the
    NotADirectoryError itself comes out of prepare, naming the path, and nothing is left."""
    config = site.write_config()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    (config.state_dir / "jobs").write_text("not a folder\n", encoding="utf-8")
    with pytest.raises(NotADirectoryError) as caught:
        site.prepare(config, '"minimal"')
    assert str(config.state_dir / "jobs") in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    code, message = status_for(caught.value)  # an internal error on the worker: back to Idle
    assert code is HookStatus.REQUEUE
    assert message.startswith("sd-batch: internal error on the worker: NotADirectoryError")
    assert site.leftovers(config) == []
