"""A form per site template, and the user's values checked as the job hooks check them.

Fields come from the template's resolved description: one per TBD attribute (the user must
fill it) and one per attribute site policy lets a user change (`policy.OVERRIDABLE`: memory,
vCPUs, the size of blank disks, and the network where the site allows some), typed from the
template's value and bounded by the site's limits. The values become a small `.sf` that
`#include`s the template and overrides each value with a path-named attribute; it is resolved
with the site's include folders and properties and checked with `policy.check_job`, VM by VM.
Errors go to the field whose line (or attribute path) they name.
May import: config, deploy.pools, errors, lang, placement.steps, vm.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.site import SiteConfig
from ..config.templates import find_template, load_template
from ..deploy.pools import check_pool_name
from ..errors import DescriptionError, DescriptionErrors, SdError
from ..lang import Component, Description, load_text
from ..placement.steps import NOT_DEPLOYED, VM_CLASS, plan
from ..vm.site_policy import check_job
from ..vm.spec import VMSpec, vm_spec

USER_FILE = "my.sf"
POOL_FIELD = "pool"
GENERAL = ""  # errors that concern no one field
_WHOLE = re.compile(r"-?[0-9]{1,12}")
_LOC_PREFIX = re.compile(r"^" + re.escape(USER_FILE) + r":(\d+):\d+: ")


@dataclass(frozen=True, slots=True)
class Field:
    """One input: PATH is the attribute path the value overrides (`sfConfig:head:memory`)."""

    path: str
    label: str
    kind: str  # number | text | boolean | choice
    default: str
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    unit: str = ""
    choices: tuple[str, ...] = ()
    hint: str = ""


@dataclass(frozen=True, slots=True)
class Cost:
    vms: int
    memory_mib: int
    vcpus: int
    disk_bytes: int  # blank disks only: base images are the site's, shared copy-on-write


@dataclass(frozen=True, slots=True)
class TemplateForm:
    name: str
    path: Path
    description: str
    result: str  # "job" (one VM: a condor_submit file) or "pool" (started here)
    fields: tuple[Field, ...]
    cost: Cost | None
    tbds: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Checked:
    """The user's values, the `.sf` they make, and every error by field path."""

    values: Mapping[str, str]
    sf_text: str
    errors: Mapping[str, str]
    #: A job template's one VM, as the values make it (its size goes into job.sub).
    vm: VMSpec | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def build_form(name: str, config: SiteConfig) -> TemplateForm:
    """The form of site template NAME (a PolicyError when there is none)."""
    path = find_template(name, config)
    description = load_template(path, config)
    text = description.root.get("templateDescription")
    sfconfig = description.sfconfig
    tbd_paths = tuple(p for p, _loc in description.tbds)
    fields = [
        Field(p, _label(p), "text", "", required=True, hint="to be defined: required")
        for p in tbd_paths
    ]
    if sfconfig is not None:
        for vm in _vms(sfconfig):
            fields.extend(_vm_fields(vm, config, set(tbd_paths)))
    result = "job" if sfconfig is not None and sfconfig.get("sfClass") == VM_CLASS else "pool"
    return TemplateForm(
        name,
        path,
        text if isinstance(text, str) else "",
        result,
        tuple(fields),
        _cost(description),
        tbd_paths,
    )


def _label(path: str) -> str:
    parts = path.split(":")[1:] or [path]
    return " ".join(parts)


def _vms(node: Component) -> Iterator[Component]:
    """Every VM under NODE, LAZY templates of counted copies too (their values make the VMs)."""
    if node.get("sfClass") == VM_CLASS:
        yield node
        return
    for _name, child in node.children():
        if child.is_data or child.get("sfClass") in NOT_DEPLOYED:
            continue
        yield from _vms(child)


