"""What a job's VM is: its SDVMDescription resolved from the job's own input disk (a site
template, or a .sf file of its sandbox), then checked against site policy on the resolved tree.

Root side, called by `jobs.prepare`; split from it so each stays readable. Nothing here trusts
the caller: the job ad is read back from the input disk and must name the caller's job; user
files may include only each other and site templates; only regular .sf files are copied out.
The job's requests (`request_memory`...) and its slot (the starter's machine ad, which the hook
puts on the input disk) come back with it: `vm.sizing` makes the VM the slot.
May import: config, errors, guest.contract, condor.jobad, lang, staging, vm, batch.key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..config.site import SiteConfig
from ..errors import PolicyError, StagingError
from ..guest import contract
from ..lang import Attribute, Component, Description, load_file
from ..vm.site_policy import SitePolicy, check_job, closest_template
from ..vm.sizing import Resources, check_requests, size_vm
from ..vm.spec import VMSpec, vm_spec

if TYPE_CHECKING:
    from .key import JobKey, JobLimits

SF_PATH = re.compile(r"[A-Za-z0-9_.+-][A-Za-z0-9_.+/-]{0,254}\.sf")


@dataclasses.dataclass(frozen=True, slots=True)
class JobAsks:
    """What a job asks for: its resolved description (by the NAME it gave), its requests, and
    the slot HTCondor gave it (None: no machine ad)."""

    description: Description
    name: str
    requests: Resources
    slot: Resources | None


def resolve_job(
    config: SiteConfig, key: JobKey, input_path: Path, folder: Path, limits: JobLimits
) -> tuple[VMSpec, str, Resources | None]:
    """The job's VM, its SDVMDescription's name and its slot, from its input disk: all the
    untrusted work of a PREPARE_JOB, in one call `jobs.prepare` runs in a confined child
    (`batch.confined`)."""
    check_input_tar(input_path)
    asks = job_description(config, key, input_path, folder, limits)
    return job_spec(config, asks, key, limits.policy), asks.name, asks.slot


def check_input_tar(input_path: Path) -> None:
    """Every header of the input tar checked (`staging.tarscan`: no vulnerable parsing of
    PAX headers by tarfile), and its first member our marker: anything else is no input of
    ours (a hold, with what it is)."""
    from ..staging.tarscan import TarScan

    fd = os.open(input_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        scan = TarScan(fd, os.fstat(fd).st_size, "the job's input disk")
        members = scan.members()
        first = next(members, None)
        if first is None or first.name != contract.INPUT_MARKER or not first.isreg():
            raise StagingError(
                "the job's input disk is not an sd-batch input (its first member "
                f"is {'none' if first is None else repr(first.name[:80])}, "
                f"not {contract.INPUT_MARKER})"
            )
        for _member in members:
            pass
    finally:
        os.close(fd)


def job_description(
    config: SiteConfig, key: JobKey, input_path: Path, folder: Path, limits: JobLimits
) -> JobAsks:
    """Resolve the job's SDVMDescription: a site template, or a .sf file from its own sandbox.
    Requests over site policy are refused first, before anything is resolved."""
    try:
        return _job_description(config, key, input_path, folder, limits)
    except tarfile.TarError as exc:
        raise StagingError(f"the job's input disk is not a readable tar: {exc}") from exc


def _job_description(
    config: SiteConfig, key: JobKey, input_path: Path, folder: Path, limits: JobLimits
) -> JobAsks:
    from ..condor.jobad import job_resources, parse_job_ad

    with tarfile.open(input_path, mode="r:") as tar:
        ad_text = _read_member(tar, contract.JOB_AD_MEMBER, 1024**2)
        if ad_text is None:
            raise StagingError("the job's input disk has no job ad")
        ad = parse_job_ad(ad_text.decode("utf-8", "replace"))
        if ad.global_job_id != key.job_id:
            raise PolicyError(f"the job ad is for {ad.global_job_id}, not {key.job_id}")
        machine = _read_member(tar, contract.MACHINE_AD_MEMBER, 1024**2)
        requests, slot = job_resources(
            ad, None if machine is None else machine.decode("utf-8", "replace")
        )
        check_requests(requests, limits.policy)
        description, name = _resolve(config, ad.vm_description(), tar, folder, limits)
    return JobAsks(description, name, requests, slot)


def _resolve(
    config: SiteConfig, name: str | None, tar: tarfile.TarFile, folder: Path, limits: JobLimits
) -> tuple[Description, str]:
    """The description NAME names; a job's own .sf files are copied out of TAR first."""
    from ..config.templates import find_template

    if not name:
        raise PolicyError(
            "the job has no SDVMDescription",
            hint='add +SDVMDescription = "minimal" (a site template) to the submit file',
        )
    search = [*config.include_dirs, *config.template_dirs]
    props = dict(config.properties)
    budgets = limits.policy.budgets  # the site's [policy] bounds a job's description
    if not name.endswith(".sf"):
        return load_file(
            find_template(name, config),
            include_dirs=search,
            properties=props,
            environ=None,
            budgets=budgets,
        ), name
    if not limits.policy.allow_user_descriptions:
        raise PolicyError(
            f"this site does not run job descriptions of their own ({name})",
            hint="name a site template instead (sd templates lists them)",
        )
    if not SF_PATH.fullmatch(name) or ".." in PurePosixPath(name).parts:
        raise PolicyError(
            f"SDVMDescription {name!r} must be a relative path inside the job's sandbox",
            hint="list the file in transfer_input_files",
        )
    root = folder / "description"
    _extract_descriptions(tar, root, limits)
    path = root / name
    if not path.is_file():
        raise PolicyError(
            f"SDVMDescription {name} is not among the job's input files",
            hint="list the .sf file in transfer_input_files",
        )
    # user files may include each other (from their own folder) and site templates, nothing else
    return load_file(
        path,
        include_dirs=search,
        properties=props,
        environ=None,
        display_root=root,
        budgets=budgets,
    ), name


