"""Site policy on resolved descriptions: limits, the template rule, host paths, and [policy].

Pure: descriptions are resolved from text against the shipped templates (no hypervisor); the
attacks a job could try through its own description each have a test naming what is refused.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, SiteConfig, parse_config
from sd_batch.errors import (
    ConfigError,
    DescriptionError,
    Disposition,
    IncludeError,
    PolicyError,
    PolicyLimitReached,
)
from sd_batch.lang import Description, load_file, load_text
from sd_batch.vm.site_policy import SitePolicy, check_capacity, check_job, closest_template
from sd_batch.vm.spec import VMSpec, vm_spec

PROPS = {"sd.flavour": "qemu"}
DOMAIN = "sd-job-0123456789abcdef"
DEFAULT = SitePolicy()


def resolve(text: str) -> Description:
    return load_text(
        text, "my.sf", include_dirs=[BUILTIN_TEMPLATE_DIR], properties=PROPS, environ=None
    )


def spec_of(description: Description) -> VMSpec:
    assert description.sfconfig is not None
    return dataclasses.replace(vm_spec(description.sfconfig, default_name=DOMAIN), name=DOMAIN)


def template(name: str) -> VMSpec:
    path = BUILTIN_TEMPLATE_DIR / f"{name}.sf"
    return spec_of(
        load_file(path, include_dirs=[BUILTIN_TEMPLATE_DIR], properties=PROPS, environ=None)
    )


def refusal(text: str, policy: SitePolicy = DEFAULT, base: str | None = "minimal") -> str:
    description = resolve(text)
    with pytest.raises(PolicyError) as caught:
        check_job(description, spec_of(description), template(base) if base else None, policy)
    assert caught.value.disposition is Disposition.HOLD
    return str(caught.value)


def passes(text: str, policy: SitePolicy = DEFAULT, base: str = "minimal") -> VMSpec:
    description = resolve(text)
    spec = spec_of(description)
    check_job(description, spec, template(base), policy)
    return spec


MINIMAL = '#include "minimal.sf"\nsfConfig extends MinimalVM {\n    '


# --- what a job's own description may change ---------------------------------------------------
def test_a_description_extending_a_template_may_change_memory_and_vcpus() -> None:
    spec = passes(MINIMAL + 'memory "1G";\n    vcpus 2;\n}\n')
    assert (spec.memory_mib, spec.vcpus) == (1024, 2)


def test_every_site_template_passes_its_own_policy() -> None:
    for name in ("minimal", "debian-batch"):
        spec = template(name)
        description = load_file(
            BUILTIN_TEMPLATE_DIR / f"{name}.sf",
            properties=PROPS,
            include_dirs=[BUILTIN_TEMPLATE_DIR],
            environ=None,
        )
        check_job(description, spec, spec, SitePolicy())


def test_one_terabyte_of_memory_is_refused_with_file_line_column() -> None:
    assert refusal(MINIMAL + 'memory "1T";\n}\n') == (
        "my.sf:3:5: sfConfig:memory 1048576 MiB is over the site limit of 8192 MiB; "
        "ask for less memory"
    )


def test_the_memory_limit_is_the_sites() -> None:
    message = refusal(MINIMAL + "memory 2048;\n}\n", SitePolicy(max_memory_mib=1024))
    assert "2048 MiB is over the site limit of 1024 MiB" in message


def test_too_many_vcpus_are_refused() -> None:
    assert refusal(MINIMAL + "vcpus 1000;\n}\n").startswith(
        "my.sf:3:5: sfConfig:vcpus 1000 is over the site limit of 8 vCPUs; ask for fewer vCPUs"
    )


@pytest.mark.parametrize("vcpus", ["0", "-1"])
def test_zero_or_negative_vcpus_never_reach_policy(vcpus: str) -> None:
    description = resolve(MINIMAL + f"vcpus {vcpus};\n}}\n")
    with pytest.raises(
        DescriptionError, match=r"my\.sf:3:5: sfConfig:vcpus: -?[01] is not a vCPU count"
    ):
        spec_of(description)


def test_a_petabyte_disk_is_refused() -> None:
    text = (
        '#include "components.sf"\nsfConfig extends VM {\n  kernel "k";\n'
        '  disks extends DATA {\n    scratch extends Disk { size "1048576G"; }\n  }\n}\n'
    )
    message = refusal(text, SitePolicy(require_site_template=False), base=None)
    assert message.startswith(
        "my.sf:5:28: sfConfig:disks:scratch:size 1 PiB is over the site limit of 64 GiB per disk"
    ), message


def own_vm_with_disks(count: int, size: str) -> str:
    """A VM of the job's own (no site template) with COUNT blank disks of SIZE each."""
    disks = "".join(f'    d{n} extends Disk {{ size "{size}"; }}\n' for n in range(count))
    return (
        '#include "components.sf"\nsfConfig extends VM {\n  kernel "k";\n'
        f"  disks extends DATA {{\n{disks}  }}\n}}\n"
    )