def _vm_fields(vm: Component, config: SiteConfig, tbds: set[str]) -> Iterator[Field]:
    policy = config.policy
    limits = (("memory", 32, policy.max_memory_mib, "MiB"), ("vcpus", 1, policy.max_vcpus, ""))
    for attribute, least, most, unit in limits:
        path = vm.attribute_path(attribute)
        if path not in tbds and attribute in vm:
            yield _typed(path, vm.get(attribute), least, most, unit)
    disks = vm.get("disks")
    if isinstance(disks, Component):
        for _name, disk in disks.children():
            path = disk.attribute_path("size")
            if disk.get("image") is None and "size" in disk and path not in tbds:
                yield _typed(
                    path,
                    disk.get("size"),
                    1,
                    policy.max_disk_bytes >> 20,
                    "MiB",
                    hint=f'a number of MiB or a size such as "2G"; at most '
                    f"{policy.max_disk_bytes >> 30} GiB",
                )
    if policy.networks and "network" in vm and vm.attribute_path("network") not in tbds:
        current = vm.get("network")
        yield Field(
            vm.attribute_path("network"),
            _label(vm.attribute_path("network")),
            "choice",
            current if isinstance(current, str) else "NULL",
            choices=("NULL", *sorted(policy.networks)),
            hint="NULL: no network",
        )


def _typed(path: str, value: Any, least: int, most: int, unit: str, hint: str = "") -> Field:
    """A field typed from the template's value: a number, a boolean, else text."""
    if isinstance(value, bool):
        return Field(path, _label(path), "boolean", "true" if value else "false")
    if isinstance(value, int):
        return Field(
            path,
            _label(path),
            "number",
            str(value),
            minimum=least,
            maximum=most,
            unit=unit,
            hint=hint or f"{least} to {most}{' ' + unit if unit else ''}",
        )
    return Field(path, _label(path), "text", "" if value is None else str(value), hint=hint)


def _cost(description: Description) -> Cost | None:
    """What the template's VMs ask for, or None while TBDs (or errors) leave it unknown."""
    try:
        specs = [vm.spec for vm in plan(description, "cost", "test:///").vms()]
    except SdError:
        return None
    return Cost(
        len(specs),
        sum(s.memory_mib for s in specs),
        sum(s.vcpus for s in specs),
        sum(d.size_bytes or 0 for s in specs for d in s.disks if d.is_blank),
    )


# --- the user's values --------------------------------------------------------------------------
def user_sf(
    form: TemplateForm, values: Mapping[str, str]
) -> tuple[str, dict[str, str], dict[int, str]]:
    """(the `.sf` text, errors of values that are not their field's type, line -> field)."""
    lines = [
        f"// {USER_FILE}: the site template {form.name} with your values (sd web)",
        f'#include "{form.path.name}"',
        "",
    ]
    errors: dict[str, str] = {}
    line_of: dict[int, str] = {}
    for field in form.fields:
        raw = values.get(field.path, "").strip()
        if field.kind == "boolean":
            raw = "true" if raw in ("true", "on", "1") else "false"
        if raw == "" or (raw == field.default and not field.required):
            if field.required:
                errors[field.path] = "fill this field: the template leaves it to you"
            continue
        literal = _literal(field, raw)
        if literal is None:
            errors[field.path] = (
                "enter a whole number"
                if field.kind == "number"
                else f"choose one of {', '.join(field.choices)}"
            )
            continue
        lines.append(f"{field.path} {literal};")
        line_of[len(lines)] = field.path
    return "\n".join(lines) + "\n", errors, line_of


def _literal(field: Field, raw: str) -> str | None:
    if field.kind == "number":
        return raw if _WHOLE.fullmatch(raw) else None
    if field.kind == "boolean":
        return raw
    if field.kind == "choice":
        if raw not in field.choices:
            return None
        return "NULL" if raw == "NULL" else _quote(raw)
    return _quote(raw)


