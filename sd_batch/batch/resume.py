"""Saving an evicted job's VM into a checkpoint, and resuming it at the next start (issue 18).

The privileged side of `batch.checkpoint`: which files a job's VM has, what identity its
checkpoint carries (read from the domain's own XML, so that saving and checking agree), the
save when the runner says the job is being vacated, the check-and-unpack at PREPARE_JOB, and
the restore in place of a boot at `run`. Every file lives in the job's root-owned folder; the
checkpoint travels through the runner (the slot user) into the sandbox and back.
May import: config, errors, hypervisor, ledger, batch.key, batch.checkpoint, batch.confined,
stdlib.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..config.site import SiteConfig
from ..errors import CheckpointUnusable, SdError
from ..hypervisor.types import HypervisorAPI
from . import checkpoint
from .confined import ChildLimits, run_confined
from .key import JobKey, JobLimits

log = logging.getLogger(__name__)

#: The confined child's CPU and wall seconds to check and inflate a checkpoint (a 1 GiB
#: guest's took 0.6 s on a loaded 2-core host).
UNPACK_SECONDS = 300
CHECKPOINT_SETTINGS = (
    "256 MiB per checkpoint",
    "300 CPU seconds per checkpoint",
    "300 s per checkpoint",
)

SAVED_STATE = "saved.state"  # virDomainSave's file, in the job folder
PACKED = "checkpoint.out"  # the packed checkpoint on its way to the runner
RESTORE_NOTE = "restore.json"  # PREPARE_JOB unpacked a checkpoint: `run` restores
INPUT_DISK = "input.img"  # made afresh from the sandbox: never in a checkpoint


@dataclass(frozen=True, slots=True)
class Evicted:
    """What `jobs.run` ends with when the job was vacated: the packed checkpoint, or why none."""

    path: Path | None
    size: int = 0
    reason: str = ""


def job_disks(xml: str, folder: Path) -> dict[str, Path]:
    """The VM's disks in its job folder (output disk, overlays), by file name; not the input."""
    disks = {}
    for source in ET.fromstring(xml).iterfind("./devices/disk/source"):
        path = Path(source.get("file") or "")
        if path.parent == folder and path.name != INPUT_DISK:
            disks[path.name] = path
    return disks


def identity(config: SiteConfig, key: JobKey, xml: str, description: str) -> checkpoint.Identity:
    root = ET.fromstring(xml)
    memory = root.find("./memory")
    kib = int(memory.text or 0) if memory is not None else 0
    if memory is not None and memory.get("unit", "KiB") not in ("KiB", "k"):
        raise CheckpointUnusable(f"unexpected memory unit {memory.get('unit')} in the domain")
    vcpu = root.find("./vcpu")
    return checkpoint.Identity(
        job_id=key.job_id,
        description=description,
        flavour=str(root.get("type")),
        memory_mib=kib >> 10,
        vcpus=int(vcpu.text or 1) if vcpu is not None else 1,
        images=checkpoint.image_digests(xml, config.image_dir),
    )


def save_state(hv: HypervisorAPI, domain: str, folder: Path) -> None:
    """Pause the job's VM DOMAIN and save its memory to the job folder (the runner said:
    vacated)."""
    hv.save(domain, folder / SAVED_STATE)  # type: ignore[attr-defined]


def pack_saved(
    config: SiteConfig,
    key: JobKey,
    xml: str,
    description: str,
    limits: JobLimits,
    domain: str | None = None,
) -> Evicted:
    """The saved state and the disks as one checkpoint file, or why there is none. A job on
    a warm VM (DOMAIN, not its own name) has that VM's disks in the warm VM's folder too."""
    folder = key.folder(config)
    state = folder / SAVED_STATE
    started = time.monotonic()
    warm = (
        [folder.parent / domain.removeprefix("sd-job-")] if domain and domain != key.domain else []
    )
    try:
        files = {checkpoint.STATE: state, **job_disks(xml, folder)}
        for other in warm:
            files.update(job_disks(xml, other))
        size = checkpoint.pack(
            folder / PACKED,
            identity(config, key, xml, description),
            files,
            key=checkpoint.site_key(config.state_dir),
            folder=folder,
            limit=limits.policy.max_checkpoint_bytes,
        )
    except (SdError, OSError) as exc:
        return Evicted(None, reason=str(exc))
    finally:
        state.unlink(missing_ok=True)
    log.info(
        "job %s: checkpoint packed in %.2f s: %d bytes",
        key.job_id,
        time.monotonic() - started,
        size,
    )
    return Evicted(folder / PACKED, size)