OWN_VMS = SitePolicy(require_site_template=False)


def test_a_vm_of_its_own_cannot_ask_for_unbounded_blank_disks() -> None:
    """The issue's attack: 300 disks of 64 GiB, each within the per-disk limit."""
    message = refusal(own_vm_with_disks(300, "64G"), OWN_VMS, base=None)
    assert message == (
        "my.sf:4:3: sfConfig:disks: 300 disks are over the site limit of 8 disks "
        "per VM ([policy] max_disks); ask for fewer disks"
    )


def test_blank_disks_together_are_capped() -> None:
    message = refusal(own_vm_with_disks(3, "64G"), OWN_VMS, base=None)
    assert message == (
        "my.sf:4:3: sfConfig:disks: blank disks of 192 GiB together are over the "
        "site limit of 128 GiB per VM ([policy] max_disk_total_gib); ask for "
        "smaller or fewer blank disks"
    )
    description = resolve(own_vm_with_disks(2, "64G"))
    check_job(description, spec_of(description), None, OWN_VMS)  # 128 GiB: at the limit
    tight = SitePolicy(require_site_template=False, max_disks=2, max_disk_total_bytes=10 << 30)
    assert "over the site limit of 2 disks per VM" in refusal(
        own_vm_with_disks(3, "1G"), tight, base=None
    )
    assert "blank disks of 12 GiB together" in refusal(own_vm_with_disks(2, "6G"), tight, base=None)


def test_the_disk_caps_hold_for_site_template_jobs_too() -> None:
    small = SitePolicy(max_disk_total_bytes=1 << 30)
    text = (
        '#include "minimal.sf"\nsfConfig extends MinimalVM {\n'
        '    disks extends DATA { scratch extends Disk { size "2G"; } }\n}\n'
    )
    description = resolve(text)
    with pytest.raises(
        PolicyError,
        match=r"blank disks of 2 GiB together are over the site "
        r"limit of 1 GiB per VM",
    ):
        check_job(description, spec_of(description), None, small)


# --- host paths, devices, kernels, cmdlines -----------------------------------------------------
@pytest.mark.parametrize(
    ("line", "where", "shown"),
    [
        ('kernel "/boot/vmlinuz";', "sfConfig:kernel", '"/boot/vmlinuz"'),
        ('initrd "../../etc/shadow";', "sfConfig:initrd", '"../../etc/shadow"'),
    ],
)
def test_host_kernels_and_escapes_are_outside_the_image_folder(
    line: str, where: str, shown: str
) -> None:
    message = refusal(MINIMAL + line + "\n}\n")
    assert message.startswith(f"my.sf:3:5: {where} {shown} is outside the site image folder")


@pytest.mark.parametrize("image", ["/dev/sda", "../../etc/shadow", "/etc/shadow"])
def test_host_devices_and_files_as_disk_images_are_refused(image: str) -> None:
    text = (
        f'#include "components.sf"\nsfConfig extends VM {{\n  kernel "k";\n'
        f'  disks extends DATA {{\n    root extends Disk {{ image "{image}"; }}\n  }}\n}}\n'
    )
    for policy, base in (
        (SitePolicy(require_site_template=False), None),
        (SitePolicy(), "minimal"),
    ):
        message = refusal(text, policy, base)
        assert message.startswith(
            f'my.sf:5:25: sfConfig:disks:root:image "{image}" is outside the site image folder'
        ), message