def _quote(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def check(form: TemplateForm, values: Mapping[str, str], config: SiteConfig) -> Checked:
    """Resolve the user's `.sf` and apply site policy to every VM it makes, as the hooks do."""
    sf_text, errors, line_of = user_sf(form, values)
    kept = {f.path: values.get(f.path, "") for f in form.fields}
    if form.result == "pool":
        kept[POOL_FIELD] = values.get(POOL_FIELD, "").strip()
        try:
            check_pool_name(kept[POOL_FIELD])
        except SdError as exc:
            errors[POOL_FIELD] = str(exc)
    if any(path != POOL_FIELD for path in errors):
        return Checked(kept, sf_text, errors)
    specs: list[VMSpec] = []
    try:
        specs = _check_resolved(form, sf_text, config)
    except DescriptionErrors as many:
        for error in many.errors:
            _place(error, form, line_of, errors)
    except SdError as exc:
        _place(exc, form, line_of, errors)
    one = specs[0] if form.result == "job" and len(specs) == 1 and not errors else None
    return Checked(kept, sf_text, errors, one)


def _check_resolved(form: TemplateForm, sf_text: str, config: SiteConfig) -> list[VMSpec]:
    include_dirs = [form.path.parent, *config.include_dirs, *config.template_dirs]
    description = load_text(
        sf_text, USER_FILE, include_dirs=include_dirs, properties=dict(config.properties)
    )
    template = load_template(form.path, config)
    theirs = _specs(template)
    checked = []
    for path, (component, spec) in _specs(description, required=True).items():
        own = dataclasses.replace(description, sfconfig=component)
        template_spec = theirs.get(path, (None, spec))[1]
        check_job(own, spec, template_spec, config.policy)
        checked.append(spec)
    return checked


def _specs(
    description: Description, *, required: bool = False
) -> dict[str, tuple[Component, VMSpec]]:
    """Attribute path of each VM component -> (component, its spec), as `sd start` plans it."""
    try:
        step = plan(description, "web", "test:///")
    except SdError:
        if required:
            raise
        return {}  # a template with TBDs has no complete VMs to compare with
    if description.sfconfig is None:
        return {}  # no sfConfig: no VMs (the resolver refused it before)
    found: dict[str, tuple[Component, VMSpec]] = {}
    for vm in step.vms():
        component = _component_at(description.root, vm.path)
        if component is not None and vm.path not in found:
            found[vm.path] = (component, vm_spec(component, default_name=vm.domain))
    return found


def _component_at(root: Component, path: str) -> Component | None:
    node: Any = root
    for name in path.split(":"):
        node = node.get(name) if isinstance(node, Component) else None
    return node if isinstance(node, Component) else None


def _place(
    exc: SdError, form: TemplateForm, line_of: Mapping[int, str], errors: dict[str, str]
) -> None:
    """Put EXC's message next to the field it concerns: by the line of my.sf it names, else by
    the attribute path it names, else at the top of the form."""
    text = exc.headline() if isinstance(exc, DescriptionError) else str(exc)
    field: str | None = None
    loc = getattr(exc, "loc", None)
    if loc is not None and loc.file == USER_FILE:
        field = line_of.get(loc.line)
    match = _LOC_PREFIX.match(text)
    if match:
        field = field or line_of.get(int(match[1]))
    if field is None:
        for candidate in form.fields:
            if re.search(re.escape(candidate.path) + r"(?![\w:])", text):
                field = candidate.path
                break
    if field is not None:
        text = _LOC_PREFIX.sub("", text)
    key = field if field is not None else GENERAL
    errors[key] = f"{errors[key]}; {text}" if key in errors else text


def submit_file(form: TemplateForm, vm: VMSpec | None = None, disk_kib: int | None = None) -> str:
    """A ready condor_submit file whose job runs in the VM `my.sf` describes. With the VM's
    size: the requests that give the job a slot that size (the VM is its slot); DISK_KIB is
    what its disks can write (output, blank and copy-on-write disks at full size)."""
    requests = ""
    if vm is not None:
        requests = (
            "# the VM's size: HTCondor gives the job a slot this big, and the VM is that "
            "slot\n"
            f"request_memory          = {vm.memory_mib}\n"
            f"request_cpus            = {vm.vcpus}\n"
        )
        if disk_kib is not None:
            requests += f"request_disk            = {-(-disk_kib // 1024)}M\n"
    return (
        f"# A job in a VM of the site template {form.name}, with your values in {USER_FILE}\n"
        "# (keep both files together; submit with: condor_submit job.sub)\n"
        "executable              = job.sh\n"
        "arguments               =\n"
        f"transfer_input_files    = {USER_FILE}\n"
        "should_transfer_files   = YES\n"
        "when_to_transfer_output = ON_EXIT\n"
        "output                  = job.out\n"
        "error                   = job.err\n"
        "log                     = job.log\n"
        f"{requests}"
        "\n"
        "# the one sd-batch line: the job runs in a fresh VM made from my.sf\n"
        f'+SDVMDescription        = "{USER_FILE}"\n'
        "queue\n"
    )
