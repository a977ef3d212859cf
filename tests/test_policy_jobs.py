"""Site policy where it is enforced: `jobs.prepare` (root side) on libvirt's test driver.

Each test builds a job's input disk as PREPARE_JOB does (the job ad, the sandbox with its .sf
files) and hands it to `jobs.prepare` with a private site config on `test:///ABS/node.xml`: what
a job tries through its own description is refused with a message the user can act on (a hold),
and nothing is left behind. One test runs the real hook process to pin the HoldReason text.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_batch.batch import jobs
from sd_batch.batch.key import JobKey
from sd_batch.condor.jobad import job_ad_from_submit
from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, SiteConfig, load_config
from sd_batch.data import HOOKS_DIR
from sd_batch.errors import DescriptionError, Disposition, PolicyError, PolicyLimitReached, SdError
from sd_batch.guest.contract import Manifest
from sd_batch.hypervisor.connections import Connections
from sd_batch.ledger.store import Ledger
from sd_batch.staging import write_input_tar

from conftest import fake_kernel, write_node, write_site_toml

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
classad2 = pytest.importorskip("classad2", reason="the htcondor bindings are not installed")

MINIMAL = '#include "minimal.sf"\nsfConfig extends MinimalVM {\n    '


@dataclass
class Site:
    root: Path
    sandbox: Path
    connections: Connections
    count: int = 0

    @property
    def config_path(self) -> Path:
        return self.root / "site.toml"

    def write_config(self, policy: str = "", templates: tuple[Path, ...] = ()) -> SiteConfig:
        write_site_toml(
            self.root,
            f"test://{self.root / 'node.xml'}",
            template_dirs=[*templates, BUILTIN_TEMPLATE_DIR],
            tables=f"[policy]\n{policy}",
        )
        return load_config(self.config_path)

    def job(self, description: str, sf_text: str | None = None) -> tuple[JobKey, bytes]:
        """A job asking for DESCRIPTION (with my.sf holding SF_TEXT): its key and input disk."""
        inputs = ""
        if sf_text is not None:
            (self.sandbox / "my.sf").write_text(sf_text, encoding="utf-8")
            inputs = "transfer_input_files = my.sf\n"
        self.count += 1
        submit = f"executable = /bin/true\n{inputs}+SDVMDescription = {description}\nqueue\n"
        (ad,) = job_ad_from_submit(
            submit,
            submit_dir=self.sandbox,
            owner="tester",
            schedd_name=f"policy-{os.getpid()}-{self.count}@test",
            qdate=1700000000,
        )
        job_id = next(
            line.split('"')[1] for line in ad.splitlines() if line.startswith("GlobalJobId = ")
        )
        out = io.BytesIO()
        write_input_tar(
            self.sandbox, Manifest(("/bin/true",), {}, "."), out, job_ad_text=ad, max_bytes=1 << 30
        )
        return JobKey(os.getuid(), job_id), out.getvalue()

    def prepare(
        self,
        config: SiteConfig,
        description: str,
        sf_text: str | None = None,
        key: JobKey | None = None,
    ) -> jobs.PreparedJob:
        made_key, disk = self.job(description, sf_text)
        return jobs.prepare(config, key or made_key, io.BytesIO(disk), connections=self.connections)

    def refusal(self, sf_text: str, policy: str = "") -> SdError:
        config = self.write_config(policy)
        with pytest.raises(SdError) as caught:
            self.prepare(config, '"my.sf"', sf_text)
        assert caught.value.disposition is Disposition.HOLD
        assert self.leftovers(config) == []
        return caught.value

    def leftovers(self, config: SiteConfig) -> list[str]:
        with Ledger.for_site(config) as ledger:
            rows = [f"{o.kind.value} {o.owner_id}" for o in ledger.owners()]
        folder = config.state_dir / "jobs"
        return rows + (sorted(str(p) for p in folder.iterdir()) if folder.is_dir() else [])

    def domain_xml(self, config: SiteConfig, domain: str) -> ET.Element:
        hv = self.connections(config.default_uri)
        return ET.fromstring(hv._lookup(domain).XMLDesc(0))  # type: ignore[attr-defined]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    write_node(tmp_path / "node.xml", cpus=2, memory_kib=4 << 20)
    fake_kernel(tmp_path / "images")
    sandbox = tmp_path / "scratch"
    sandbox.mkdir()
    made = Site(tmp_path, sandbox, Connections())
    yield made
    made.connections.close()


def held(error: SdError) -> str:
    """The HoldReason's text, as the hook writes it (one line, file:line:col first)."""
    text = error.headline() if isinstance(error, DescriptionError) else str(error)
    assert "\n" not in text
    return text