def test_overriding_the_templates_kernel_is_refused_even_inside_the_image_folder() -> None:
    message = refusal(MINIMAL + 'kernel "debian-batch/vmlinuz";\n}\n')
    assert message == (
        'my.sf:3:5: sfConfig:kernel "debian-batch/vmlinuz" differs from the site template '
        'minimal ("minimal/vmlinux"); a job\'s own description may change only memory, vcpus, '
        "the size of blank disks: remove the override or name another site template"
    )


def test_overriding_the_templates_cmdline_is_refused_wherever_it_comes_from() -> None:
    text = MINIMAL + 'extra "init=/bin/sh";\n    cmdline ("console=ttyS0 " ++ extra);\n}\n'
    assert refusal(text).startswith(
        'my.sf:4:5: sfConfig:cmdline "console=ttyS0 init=/bin/sh" '
        "differs from the site template minimal"
    )


@pytest.mark.parametrize(
    ("line", "attribute"),
    [
        ('flavour "kvm";', "flavour"),
        ('console "/etc/cron.d/x";', "console"),
        ('onCrash "preserve";', "onCrash"),
        ('disks extends DATA { root extends Disk { image "minimal/vmlinux"; } }', "disks"),
    ],
)
def test_everything_but_memory_vcpus_and_blank_disk_sizes_is_the_templates(
    line: str, attribute: str
) -> None:
    assert f"sfConfig:{attribute} " in refusal(MINIMAL + line + "\n}\n")


def test_a_cmdline_closing_the_xml_element_is_refused_as_plain_text() -> None:
    message = refusal(MINIMAL + 'cmdline "</cmdline><kernel>/etc/shadow</kernel>";\n}\n')
    assert '"</cmdline><kernel>/etc/shadow</kernel>" differs from the site template' in message


def test_a_description_extending_no_template_is_refused_when_policy_requires_one() -> None:
    text = '#include "components.sf"\nsfConfig extends VM {\n  kernel "minimal/vmlinux";\n}\n'
    assert refusal(text, base=None).startswith(
        "my.sf:2:10: sfConfig does not extend a site template; #include one (sd templates lists "
        "them) and extend its VM"
    )


def test_without_the_template_rule_limits_and_paths_still_hold() -> None:
    text = '#include "components.sf"\nsfConfig extends VM {\n  kernel "mine/vmlinuz";\n}\n'
    description = resolve(text)
    check_job(description, spec_of(description), None, SitePolicy(require_site_template=False))


# --- networks -----------------------------------------------------------------------------------
def test_a_network_is_refused_when_the_site_allows_none() -> None:
    assert refusal(MINIMAL + 'network "default";\n}\n') == (
        'my.sf:3:5: sfConfig:network "default": jobs get no network on this site; set network NULL'
    )


def test_an_allowed_network_may_be_joined_and_no_other() -> None:
    policy = SitePolicy(networks=frozenset({"jobs"}))
    assert passes(MINIMAL + 'network "jobs";\n}\n', policy).network == "jobs"
    assert "jobs may join only jobs" in refusal(MINIMAL + 'network "default";\n}\n', policy)


# --- what the language itself refuses before policy looks ---------------------------------------
def test_include_of_a_host_file_is_not_found() -> None:
    with pytest.raises(IncludeError, match=r'my\.sf:1:1: cannot find include "/etc/shadow"'):
        resolve('#include "/etc/shadow"\nsfConfig extends { }\n')


