"""Site policy where it is enforced: `jobs.prepare` (root side) on libvirt's test driver.

Each test builds a job's input disk as PREPARE_JOB does (the job ad, the sandbox with its .sf
files) and hands it to `jobs.prepare` with a private site config on `test:///ABS/node.xml`: what
a job tries through its own description is refused with a message the user can act on (a hold),
and nothing is left behind. One test runs the real hook process to pin the HoldReason text.
"""

from __future__ import annotations

import io
import json
import threading

import pytest

from sd_batch.batch import jobs
from sd_batch.batch.key import JobKey
from sd_batch.errors import Disposition, PolicyError, PolicyLimitReached, SdError
from sd_batch.hypervisor.connections import Connections

from conftest import MINIMAL, JobSite, held, job_site

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
classad2 = pytest.importorskip("classad2", reason="the htcondor bindings are not installed")


site = job_site  # conftest's fixture, as `site` here


# --- limits -------------------------------------------------------------------------------------
def test_a_terabyte_of_memory_is_held_with_the_users_file_line_column(site: JobSite) -> None:
    error = site.refusal(MINIMAL + 'memory "1T";\n}\n')
    assert isinstance(error, PolicyError)
    assert held(error) == (
        "my.sf:3:5: sfConfig:memory 1048576 MiB is over the site limit of "
        "8192 MiB; ask for less memory"
    )


def test_the_site_limit_comes_from_the_policy_table(site: JobSite) -> None:
    error = site.refusal(MINIMAL + "vcpus 3;\n}\n", policy="max_vcpus = 2\n")
    assert held(error).startswith("my.sf:3:5: sfConfig:vcpus 3 is over the site limit of 2 vCPUs")


def test_a_site_template_over_the_site_limit_is_held_too(site: JobSite) -> None:
    config = site.write_config("max_memory_mib = 128\n")
    with pytest.raises(PolicyError, match="sfConfig:memory 256 MiB is over the site limit of 128"):
        site.prepare(config, '"minimal"')
    assert site.leftovers(config) == []


@pytest.mark.parametrize("vcpus", ["0", "-1"])
def test_zero_or_negative_vcpus_are_held(site: JobSite, vcpus: str) -> None:
    error = site.refusal(MINIMAL + f"vcpus {vcpus};\n}}\n")
    assert held(error).startswith(f"my.sf:3:5: sfConfig:vcpus: {vcpus} is not a vCPU count")


def test_a_petabyte_disk_is_held(site: JobSite) -> None:
    text = (
        '#include "components.sf"\nsfConfig extends VM {\n  kernel "minimal/vmlinux";\n'
        '  disks extends DATA { scratch extends Disk { size "1048576G"; } }\n}\n'
    )
    error = site.refusal(text, policy="require_site_template = false\n")
    assert "sfConfig:disks:scratch:size 1 PiB is over the site limit of 64 GiB" in held(error)


def test_a_description_bomb_is_held_by_the_sites_budget(site: JobSite) -> None:
    """1.9 KB asking for 2^40 components (it grew the helper service to 24 GB): held in well
    under a second, naming the budget, the place and the [policy] key to raise."""
    lines = ["C0 extends { x 1; }"]
    lines += [f"C{n} extends {{ a extends C{n - 1}; b extends C{n - 1}; }}" for n in range(1, 41)]
    bomb = "\n".join(lines) + "\n" + MINIMAL + "bomb extends C40;\n}\n"
    error = site.refusal(bomb)
    assert held(error).endswith(
        "description too large: more than 20000 components (budget "
        "components; raise [policy] max_components)"
    )
    assert held(error).startswith("my.sf:")
    error = site.refusal(bomb, policy="max_components = 100\n")
    assert "more than 100 components" in held(error)


# --- host files and devices ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('kernel "/boot/vmlinuz";', 'sfConfig:kernel "/boot/vmlinuz" is outside the site image'),
        ('initrd "../../etc/shadow";', 'sfConfig:initrd "../../etc/shadow" is outside the site'),
        (
            'disks extends DATA { root extends Disk { image "/dev/sda"; } }',
            'sfConfig:disks:root:image "/dev/sda" is outside the site image folder',
        ),
        (
            'disks extends DATA { root extends Disk { image "../../etc/shadow"; } }',
            'sfConfig:disks:root:image "../../etc/shadow" is outside the site image folder',
        ),
    ],
)
def test_host_paths_and_devices_are_held(site: JobSite, line: str, message: str) -> None:
    for policy in ("", "require_site_template = false\n"):
        assert message in held(site.refusal(MINIMAL + line + "\n}\n", policy))