def _read_member(tar: tarfile.TarFile, name: str, limit: int) -> bytes | None:
    try:
        member = tar.getmember(name)
    except KeyError:
        return None
    if not member.isreg() or member.size > limit:
        raise StagingError(f"input member {name} is not a small regular file")
    handle = tar.extractfile(member)
    if handle is None:
        raise StagingError(f"input member {name} has no data")
    return handle.read()


def _extract_descriptions(tar: tarfile.TarFile, root: Path, limits: JobLimits) -> None:
    """Copy the sandbox's .sf files (regular files only) into a root-owned folder."""
    count = total = 0
    for member in tar.getmembers():
        if not member.name.startswith(contract.SANDBOX_PREFIX) or not member.name.endswith(".sf"):
            continue
        relative = member.name[len(contract.SANDBOX_PREFIX) :]
        if not member.isreg() or not SF_PATH.fullmatch(relative) or ".." in relative.split("/"):
            continue
        count, total = count + 1, total + member.size
        if count > limits.max_description_files or total > limits.max_description_bytes:
            raise PolicyError(
                "too many or too large .sf files in the job's sandbox",
                hint=f"at most {limits.max_description_files} files",
            )
        target = root / relative
        handle = tar.extractfile(member)
        if handle is None:
            raise StagingError(f"input member {member.name} has no data")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise PolicyError(
                f"the job's sandbox has {relative!r}, which conflicts with "
                "another of its .sf files (a file and a folder of one name)",
                hint="rename one of them",
            ) from exc
        with os.fdopen(fd, "wb") as out:
            out.write(handle.read())


def job_spec(config: SiteConfig, asks: JobAsks, key: JobKey, policy: SitePolicy) -> VMSpec:
    """The job's VM, checked against site policy on the resolved tree (`policy.check_job`),
    then sized to its slot (`sizing.size_vm`)."""
    description, name = asks.description, asks.name
    vm = description.sfconfig
    if vm is None or vm.get("sfClass") != "sd_batch.VM":
        raise PolicyError(
            "a job's description must have one VM as its sfConfig",
            hint="write sfConfig extends VM { ... } (or extend a site template's VM)",
        )
    spec = dataclasses.replace(vm_spec(vm, default_name=key.domain), name=key.domain)
    own = name.endswith(".sf")  # else a site template: its own VM is the template's
    template = _extended_template(config, description, spec, key, policy) if own else spec
    check_job(description, spec, template, policy)
    return size_vm(spec, asks.requests, asks.slot, named(name))


def named(name: str) -> str:
    """How messages name what a job asked for: its own file, or a site template."""
    return name if name.endswith(".sf") else f"the site template {name}"


def _extended_template(
    config: SiteConfig, description: Description, spec: VMSpec, key: JobKey, policy: SitePolicy
) -> VMSpec | None:
    """The VM of the site template a job's own description includes (the closest, if several).

    Each is resolved again from the site's own folder, as a job naming it would get it; a job's
    files are named relative to its sandbox, so only absolute names can be site templates. A
    template's TBD fields are the user's to fill: they take the job's values before comparing.
    """
    folders = [folder.resolve() for folder in config.template_dirs]
    found: list[VMSpec] = []
    for shown in description.files:
        path = Path(shown)
        if not path.is_absolute() or path.suffix != ".sf":
            continue
        real = path.resolve()
        if not real.is_file() or not any(real.is_relative_to(f) for f in folders):
            continue
        loaded = load_file(
            real,
            include_dirs=[*config.include_dirs, *config.template_dirs],
            properties=dict(config.properties),
            environ=None,
            complete=False,
            budgets=policy.budgets,
        )
        template = loaded.sfconfig
        if template is None or template.get("sfClass") != "sd_batch.VM":
            continue
        for tbd, _loc in loaded.tbds:  # the fields the template leaves to its users
            _fill(template, description.sfconfig, tbd)
        found.append(
            dataclasses.replace(vm_spec(template, default_name=key.domain), name=key.domain)
        )
    return closest_template(spec, found)


def _fill(template: Component, job: Component | None, path: str) -> None:
    """Give the template's TBD attribute PATH the job's value (the job's tree is not touched)."""
    *parents, name = path.split(":")
    holder: object = template.root()
    source: object = job.root() if job is not None else None
    for part in parents:
        holder = holder.get(part) if isinstance(holder, Component) else None
        source = source.get(part) if isinstance(source, Component) else None
    if isinstance(holder, Component) and isinstance(source, Component) and name in source:
        holder.attributes[name] = Attribute(name, source[name], source.location_of(name))