def test_envproperty_is_refused_in_a_job_description(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SD_POLICY_SECRET", "leak")
    with pytest.raises(DescriptionError, match="environment variables are not available"):
        resolve(MINIMAL + 'cmdline OPTIONAL("x") ENVPROPERTY SD_POLICY_SECRET;\n}\n')


def test_property_reads_site_properties_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SD_POLICY_SECRET", "leak")
    with pytest.raises(DescriptionError, match="property SD_POLICY_SECRET is not set"):
        resolve(MINIMAL + "cmdline PROPERTY SD_POLICY_SECRET;\n}\n")


@pytest.mark.parametrize("name", ["a<b", "it's", "x&y", "</name>"])
def test_a_vm_name_with_markup_is_refused(name: str) -> None:
    description = resolve(MINIMAL + f'name "{name}";\n}}\n')
    with pytest.raises(DescriptionError, match="is not a VM name"):
        spec_of(description)


# --- choosing the template, counting VMs --------------------------------------------------------
def test_the_closest_included_template_is_the_one_compared() -> None:
    spec = spec_of(resolve(MINIMAL + "memory 1024;\n}\n"))
    assert closest_template(spec, [template("debian-batch"), template("minimal")]) == template(
        "minimal"
    )
    assert closest_template(spec, []) is None


def test_vm_counts_requeue_rather_than_hold() -> None:
    policy = SitePolicy(max_vms_per_user=2, max_vms_per_host=3)
    check_capacity(1, 2, policy)
    with pytest.raises(PolicyLimitReached, match="you already have 2 job VMs") as caught:
        check_capacity(2, 2, policy)
    assert caught.value.disposition is Disposition.REQUEUE
    with pytest.raises(PolicyLimitReached, match="this worker already runs 3 job VMs"):
        check_capacity(0, 3, policy)


# --- the [policy] table -------------------------------------------------------------------------
def test_policy_defaults_are_safe() -> None:
    policy = SiteConfig().policy
    assert policy == SitePolicy()
    assert policy.networks == frozenset() and policy.require_site_template
    assert (policy.max_memory_mib, policy.max_vcpus, policy.max_disk_bytes) == (8192, 8, 64 << 30)


def test_policy_table_sets_every_knob() -> None:
    config = parse_config(
        {
            "policy": {
                "allow_user_descriptions": False,
                "require_site_template": False,
                "max_memory_mib": 4096,
                "max_vcpus": 2,
                "max_disk_gib": 10,
                "networks": ["jobs"],
                "max_vms_per_user": 1,
                "max_vms_per_host": 4,
                "max_input_mib": 100,
                "output_disk_mib": 64,
                "max_disks": 3,
                "max_disk_total_gib": 20,
            }
        }
    )
    assert config.policy == SitePolicy(
        allow_user_descriptions=False,
        require_site_template=False,
        max_memory_mib=4096,
        max_vcpus=2,
        max_disk_bytes=10 << 30,
        networks=frozenset({"jobs"}),
        max_vms_per_user=1,
        max_vms_per_host=4,
        max_input_bytes=100 << 20,
        output_disk_bytes=64 << 20,
        max_disks=3,
        max_disk_total_bytes=20 << 30,
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max_memroy_mib": 1}, "site.toml: unknown [policy] setting 'max_memroy_mib'"),
        ({"max_vcpus": 0}, "site.toml: [policy] max_vcpus must be a whole number >= 1"),
        ({"max_vcpus": True}, "site.toml: [policy] max_vcpus must be a whole number >= 1"),
        ({"networks": "default"}, "site.toml: [policy] networks must be a list"),
        ({"allow_user_descriptions": "yes"}, "allow_user_descriptions must be true or false"),
    ],
)
def test_policy_table_mistakes_are_named(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config({"policy": table}, origin="site.toml")


def test_policy_is_pure() -> None:
    package = Path(__file__).resolve().parent.parent / "sd_batch"
    source = (package / "vm" / "site_policy.py").read_text()
    modules = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert modules <= {
        "__future__",
        "json",
        "collections.abc",
        "dataclasses",
        "pathlib",
        "typing",
        "errors",
        "lang",
        "lang.budget",
        "lang.model",
        "spec",
    }, modules


def test_the_run_time_limit_is_the_sites_and_reaches_the_helpers_limits() -> None:
    from sd_batch.batch.key import JobLimits

    config = parse_config({"policy": {"max_run_seconds": 5}})
    assert JobLimits.of(config.policy).run_timeout_seconds == 5.0
    assert JobLimits.of(SitePolicy()).run_timeout_seconds == 24 * 3600.0
    with pytest.raises(ConfigError, match="max_run_seconds must be a whole number >= 1"):
        parse_config({"policy": {"max_run_seconds": 0}})