def test_include_of_a_host_file_is_not_found(site: JobSite) -> None:
    error = site.refusal('#include "/etc/shadow"\n' + MINIMAL + "}\n")
    assert held(error).startswith('my.sf:1:1: cannot find include "/etc/shadow"; searched: ')
    assert "/etc" not in held(error).partition("searched: ")[2].split(", ")


def test_envproperty_is_held_and_the_environment_never_read(
    site: JobSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SD_POLICY_SECRET", "leak")
    error = site.refusal(MINIMAL + 'cmdline OPTIONAL("x") ENVPROPERTY SD_POLICY_SECRET;\n}\n')
    assert "environment variables are not available" in held(error)
    error = site.refusal(MINIMAL + "cmdline PROPERTY SD_POLICY_SECRET;\n}\n")
    assert "property SD_POLICY_SECRET is not set" in held(error)


# --- the template rule, networks ----------------------------------------------------------------
def test_a_network_is_held_when_the_site_allows_none(site: JobSite) -> None:
    error = site.refusal(MINIMAL + 'network "default";\n}\n')
    assert held(error) == (
        'my.sf:3:5: sfConfig:network "default": jobs get no network on this site; set network NULL'
    )


def test_a_site_without_user_descriptions_holds_them(site: JobSite) -> None:
    error = site.refusal(MINIMAL + "}\n", policy="allow_user_descriptions = false\n")
    assert held(error) == (
        "this site does not run job descriptions of their own (my.sf); "
        "name a site template instead (sd templates lists them)"
    )


def test_a_description_extending_no_site_template_is_held(site: JobSite) -> None:
    text = '#include "components.sf"\nsfConfig extends VM {\n  kernel "minimal/vmlinux";\n}\n'
    assert "sfConfig does not extend a site template" in held(site.refusal(text))


def test_a_users_own_copy_of_a_template_is_not_the_site_template(site: JobSite) -> None:
    (site.sandbox / "minimal.sf").write_text(
        '#include "components.sf"\nMinimalVM extends VM { kernel "minimal/vmlinux"; }\n'
        "sfConfig extends MinimalVM;\n",
        encoding="utf-8",
    )
    config = site.write_config()
    with pytest.raises(PolicyError, match="does not extend a site template"):
        site.prepare(config, '"my.sf"', MINIMAL + "}\n")
    (site.sandbox / "minimal.sf").unlink()


@pytest.mark.parametrize("line", ['kernel "minimal/initrd.img";', 'cmdline "init=/bin/sh";'])
def test_overriding_the_templates_kernel_or_cmdline_is_held(site: JobSite, line: str) -> None:
    assert "differs from the site template minimal" in held(site.refusal(MINIMAL + line + "\n}\n"))


def test_allowed_overrides_prepare_a_vm(site: JobSite) -> None:
    config = site.write_config()
    prepared = site.prepare(config, '"my.sf"', MINIMAL + 'memory "1G";\n    vcpus 2;\n}\n')
    assert (prepared.memory_mib, prepared.vcpus, prepared.description) == (1024, 2, "my.sf")
    site.clean_up(config)
    assert site.leftovers(config) == []


def test_a_templates_tbd_fields_are_the_users_to_fill(site: JobSite) -> None:
    folder = site.root / "templates"
    folder.mkdir()
    (folder / "custom.sf").write_text(
        '#include "minimal.sf"\nCustomVM extends MinimalVM {\n    cmdline TBD;\n}\n'
        "sfConfig extends CustomVM;\n",
        encoding="utf-8",
    )
    config = site.write_config(templates=(folder,))
    text = '#include "custom.sf"\nsfConfig extends CustomVM {\n    cmdline "console=ttyS0";\n'
    prepared = site.prepare(config, '"my.sf"', text + "    memory 512;\n}\n")
    assert prepared.memory_mib == 512
    site.clean_up(config)
    with pytest.raises(
        PolicyError,
        match='sfConfig:kernel "minimal/initrd.img" differs from the site template custom',
    ):
        site.prepare(config, '"my.sf"', text + '    kernel "minimal/initrd.img";\n}\n')
    assert site.leftovers(config) == []


# --- injection, names ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a<b", "it's", "x&y"])
def test_a_vm_name_with_markup_is_held(site: JobSite, name: str) -> None:
    error = site.refusal(MINIMAL + f'name "{name}";\n}}\n')
    assert held(error).startswith(f"my.sf:3:5: sfConfig:name: {json.dumps(name)} is not a VM name")


def test_a_cmdline_closing_its_element_reaches_libvirt_as_plain_text(site: JobSite) -> None:
    cmdline = "console=ttyS0 </cmdline><kernel>/etc/shadow</kernel> &amp; 'x'"
    text = (
        MINIMAL.replace("MinimalVM {", "VM {")
        + f'kernel "minimal/vmlinux";\n    cmdline "{cmdline}";\n}}\n'
    )
    config = site.write_config("require_site_template = false\n")
    prepared = site.prepare(config, '"my.sf"', text)
    os_element = site.domain_xml(config, prepared.domain).find("os")
    assert os_element is not None
    assert os_element.findtext("cmdline") == cmdline
    assert os_element.findtext("kernel") == str(site.root / "images" / "minimal" / "vmlinux")
    site.clean_up(config)


def test_two_jobs_asking_for_the_same_name_get_different_domains(site: JobSite) -> None:
    config = site.write_config()
    text = MINIMAL + 'name "same";\n}\n'
    first = site.prepare(config, '"my.sf"', text)
    second = site.prepare(config, '"my.sf"', text)
    assert first.domain != second.domain
    assert {first.domain, second.domain} <= {
        d.name for d in site.connections(config.default_uri).list_domains()
    }
    assert "same" not in {d.name for d in site.connections(config.default_uri).list_domains()}
    site.clean_up(config)
    assert site.leftovers(config) == []


# --- VM counts ----------------------------------------------------------------------------------
def test_a_users_vm_limit_sends_the_next_job_back_to_idle(site: JobSite) -> None:
    config = site.write_config("max_vms_per_user = 1\n")
    site.prepare(config, '"minimal"')
    with pytest.raises(PolicyLimitReached, match="site limit per user is 1") as caught:
        site.prepare(config, '"minimal"')
    assert caught.value.disposition is Disposition.REQUEUE
    assert len(site.job_ids(config)) == 1
    site.clean_up(config)
    site.prepare(config, '"minimal"')  # room again
    site.clean_up(config)


def test_concurrent_prepares_never_pass_the_vm_limit_together(site: JobSite) -> None:
    config = site.write_config("max_vms_per_user = 1\n")
    disks = [site.job('"minimal"') for _ in range(4)]
    start = threading.Barrier(len(disks))
    outcomes: list[str] = []

    def prepare(key: JobKey, disk: bytes) -> None:
        connections = Connections()
        start.wait()
        try:
            jobs.prepare(config, key, io.BytesIO(disk), connections=connections)
            outcomes.append("prepared")
        except PolicyLimitReached:
            outcomes.append("requeued")
        finally:
            connections.close()

    threads = [threading.Thread(target=prepare, args=job) for job in disks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["prepared", "requeued", "requeued", "requeued"]
    assert len(site.job_ids(config)) == 1
    site.clean_up(config)


# --- the HoldReason, through the real hook ------------------------------------------------------
def test_prepare_job_hook_holds_with_the_policy_message(site: JobSite) -> None:
    config = site.write_config()
    ad = site.submit('"my.sf"', sf_text=MINIMAL + 'memory "1T";\n}\n')
    done = site.prepare_job_hook(ad)
    updates = classad2.parseOne(done.stdout.decode(), classad2.ParserType.Old)
    assert 1 <= updates.eval("HookStatusCode") <= 299, done.stderr
    assert updates.eval("HookStatusMessage") == (
        "sd-batch: my.sf:3:5: sfConfig:memory 1048576 MiB is over the site limit of 8192 MiB; "
        "ask for less memory"
    )
    assert site.leftovers(config) == []


@pytest.mark.parametrize("value", ["42", '{ "minimal" }', "ProcId + 1"])
def test_the_root_side_holds_an_sdvmdescription_that_is_not_a_string(
    site: JobSite, value: str
) -> None:
    """The helper reads the ad again from the input disk: a hook that let such a job through
    (an older one, or a forged input) still gets a hold, and nothing is left."""
    config = site.write_config()
    with pytest.raises(SdError) as caught:
        site.prepare(config, value)
    assert caught.value.disposition is Disposition.HOLD
    assert held(caught.value).startswith(
        f"SDVMDescription = {value} does not name a VM description (it must be a string)"
    )
    assert site.leftovers(config) == []


def test_a_vm_of_its_own_asking_for_300_blank_disks_is_held(site: JobSite) -> None:
    disks = "".join(f'    d{n} extends Disk {{ size "64G"; }}\n' for n in range(300))
    sf = (
        '#include "components.sf"\nsfConfig extends VM {\n  kernel "minimal/vmlinux";\n'
        f"  disks extends DATA {{\n{disks}  }}\n}}\n"
    )
    error = site.refusal(sf, "require_site_template = false\n")
    assert held(error) == (
        "my.sf:4:3: sfConfig:disks: 300 disks are over the site limit of 8 "
        "disks per VM ([policy] max_disks); ask for fewer disks"
    )
