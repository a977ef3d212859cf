"""Site policy: what a batch job's VM may be, checked on the RESOLVED description.

Pure: a `SitePolicy` (the site config's `[policy]` table), a resolved description, its `VMSpec`
and the `VMSpec` of the site template it extends in; a `PolicyError` out that names the
attribute path, the limit and the `file:line:col` where the value was written.

The rule for a job's own description is the simplest we can argue is sound: it must extend a
site template, and its resolved VM may differ from that template's resolved VM only in memory,
vCPUs, the size of blank disks and (where the site allows networks) its network, each within
the site's limits. Everything else (flavour, kernel, initrd, cmdline, disk images, formats,
console, lifecycle actions) is the template's. Comparing resolved values, not text, means no
trick of the language (references, `extends` chains, operators, includes) gets around it.
Counting VMs (per user, per host) is done on numbers the caller reads from the ledger.
May import: errors, vm.spec, lang.model, stdlib.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, PolicyError, PolicyLimitReached, SourceLocation
from ..lang.budget import JOB_BUDGETS, POLICY_KEYS, Budgets
from ..lang.model import Component
from .spec import DiskSpec, KernelBoot, VMSpec

if TYPE_CHECKING:
    from ..lang import Description

GIB = 1024**3
MIB = 1024**2
#: What a job's own description may set differently from its site template.
OVERRIDABLE = ("memory", "vcpus", "the size of blank disks")


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """What a batch job may ask for. Every default is the safe choice for a shared worker."""

    #: Jobs may ship a description of their own (`+SDVMDescription = "my.sf"`).
    allow_user_descriptions: bool = True
    #: ... which must extend a site template and change only memory, vCPUs, blank disk sizes.
    require_site_template: bool = True
    max_memory_mib: int = 8192
    max_vcpus: int = 8
    #: Per blank disk a job asks for (base images are the site's own).
    max_disk_bytes: int = 64 * GIB
    #: Disks of one VM (overlays and blank ones), and the size of its blank disks together:
    #: without them a VM of its own (require_site_template = false) could ask for 300 x 64 GiB.
    max_disks: int = 8
    max_disk_total_bytes: int = 128 * GIB
    #: libvirt networks a job's VM may join; none: jobs get no network interface at all.
    networks: frozenset[str] = frozenset()
    #: Job VMs at once on one worker, per caller uid and in all.
    max_vms_per_user: int = 16
    max_vms_per_host: int = 32
    #: The job's input (its sandbox tar) and the output disk the guest writes its results to.
    max_input_bytes: int = 2 * GIB
    output_disk_bytes: int = 256 * MIB
    #: How long a job's VM may run before it is destroyed and the job held.
    max_run_seconds: int = 24 * 3600
    #: What reading a job's input and resolving its description may use on the root side
    #: (a child process's address space, CPU seconds and wall-clock time: `confined`).
    max_resolve_mib: int = 1024
    max_resolve_cpu_seconds: int = 30
    max_resolve_seconds: int = 60
    #: The most work resolving a job's description may cost (`max_components`... in [policy]).
    budgets: Budgets = JOB_BUDGETS
    #: An evicted job's checkpoint (saved memory + changed disks, compressed); a bigger one is
    #: not kept and the job starts afresh next time.
    max_checkpoint_bytes: int = 4 * GIB


_BOOLS = ("allow_user_descriptions", "require_site_template")
#: TOML key -> (field, multiplier, least value)
_NUMBERS = {
    "max_memory_mib": ("max_memory_mib", 1, 32),
    "max_vcpus": ("max_vcpus", 1, 1),
    "max_disk_gib": ("max_disk_bytes", GIB, 1),
    "max_disks": ("max_disks", 1, 1),
    "max_disk_total_gib": ("max_disk_total_bytes", GIB, 1),
    "max_vms_per_user": ("max_vms_per_user", 1, 1),
    "max_vms_per_host": ("max_vms_per_host", 1, 1),
    "max_input_mib": ("max_input_bytes", MIB, 1),
    "output_disk_mib": ("output_disk_bytes", MIB, 1),
    "max_run_seconds": ("max_run_seconds", 1, 1),
    "max_resolve_mib": ("max_resolve_mib", 1, 256),
    "max_resolve_cpu_seconds": ("max_resolve_cpu_seconds", 1, 1),
    "max_resolve_seconds": ("max_resolve_seconds", 1, 1),
    "max_checkpoint_mib": ("max_checkpoint_bytes", MIB, 0),
}


def policy_from_table(table: Any, origin: str) -> SitePolicy:
    """The `[policy]` table of a site config, refusing unknown keys and impossible values."""
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: [policy] must be a table")
    known = (*_BOOLS, *_NUMBERS, "networks", *POLICY_KEYS.values())
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(
            f"{origin}: unknown [policy] setting {unknown[0]!r}", hint=f"known: {', '.join(known)}"
        )
    values: dict[str, Any] = {}
    for key in _BOOLS:
        if key in table:
            if not isinstance(table[key], bool):
                raise ConfigError(f"{origin}: [policy] {key} must be true or false")
            values[key] = table[key]
    for key, (name, unit, least) in _NUMBERS.items():
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{origin}: [policy] {key} must be a whole number >= {least}")
            values[name] = value * unit
    if "networks" in table:
        networks = table["networks"]
        if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
            raise ConfigError(
                f"{origin}: [policy] networks must be a list of libvirt network names",
                hint="[] (the default) gives jobs no network",
            )
        values["networks"] = frozenset(networks)
    budgets = {name: table[key] for name, key in POLICY_KEYS.items() if key in table}
    for name, value in budgets.items():
        number = (int, float) if name == "seconds" else int
        if isinstance(value, bool) or not isinstance(value, number) or value < 1:
            raise ConfigError(
                f"{origin}: [policy] {POLICY_KEYS[name]} must be a "
                f"{'number' if name == 'seconds' else 'whole number'} >= 1"
            )
    if budgets:
        values["budgets"] = dataclasses.replace(JOB_BUDGETS, **budgets)
    return SitePolicy(**values)


# --- the checks ---------------------------------------------------------------------------------
def check_capacity(user_vms: int, host_vms: int, policy: SitePolicy) -> None:
    """Refuse a new job VM when the caller or the host already has the most the site allows.

    Raises `PolicyLimitReached`, which sends the job back to Idle (it may run later), not on hold.
    """
    if user_vms >= policy.max_vms_per_user:
        raise PolicyLimitReached(
            f"you already have {user_vms} job VMs on this worker, the site limit per user is "
            f"{policy.max_vms_per_user}",
            hint="the job runs when one of them has finished",
        )
    if host_vms >= policy.max_vms_per_host:
        raise PolicyLimitReached(
            f"this worker already runs {host_vms} job VMs, the site limit per host is "
            f"{policy.max_vms_per_host}",
            hint="the job runs here or elsewhere later",
        )


def check_job(
    description: Description, spec: VMSpec, template_spec: VMSpec | None, policy: SitePolicy
) -> None:
    """Refuse a job's VM that site policy does not allow; the first problem found wins.

    Limits and host paths hold for every job; the template rule where the site requires it.
    DESCRIPTION is the resolved `lang.Description` whose `sfconfig` is the VM SPEC was read
    from. TEMPLATE_SPEC is the resolved VM of the site template the description extends (the
    job's own SPEC when the job names a site template), or None when it extends none.
    """
    vm = description.sfconfig
    if not isinstance(vm, Component):
        raise TypeError("check_job needs the VM component the spec was read from")
    _check_limits(vm, spec, policy)
    _check_paths(vm, spec)
    if not policy.require_site_template:
        return  # the site trusts its users' own VMs within the limits and paths above
    if template_spec is None:
        raise PolicyError(
            f"{_where(vm.loc)}{vm.path or 'sfConfig'} does not extend a site template",
            hint="#include one (sd templates lists them) and extend its VM, e.g. "
            '#include "minimal.sf" then sfConfig extends MinimalVM { memory 1024; }',
        )
    for name, where, ours, theirs in _differences(vm, spec, template_spec, policy):
        template = Path(template_spec.loc.file).stem if template_spec.loc else "its template"
        raise PolicyError(
            f"{_where(where)}{name} {_show(ours)} differs from the site template "
            f"{template} ({_clip(_show(theirs))})",
            hint=f"a job's own description may change only {', '.join(OVERRIDABLE)}: "
            "remove the override or name another site template",
        )


def closest_template(spec: VMSpec, templates: Sequence[VMSpec]) -> VMSpec | None:
    """The template VM SPEC differs least from (their first on a tie), or None when none."""
    if not templates:
        return None
    return min(templates, key=lambda t: sum(1 for _ in _raw_differences(spec, t)))


def _check_limits(vm: Component, spec: VMSpec, policy: SitePolicy) -> None:
    if spec.memory_mib > policy.max_memory_mib:
        raise PolicyError(
            f"{_where(vm.location_of('memory'))}{vm.attribute_path('memory')} {spec.memory_mib} "
            f"MiB is over the site limit of {policy.max_memory_mib} MiB",
            hint="ask for less memory",
        )
    if spec.vcpus > policy.max_vcpus:
        raise PolicyError(
            f"{_where(vm.location_of('vcpus'))}{vm.attribute_path('vcpus')} {spec.vcpus} is over "
            f"the site limit of {policy.max_vcpus} vCPUs",
            hint="ask for fewer vCPUs",
        )
    if len(spec.disks) > policy.max_disks:
        raise PolicyError(
            f"{_where(vm.location_of('disks'))}{vm.attribute_path('disks')}: {len(spec.disks)} "
            f"disks are over the site limit of {policy.max_disks} disks per VM ([policy] "
            "max_disks)",
            hint="ask for fewer disks",
        )
    for disk in spec.disks:
        if disk.size_bytes is not None and disk.size_bytes > policy.max_disk_bytes:
            raise PolicyError(
                f"{_where(disk.loc)}{disk.path}:size {_size(disk.size_bytes)} is over the site "
                f"limit of {_size(policy.max_disk_bytes)} per disk",
                hint="ask for a smaller disk",
            )
    blank = sum(disk.size_bytes or 0 for disk in spec.disks)
    if blank > policy.max_disk_total_bytes:
        raise PolicyError(
            f"{_where(vm.location_of('disks'))}{vm.attribute_path('disks')}: blank disks of "
            f"{_size(blank)} together are over the site limit of "
            f"{_size(policy.max_disk_total_bytes)} per VM ([policy] max_disk_total_gib)",
            hint="ask for smaller or fewer blank disks",
        )
    if spec.network is not None and spec.network not in policy.networks:
        allowed = ", ".join(sorted(policy.networks))
        raise PolicyError(
            f"{_where(vm.location_of('network'))}{vm.attribute_path('network')} "
            f"{_show(spec.network)}: "
            + (
                f"jobs may join only {allowed} on this site"
                if allowed
                else "jobs get no network on this site"
            ),
            hint="set network NULL" + (f" or one of {allowed}" if allowed else ""),
        )


def _check_paths(vm: Component, spec: VMSpec) -> None:
    """Every host file a VM names is relative to the site image folder, with no `..` in it."""
    for name, path, where in _paths(vm, spec):
        if path.is_absolute() or ".." in path.parts:
            raise PolicyError(
                f"{_where(where)}{name} {_show(str(path))} is outside the site image folder",
                hint="images, kernels and initrds are named relative to the site image folder "
                '(such as "minimal/vmlinux"), without ".."',
            )


def _paths(vm: Component, spec: VMSpec) -> Iterator[tuple[str, PurePosixPath, Any]]:
    if isinstance(spec.boot, KernelBoot):
        yield vm.attribute_path("kernel"), spec.boot.kernel, vm.location_of("kernel")
        if spec.boot.initrd is not None:
            yield vm.attribute_path("initrd"), spec.boot.initrd, vm.location_of("initrd")
    for disk in spec.disks:
        if disk.image is not None:
            yield f"{disk.path}:image", disk.image, disk.loc


#: VMSpec fields -> the attribute that sets them (name, path and loc are never compared).
_VM_ATTRIBUTES = {
    "flavour": "flavour",
    "network": "network",
    "on_poweroff": "onPoweroff",
    "on_reboot": "onReboot",
    "on_crash": "onCrash",
    "console_log": "console",
}
_BOOT_ATTRIBUTES = {
    "kernel": "kernel",
    "initrd": "initrd",
    "cmdline": "cmdline",
    "bootloader": "bootloader",
}
_DISK_ATTRIBUTES = {
    "format": "format",
    "image": "image",
    "size_bytes": "size",
    "readonly": "readonly",
    "serial": "serial",
}


def _raw_differences(spec: VMSpec, template: VMSpec) -> Iterator[tuple[str, str | None, Any, Any]]:
    """(component path, attribute, ours, theirs) for every value that is not the template's."""
    for field_name, attribute in _VM_ATTRIBUTES.items():
        ours, theirs = getattr(spec, field_name), getattr(template, field_name)
        if ours != theirs:
            yield spec.path, attribute, ours, theirs
    yield from _boot_differences(spec, template)
    if len(spec.disks) != len(template.disks):
        yield spec.path, "disks", _disk_names(spec.disks), _disk_names(template.disks)
        return
    for ours_disk, their_disk in zip(spec.disks, template.disks, strict=True):
        if ours_disk.name != their_disk.name:
            yield spec.path, "disks", _disk_names(spec.disks), _disk_names(template.disks)
            return
        for field_name, attribute in _DISK_ATTRIBUTES.items():
            ours, theirs = getattr(ours_disk, field_name), getattr(their_disk, field_name)
            if ours != theirs:
                yield ours_disk.path, attribute, ours, theirs


def _boot_differences(spec: VMSpec, template: VMSpec) -> Iterator[tuple[str, str | None, Any, Any]]:
    ours, theirs = spec.boot, template.boot
    if type(ours) is not type(theirs):
        kernel = ours.kernel if isinstance(ours, KernelBoot) else None
        yield spec.path, "kernel", kernel, theirs.kernel if isinstance(theirs, KernelBoot) else None
        return
    for item in fields(ours):
        if item.name in _BOOT_ATTRIBUTES:
            mine, site = getattr(ours, item.name), getattr(theirs, item.name)
            if mine != site:
                yield spec.path, _BOOT_ATTRIBUTES[item.name], mine, site


def _differences(
    vm: Component, spec: VMSpec, template: VMSpec, policy: SitePolicy
) -> Iterator[tuple[str, SourceLocation | None, Any, Any]]:
    """The differences policy does not allow: (attribute path, where written, ours, theirs)."""
    for path, attribute, ours, theirs in _raw_differences(spec, template):
        if attribute == "network" and (ours is None or ours in policy.networks):
            continue  # its own limit check has passed: a job may join an allowed network
        holder = _component_at(vm, path)
        if attribute == "size" and ours is not None and theirs is not None:
            continue  # a blank disk of another size, within the limit checked above
        where = holder.location_of(attribute) if holder is not None and attribute else None
        yield f"{path}:{attribute}", where, ours, theirs


def _component_at(vm: Component, path: str) -> Component | None:
    """The component at attribute PATH (as `Component.path` writes it) under VM's root."""
    node: Any = vm.root()
    for name in path.split(":") if path else ():
        node = node.get(name) if isinstance(node, Component) else None
    return node if isinstance(node, Component) else None


def _disk_names(disks: Sequence[DiskSpec]) -> tuple[str, ...]:
    return tuple(disk.name for disk in disks)


def _where(loc: SourceLocation | None) -> str:
    return f"{loc}: " if loc is not None else ""


def _size(size_bytes: int) -> str:
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if size_bytes >= 1 << shift and size_bytes % (1 << (shift - 10)) == 0:
            value = size_bytes / (1 << shift)
            return f"{value:g} {unit}"
    return f"{size_bytes} bytes"


def _clip(text: str, limit: int = 60) -> str:
    """A template's value, shortened: the user needs to see which it is, not all of it."""
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def _show(value: Any) -> str:
    """A value as a description writes it (strings quoted, so `</cmdline>` stays visible text)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "value") and not isinstance(value, Mapping):  # an enum
        value = value.value
    if isinstance(value, PurePosixPath):
        value = str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return "(disks " + ", ".join(value) + ")" if value else "(no disks)"
    return str(value)