# --- limits -------------------------------------------------------------------------------------
def test_a_terabyte_of_memory_is_held_with_the_users_file_line_column(site: Site) -> None:
    error = site.refusal(MINIMAL + 'memory "1T";\n}\n')
    assert isinstance(error, PolicyError)
    assert held(error) == (
        "my.sf:3:5: sfConfig:memory 1048576 MiB is over the site limit of "
        "8192 MiB; ask for less memory"
    )


def test_the_site_limit_comes_from_the_policy_table(site: Site) -> None:
    error = site.refusal(MINIMAL + "vcpus 3;\n}\n", policy="max_vcpus = 2\n")
    assert held(error).startswith("my.sf:3:5: sfConfig:vcpus 3 is over the site limit of 2 vCPUs")


def test_a_site_template_over_the_site_limit_is_held_too(site: Site) -> None:
    config = site.write_config("max_memory_mib = 128\n")
    with pytest.raises(PolicyError, match="sfConfig:memory 256 MiB is over the site limit of 128"):
        site.prepare(config, '"minimal"')
    assert site.leftovers(config) == []


@pytest.mark.parametrize("vcpus", ["0", "-1"])
def test_zero_or_negative_vcpus_are_held(site: Site, vcpus: str) -> None:
    error = site.refusal(MINIMAL + f"vcpus {vcpus};\n}}\n")
    assert held(error).startswith(f"my.sf:3:5: sfConfig:vcpus: {vcpus} is not a vCPU count")


def test_a_petabyte_disk_is_held(site: Site) -> None:
    text = (
        '#include "components.sf"\nsfConfig extends VM {\n  kernel "minimal/vmlinux";\n'
        '  disks extends DATA { scratch extends Disk { size "1048576G"; } }\n}\n'
    )
    error = site.refusal(text, policy="require_site_template = false\n")
    assert "sfConfig:disks:scratch:size 1 PiB is over the site limit of 64 GiB" in held(error)


def test_a_description_bomb_is_held_by_the_sites_budget(site: Site) -> None:
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
def test_host_paths_and_devices_are_held(site: Site, line: str, message: str) -> None:
    for policy in ("", "require_site_template = false\n"):
        assert message in held(site.refusal(MINIMAL + line + "\n}\n", policy))


def test_include_of_a_host_file_is_not_found(site: Site) -> None:
    error = site.refusal('#include "/etc/shadow"\n' + MINIMAL + "}\n")
    assert held(error).startswith('my.sf:1:1: cannot find include "/etc/shadow"; searched: ')
    assert "/etc" not in held(error).partition("searched: ")[2].split(", ")