def unpack_into_job(
    config: SiteConfig,
    key: JobKey,
    hv: HypervisorAPI,
    stream: IO[bytes],
    description: str,
    limits: JobLimits,
    domain: str | None = None,
) -> None:
    """Check the checkpoint STREAM against the prepared VM (DOMAIN, default the job's own
    name: defined, or paused and never run) and unpack it into the job's folder; `run` then
    restores instead of booting. Every refusal is a `CheckpointUnusable`, and the prepared VM
    is left as it was (a fresh start)."""
    folder = key.folder(config)
    xml = hv.domain_xml(domain or key.domain)  # type: ignore[attr-defined]
    disks = job_disks(xml, folder)
    mine = identity(config, key, xml, description)
    targets: dict[str, tuple[Path, int]] = {  # the save file: at most the VM's memory and more
        checkpoint.STATE: (
            folder / f".restore-{SAVED_STATE}",
            mine.memory_mib * 1024**2 + checkpoint.STATE_SLACK,
        ),
    }
    for name, path in disks.items():
        size = max(path.stat().st_size, hv.image_capacity(path))
        targets[name] = (folder / f".restore-{name}", size + checkpoint.STATE_SLACK)
    started = time.monotonic()
    arrived = folder / ".restore-checkpoint"
    try:
        # as it came, unparsed (bounded); then read, checked and inflated in a confined child
        limit = limits.policy.max_checkpoint_bytes
        checkpoint.copy_bounded(stream, arrived, limit)
        biggest = max(bound for _path, bound in targets.values())
        restored = run_confined(
            checkpoint.unpack_file,
            (arrived, mine, targets, checkpoint.site_key(config.state_dir), limit),
            ChildLimits(
                memory_mib=256,
                cpu_seconds=UNPACK_SECONDS,
                wall_seconds=UNPACK_SECONDS,
                file_mib=(biggest >> 20) + 1,
                what="the job's checkpoint",
                doing="to unpack",
                settings=CHECKPOINT_SETTINGS,
            ),
        )
        if restored.old_folder.strip("/") == "" or "'" in restored.old_folder:
            raise CheckpointUnusable("the checkpoint names an impossible folder")
        for name in restored.members:
            final = folder / (SAVED_STATE if name == checkpoint.STATE else name)
            targets[name][0].replace(final)
        (folder / RESTORE_NOTE).write_text(json.dumps({"old_folder": restored.old_folder}))
        log.info(
            "job %s: checkpoint checked and unpacked in %.2f s",
            key.job_id,
            time.monotonic() - started,
        )
    finally:
        arrived.unlink(missing_ok=True)
        for temporary, _bound in targets.values():
            temporary.unlink(missing_ok=True)


def restoring(config: SiteConfig, key: JobKey) -> bool:
    """Whether PREPARE_JOB unpacked a checkpoint `run` restores (`restore_or_start`)."""
    folder = key.folder(config)
    return (folder / RESTORE_NOTE).is_file() and (folder / SAVED_STATE).is_file()


def saved_name(config: SiteConfig, key: JobKey, hv: HypervisorAPI) -> str | None:
    """The name the unpacked checkpoint's VM had (and is restored under), or None when there
    is none to restore (`restoring`)."""
    if not restoring(config, key):
        return None
    xml = hv.saved_xml(key.folder(config) / SAVED_STATE)  # type: ignore[attr-defined]
    return ET.fromstring(xml).findtext("name") or None


def restore_or_start(
    config: SiteConfig, key: JobKey, hv: HypervisorAPI, domain: str | None = None
) -> bool:
    """Start the job's VM (DOMAIN: a warm VM it took, default its own name): from its unpacked
    checkpoint when PREPARE_JOB left one (True; it then runs under the name it was saved
    with, `saved_name`: libvirt's ABI check refuses another name, and a VM saved from a warm
    VM had that one's), else booted or resumed (False). The saved XML gets this host's paths
    (the files of the saving VM's folders land in this job's folder); its name and UUID stay,
    and the prepared definition gives way to the restored domain."""
    domain = domain or key.domain
    folder = key.folder(config)
    note, state = folder / RESTORE_NOTE, folder / SAVED_STATE
    if not (note.is_file() and state.is_file()):
        hv.start_or_resume(domain)  # resumed when it was started paused (or warm) ahead
        return False
    # The service may have started the prepared VM paused after PREPARE_JOB: it never ran, and
    # the checkpoint's memory replaces it.
    hv.destroy(domain)
    prepared = hv.domain_xml(domain)  # type: ignore[attr-defined]
    try:
        old = str(json.loads(note.read_text())["old_folder"]).rstrip("/")
        xml = hv.saved_xml(state)  # type: ignore[attr-defined]
        # its job folder, and the folder of a warm VM it had taken, are this job's folder here
        parent = re.escape(old.rsplit("/", 1)[0])
        xml = re.sub(rf"{parent}/[0-9a-f]{{16}}/", lambda _m: f"{folder}/", xml)
        xml = xml.replace(f"{old}/", f"{folder}/")
        name = ET.fromstring(xml).findtext("name") or key.domain
        hv.undefine(domain)
        try:  # persistent, as PREPARE_JOB defines it: it stays there, off, for the result
            hv.define(xml)
            hv.restore(state, xml)  # type: ignore[attr-defined]
        except SdError:
            hv.undefine(name)
            hv.define(prepared)  # the job's VM as PREPARE_JOB made it, for the next try
            raise
        return True
    except (SdError, OSError, ValueError, KeyError) as exc:
        # its disks are the checkpoint's now: no fresh boot on them, the job runs again
        raise CheckpointUnusable(
            f"the job's checkpoint could not be restored ({exc}); the "
            "job goes back to Idle and starts afresh"
        ) from exc
    finally:
        note.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            state.unlink()