def test_envproperty_is_held_and_the_environment_never_read(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SD_POLICY_SECRET", "leak")
    error = site.refusal(MINIMAL + 'cmdline OPTIONAL("x") ENVPROPERTY SD_POLICY_SECRET;\n}\n')
    assert "environment variables are not available" in held(error)
    error = site.refusal(MINIMAL + "cmdline PROPERTY SD_POLICY_SECRET;\n}\n")
    assert "property SD_POLICY_SECRET is not set" in held(error)


# --- the template rule, networks ----------------------------------------------------------------
def test_a_network_is_held_when_the_site_allows_none(site: Site) -> None:
    error = site.refusal(MINIMAL + 'network "default";\n}\n')
    assert held(error) == (
        'my.sf:3:5: sfConfig:network "default": jobs get no network on this site; set network NULL'
    )


def test_a_site_without_user_descriptions_holds_them(site: Site) -> None:
    error = site.refusal(MINIMAL + "}\n", policy="allow_user_descriptions = false\n")
    assert held(error) == (
        "this site does not run job descriptions of their own (my.sf); "
        "name a site template instead (sd templates lists them)"
    )


def test_a_description_extending_no_site_template_is_held(site: Site) -> None:
    text = '#include "components.sf"\nsfConfig extends VM {\n  kernel "minimal/vmlinux";\n}\n'
    assert "sfConfig does not extend a site template" in held(site.refusal(text))


def test_a_users_own_copy_of_a_template_is_not_the_site_template(site: Site) -> None:
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
def test_overriding_the_templates_kernel_or_cmdline_is_held(site: Site, line: str) -> None:
    assert "differs from the site template minimal" in held(site.refusal(MINIMAL + line + "\n}\n"))


def test_allowed_overrides_prepare_a_vm(site: Site) -> None:
    config = site.write_config()
    prepared = site.prepare(config, '"my.sf"', MINIMAL + 'memory "1G";\n    vcpus 2;\n}\n')
    assert (prepared.memory_mib, prepared.vcpus, prepared.description) == (1024, 2, "my.sf")
    jobs.cleanup(config, JobKey(os.getuid(), _job_of(site, config)), connections=site.connections)
    assert site.leftovers(config) == []


def test_a_templates_tbd_fields_are_the_users_to_fill(site: Site) -> None:
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
    jobs.cleanup(config, JobKey(os.getuid(), _job_of(site, config)), connections=site.connections)
    with pytest.raises(
        PolicyError,
        match='sfConfig:kernel "minimal/initrd.img" differs from the site template custom',
    ):
        site.prepare(config, '"my.sf"', text + '    kernel "minimal/initrd.img";\n}\n')
    assert site.leftovers(config) == []


# --- injection, names ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a<b", "it's", "x&y"])
def test_a_vm_name_with_markup_is_held(site: Site, name: str) -> None:
    error = site.refusal(MINIMAL + f'name "{name}";\n}}\n')
    assert held(error).startswith(f"my.sf:3:5: sfConfig:name: {json.dumps(name)} is not a VM name")


def test_a_cmdline_closing_its_element_reaches_libvirt_as_plain_text(site: Site) -> None:
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
    jobs.cleanup(config, JobKey(os.getuid(), _job_of(site, config)), connections=site.connections)


def test_two_jobs_asking_for_the_same_name_get_different_domains(site: Site) -> None:
    config = site.write_config()
    text = MINIMAL + 'name "same";\n}\n'
    first = site.prepare(config, '"my.sf"', text)
    second = site.prepare(config, '"my.sf"', text)
    assert first.domain != second.domain
    assert {first.domain, second.domain} <= {
        d.name for d in site.connections(config.default_uri).list_domains()
    }
    assert "same" not in {d.name for d in site.connections(config.default_uri).list_domains()}
    for owner in _jobs(config):
        jobs.cleanup(config, JobKey(os.getuid(), owner), connections=site.connections)
    assert site.leftovers(config) == []


# --- VM counts ----------------------------------------------------------------------------------
def test_a_users_vm_limit_sends_the_next_job_back_to_idle(site: Site) -> None:
    config = site.write_config("max_vms_per_user = 1\n")
    site.prepare(config, '"minimal"')
    with pytest.raises(PolicyLimitReached, match="site limit per user is 1") as caught:
        site.prepare(config, '"minimal"')
    assert caught.value.disposition is Disposition.REQUEUE
    (owner,) = _jobs(config)
    jobs.cleanup(config, JobKey(os.getuid(), owner), connections=site.connections)
    site.prepare(config, '"minimal"')  # room again
    for owner in _jobs(config):
        jobs.cleanup(config, JobKey(os.getuid(), owner), connections=site.connections)


def test_concurrent_prepares_never_pass_the_vm_limit_together(site: Site) -> None:
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
    (owner,) = _jobs(config)
    jobs.cleanup(config, JobKey(os.getuid(), owner), connections=site.connections)


def _jobs(config: SiteConfig) -> list[str]:
    """The job ids of the job owners in the ledger."""
    with Ledger.for_site(config) as ledger:
        return [o.owner_id.partition(":")[2] for o in ledger.owners()]


def _job_of(site: Site, config: SiteConfig) -> str:
    (job,) = _jobs(config)
    return job


# --- the HoldReason, through the real hook ------------------------------------------------------
def test_prepare_job_hook_holds_with_the_policy_message(site: Site) -> None:
    config = site.write_config()
    (site.sandbox / "my.sf").write_text(MINIMAL + 'memory "1T";\n}\n', encoding="utf-8")
    ad = job_ad_from_submit(
        'executable = /bin/true\ntransfer_input_files = my.sf\n+SDVMDescription = "my.sf"\nqueue\n',
        submit_dir=site.sandbox,
        owner="tester",
        schedd_name="hook@test",
        qdate=1700000000,
    )[0]
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(site.root),
        "SD_BATCH_CONFIG": str(site.config_path),
        "CONDOR_CONFIG": "/dev/null",
        "_CONDOR_SMARTDOMAINS_HELPER": f"{sys.executable} -m sd_batch.batch.privileged",
    }
    done = subprocess.run(
        [str(HOOKS_DIR / "prepare_job")],
        input=ad.encode(),
        cwd=site.sandbox,
        env=environ,
        capture_output=True,
        timeout=60,
        check=False,
    )
    updates = classad2.parseOne(done.stdout.decode(), classad2.ParserType.Old)
    assert 1 <= updates.eval("HookStatusCode") <= 299, done.stderr
    assert updates.eval("HookStatusMessage") == (
        "sd-batch: my.sf:3:5: sfConfig:memory 1048576 MiB is over the site limit of 8192 MiB; "
        "ask for less memory"
    )
    assert site.leftovers(config) == []


@pytest.mark.parametrize("value", ["42", '{ "minimal" }', "ProcId + 1"])
def test_the_root_side_holds_an_sdvmdescription_that_is_not_a_string(
    site: Site, value: str
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


def test_a_vm_of_its_own_asking_for_300_blank_disks_is_held(site: Site) -> None:
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
