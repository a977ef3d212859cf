"""The VM is the slot: `request_memory` / `request_cpus` / `request_disk` and the starter's
machine ad size a job's VM, on libvirt's test driver through `jobs.prepare` (the root side)
and, for the hostile ads, through the real PREPARE_JOB hook process.

Each job is what condor_submit and the site transform make of a submit file (the real
bindings), with the slot's machine ad on its input disk as the hook puts it there. The domain
XML libvirt keeps is read back: its <memory> and <vcpu> are what the guest gets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sd_batch.batch import jobs
from sd_batch.condor.jobad import format_updates
from sd_batch.config.site import SiteConfig
from sd_batch.errors import Disposition, SdError

from conftest import MINIMAL, JobSite, held, job_site

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
classad2 = pytest.importorskip("classad2", reason="the htcondor bindings are not installed")


site = job_site  # conftest's fixture, as `site` here


TEMPLATE_NEEDS = (
    "SmartDomainsTemplateMemory = [ minimal = 256 ]\n"
    "SmartDomainsTemplateCpus = [ minimal = 1 ]\n"
    "SmartDomainsTemplateDisk = [ minimal = 262144 ]\n"
)


def slot(memory: int, cpus: int, disk_kib: int = 10 << 20) -> str:
    """A dynamic slot's machine ad, as the starter writes `.machine.ad`."""
    return (
        format_updates(
            {
                "Name": "slot1_1@worker",
                "Cpus": cpus,
                "Memory": memory,
                "Disk": disk_kib,
                "HasSmartDomains": True,
            }
        )
        + TEMPLATE_NEEDS
    )


def vm_of(site: JobSite, config: SiteConfig, prepared: jobs.PreparedJob) -> tuple[int, int]:
    """(MiB, vCPUs) as libvirt holds the domain, and the job cleaned up."""
    xml = site.domain_xml(config, prepared.domain)
    memory = xml.find("memory")
    assert memory is not None and memory.get("unit", "KiB") == "KiB"
    size = (int(memory.text or 0) // 1024, int(xml.findtext("vcpu") or 0))
    assert size == (prepared.memory_mib, prepared.vcpus)
    site.clean_up(config)
    assert site.leftovers(config) == []
    return size


def refused(site: JobSite, config: SiteConfig, ad: str, machine: str | None) -> str:
    with pytest.raises(SdError) as caught:
        site.prepare_ad(config, ad, machine)
    assert caught.value.disposition is Disposition.HOLD
    assert site.leftovers(config) == []
    return held(caught.value)


# --- memory and vCPUs -----------------------------------------------------------------------------
def test_a_job_asking_for_nothing_gets_its_templates_size(site: JobSite) -> None:
    config = site.write_config()
    ad = site.submit('"minimal"')
    assert vm_of(site, config, site.prepare_ad(config, ad, slot(256, 1))) == (256, 1)
    assert vm_of(site, config, site.prepare_ad(config, ad, None)) == (256, 1)  # no machine ad


def test_explicit_requests_size_the_vm(site: JobSite) -> None:
    config = site.write_config()
    ad = site.submit('"minimal"', "request_memory = 1024\nrequest_cpus = 2\n")
    assert vm_of(site, config, site.prepare_ad(config, ad, slot(1024, 2))) == (1024, 2)
    # HTCondor rounds the slot up (to 128 MiB): the VM is what the job asked for, within it
    odd = site.submit('"minimal"', "request_memory = 1000\n")
    assert vm_of(site, config, site.prepare_ad(config, odd, slot(1024, 1))) == (1000, 1)


def test_a_request_below_the_template_gets_the_template(site: JobSite) -> None:
    config = site.write_config()
    ad = site.submit('"minimal"', "request_memory = 64\n")
    assert vm_of(site, config, site.prepare_ad(config, ad, slot(256, 1))) == (256, 1)


def test_a_vm_is_never_larger_than_its_slot(site: JobSite) -> None:
    """A slot smaller than the request (a static slot the job's own requirements let it
    take): the VM is the slot."""
    config = site.write_config()
    ad = site.submit('"minimal"', "request_memory = 2048\nrequest_cpus = 4\n")
    assert vm_of(site, config, site.prepare_ad(config, ad, slot(1024, 2))) == (1024, 2)


def test_a_forged_bigger_slot_gives_no_more_than_the_request(site: JobSite) -> None:
    """The slot user can rewrite .machine.ad: it can only make its VM smaller."""
    config = site.write_config()
    ad = site.submit('"minimal"', "request_memory = 512\n")
    assert vm_of(site, config, site.prepare_ad(config, ad, slot(10**9, 10**6))) == (512, 1)


def test_a_slot_too_small_for_its_template_is_held_saying_what_to_request(site: JobSite) -> None:
    config = site.write_config()
    ad = site.submit('"minimal"', "request_memory = 100\n")
    assert refused(site, config, ad, slot(128, 1)) == (
        "the site template minimal needs 256 MiB of memory, more than the job's slot has "
        "(128 MiB); write request_memory = 256 in the submit file"
    )


def test_a_jobs_own_sf_may_change_its_size_within_its_slot(site: JobSite) -> None:
    config = site.write_config()
    sf = MINIMAL + "memory 768;\n    vcpus 2;\n}\n"
    ad = site.submit('"my.sf"', "request_memory = 1024\nrequest_cpus = 2\n", sf)
    assert vm_of(site, config, site.prepare_ad(config, ad, slot(1024, 2))) == (1024, 2)
    within = site.submit('"my.sf"', "request_memory = 768\nrequest_cpus = 2\n", sf)
    assert vm_of(site, config, site.prepare_ad(config, within, slot(768, 2))) == (768, 2)


def test_a_jobs_own_sf_asking_for_more_than_its_slot_is_held(site: JobSite) -> None:
    config = site.write_config()
    ad = site.submit('"my.sf"', "request_memory = 1024\n", MINIMAL + "memory 4096;\n}\n")
    assert refused(site, config, ad, slot(1024, 1)) == (
        "my.sf needs 4096 MiB of memory, more than the job's slot has (1024 MiB); "
        "write request_memory = 4096 in the submit file"
    )
    cpus = site.submit('"my.sf"', "request_memory = 256\n", MINIMAL + "vcpus 3;\n}\n")
    assert refused(site, config, cpus, slot(256, 2)) == (
        "my.sf needs 3 vCPUs, more than the job's slot has (2 vCPUs); write request_cpus = 3 "
        "in the submit file"
    )


# --- site policy on the requests ------------------------------------------------------------------
def test_requests_over_site_policy_are_held_naming_the_submit_command(site: JobSite) -> None:
    config = site.write_config("max_memory_mib = 4096\nmax_vcpus = 4\n")
    ad = site.submit('"minimal"', "request_memory = 8192\n")
    assert refused(site, config, ad, slot(8192, 1)) == (
        "request_memory 8192 MiB is over the site limit of 4096 MiB per job VM ([policy] "
        "max_memory_mib); write request_memory = 4096 or less"
    )
    ad = site.submit('"minimal"', "request_cpus = 6\n")
    assert refused(site, config, ad, None) == (
        "request_cpus 6 is over the site limit of 4 vCPUs per job VM ([policy] max_vcpus); "
        "write request_cpus = 4 or less"
    )
    ad = site.submit('"minimal"', "request_gpus = 1\n")
    assert refused(site, config, ad, slot(256, 1)).startswith(
        "request_gpus 1: this site gives job VMs no GPUs (no device passthrough)"
    )


HOSTILE = """ClusterId = 7
ProcId = 0
GlobalJobId = "{schedd}#7.0#1700000000"
Cmd = "/bin/true"
Owner = "tester"
Iwd = "/tmp"
SDVMDescription = "minimal"
HookKeyword = "SMARTDOMAINS"
RequestMemory = {memory}
RequestCpus = {cpus}
RequestDisk = 1024
"""


@pytest.mark.parametrize(
    ("memory", "cpus", "says"),
    [
        (1073741824, 1, "request_memory 1073741824 MiB is over the site limit of 8192 MiB"),
        (256, 10000, "request_cpus 10000 is over the site limit of 8 vCPUs"),
        ("1e300", 1, "request_memory 1e+300 MiB is over the site limit of 8192 MiB"),
    ],
    ids=["1TB", "10000cpus", "1e300"],
)
def test_hostile_requests_are_held_by_the_real_hook(
    site: JobSite, memory: object, cpus: int, says: str
) -> None:
    config = site.write_config()
    ad = HOSTILE.format(schedd=f"hostile-{os.getpid()}-{cpus}", memory=memory, cpus=cpus)
    (site.sandbox / ".machine.ad").write_text(slot(256, 1), encoding="utf-8")
    done = site.prepare_job_hook(
        ad,
        _CONDOR_SCRATCH_DIR=str(site.sandbox),
        _CONDOR_MACHINE_AD=str(site.sandbox / ".machine.ad"),
    )
    updates = classad2.parseOne(done.stdout.decode(), classad2.ParserType.Old)
    assert done.returncode != 0 and 1 <= updates.eval("HookStatusCode") <= 299, done.stderr
    assert says in updates.eval("HookStatusMessage")
    assert site.leftovers(config) == []


# --- request_disk -------------------------------------------------------------------------------
#: A VM of its own (the site allows them here) with a blank 1 GiB scratch disk.
SCRATCH = (
    '#include "components.sf"\nsfConfig extends VM {\n    kernel "minimal/vmlinux";\n'
    '    memory 256;\n    disks extends DATA { scratch extends Disk { size "1G"; } }\n}\n'
)
OWN_VMS = "require_site_template = false\n"


def test_the_output_disk_and_blank_disks_together_fit_the_slots_disk(site: JobSite) -> None:
    config = site.write_config(OWN_VMS)
    ad = site.submit('"my.sf"', "request_disk = 2G\n", SCRATCH)
    assert vm_of(site, config, site.prepare_ad(config, ad, slot(256, 1, 2 << 20))) == (256, 1)
    small = site.submit('"my.sf"', "request_disk = 1G\n", SCRATCH)
    assert refused(site, config, small, slot(256, 1, 1 << 20)) == (
        "the VM of my.sf can write 1280 MiB to the host's disk (output disk 256 MiB, blank "
        "disks 1024 MiB), more than the job's slot has (1024 MiB); write request_disk = 1280M "
        "in the submit file"
    )


def test_a_slot_without_room_for_the_output_disk_is_held(site: JobSite) -> None:
    config = site.write_config("output_disk_mib = 64\n")
    ad = site.submit('"minimal"')
    assert refused(site, config, ad, slot(256, 1, 32 << 10)).endswith(
        "(output disk 64 MiB), more than the job's slot has (32 MiB); write request_disk = 64M "
        "in the submit file"
    )
    assert vm_of(site, config, site.prepare_ad(config, ad, slot(256, 1, 64 << 10))) == (256, 1)


def test_the_blank_disks_are_made_at_the_size_counted(site: JobSite) -> None:
    """What the guest can write is each disk's own size: a job writing more gets ENOSPC in
    its VM, never a fuller host disk (the volumes libvirt made, read back)."""
    config = site.write_config(OWN_VMS)
    ad = site.submit('"my.sf"', "request_disk = 2G\n", SCRATCH)
    prepared = site.prepare_ad(config, ad, slot(256, 1, 2 << 20))
    xml = site.domain_xml(config, prepared.domain)
    sources = [d.find("source") for d in xml.iter("disk")]
    files = [Path(s.get("file") or "") for s in sources if s is not None]
    assert {f.name.rsplit("-", 1)[-1] for f in files} >= {"scratch.qcow2", "output.img"}
    output = next(f for f in files if f.name == "output.img")
    assert output.stat().st_size == 256 << 20  # sparse, of the policy's size
    vm_of(site, config, prepared)


# --- sd run: the slot the startd would carve --------------------------------------------------
CRON = """#!/bin/sh
echo 'HasSmartDomains = {up}'
echo 'SmartDomainsOfflineReason = "{reason}"'
echo 'SmartDomainsTemplateMemory = [ minimal = 256 ]'
echo 'SmartDomainsTemplateCpus = [ minimal = 1 ]'
echo 'SmartDomainsTemplateDisk = [ minimal = 262144 ]'
echo 'SmartDomainsOutputDisk = 262144'
"""


def run_with_stub_hooks(
    tmp_path: Path, up: str, prepare_line: str, requests: str, description: str = "minimal"
) -> Any:
    """`sd run` of a minimal job with stub hooks: a startd cron saying HasSmartDomains = UP
    (reason "no guest image") and minimal's needs, a PREPARE_JOB running PREPARE_LINE (and
    rewriting nothing: the job runs natively); its one outcome."""
    from sd_batch.localrun.harness import Harness, SlotUser

    hooks, job = tmp_path / "hooks", tmp_path / "job"
    hooks.mkdir()
    job.mkdir()
    if up != "none":  # "none": this machine has no startd cron hook at all
        (hooks / "startd_cron").write_text(CRON.format(up=up, reason="no guest image"))
    (hooks / "prepare_job").write_text(f"#!/bin/sh\ncat >/dev/null\n{prepare_line}\n")
    (hooks / "job_exit").write_text("#!/bin/sh\ncat >/dev/null\n")
    for hook in hooks.iterdir():
        hook.chmod(0o755)
    (job / "job.sh").write_text("#!/bin/sh\nexit 0\n")
    submit = job / "job.sub"
    submit.write_text(f'executable = job.sh\n{requests}+SDVMDescription = "{description}"\nqueue\n')
    progress: list[str] = []
    (outcome,) = Harness(
        submit, SlotUser.current(), hooks_dir=hooks, environ={}, progress=progress.append
    ).run(lambda _outcome: None)
    outcome.progress = progress  # type: ignore[attr-defined]
    return outcome


def test_sd_run_without_a_startd_cron_carves_no_slot(tmp_path: Path) -> None:
    """No cron output at all: no `.machine.ad` (the VM is then sized from the requests alone,
    as PREPARE_JOB does without one), rather than a slot made of condor_submit's defaults."""
    seen = tmp_path / "machine.ad"
    outcome = run_with_stub_hooks(tmp_path, "none", f"cp .machine.ad {seen} || true", "")
    assert outcome.state == "exited", outcome.message
    assert not seen.exists()
    assert any(
        line.startswith("startd cron: ") and "no slot is carved" in line
        for line in outcome.progress
    )


@pytest.mark.parametrize(
    ("description", "requests", "carved"),
    [
        ("minimal", "", (1, 256, 262144)),  # the template's needs, through the transform's requests
        ("minimal", "request_memory = 1000\nrequest_cpus = 2\n", (2, 1024, 262144)),  # rounded up
        ("minimal", "request_disk = 1G\n", (1, 256, 1048576)),
        (
            "my.sf",
            "request_memory = 384\n",
            (1, 384, 262144),
        ),  # no record: at least the output disk
    ],
)
def test_sd_run_writes_the_slot_the_startd_would_carve(
    tmp_path: Path, description: str, requests: str, carved: tuple[int, int, int]
) -> None:
    seen = tmp_path / "machine.ad"
    outcome = run_with_stub_hooks(tmp_path, "true", f"cp .machine.ad {seen}", requests, description)
    assert outcome.state == "exited", outcome.message
    machine = classad2.parseOne(seen.read_text(), classad2.ParserType.Old)
    assert (machine.eval("Cpus"), machine.eval("Memory"), machine.eval("Disk")) == carved
    assert dict(machine.eval("SmartDomainsTemplateMemory")) == {"minimal": 256}


@pytest.mark.parametrize(
    ("up", "requests", "says"),
    [
        ("false", "", "this machine runs no job VMs now (its startd cron says: no guest image)"),
        (
            "true",
            "request_memory = 1000000000\n",
            "no slot of this machine fits the job: it asks for 1000000000 MiB of memory",
        ),
    ],
)
def test_sd_run_leaves_a_job_idle_that_no_slot_here_would_match(
    tmp_path: Path, up: str, requests: str, says: str
) -> None:
    ran = tmp_path / "prepared"
    outcome = run_with_stub_hooks(tmp_path, up, f"touch {ran}", requests)
    assert (outcome.state, outcome.message.startswith(says)) == ("idle", True), outcome.message
    assert not ran.exists()  # PREPARE_JOB never ran: the job never matched


def test_sd_run_reuses_a_recent_online_startd_cron_and_asks_an_offline_node_again(
    tmp_path: Path,
) -> None:
    """A startd matches jobs against its cron's last output (every 5 min): `sd run` reuses an
    online one for a minute, unless the hooks or a watched site file changed; an offline answer
    is never reused. Counted by the cron stub itself."""
    from sd_batch.localrun.harness import Harness, SlotUser
    from sd_batch.localrun.slot import CRON_REUSE_SECONDS, CronCache

    hooks, job, count = tmp_path / "hooks", tmp_path / "job", tmp_path / "cron-runs"
    hooks.mkdir()
    job.mkdir()
    cron = hooks / "startd_cron"
    cron.write_text(
        CRON.format(up="true", reason="").replace(
            "#!/bin/sh\n", f"#!/bin/sh\necho run >> {count}\n"
        )
    )
    (hooks / "prepare_job").write_text("#!/bin/sh\ncat >/dev/null\n")
    (hooks / "job_exit").write_text("#!/bin/sh\ncat >/dev/null\n")
    for hook in hooks.iterdir():
        hook.chmod(0o755)
    (job / "job.sh").write_text("#!/bin/sh\nexit 0\n")
    submit = job / "job.sub"
    submit.write_text('executable = job.sh\n+SDVMDescription = "minimal"\nqueue\n')
    site = tmp_path / "site.toml"
    site.write_text("")
    now = [1000.0]
    cache = CronCache(tmp_path / "cache" / "startd-cron.json", (site,), clock=lambda: now[0])

    def sd_run() -> int:
        (outcome,) = Harness(
            submit, SlotUser.current(), hooks_dir=hooks, environ={}, cron_cache=cache
        ).run(lambda _outcome: None)
        assert outcome.state == "exited", outcome.message
        return len(count.read_text().splitlines())

    assert [sd_run(), sd_run()] == [1, 1]  # the second job matched the first's output
    now[0] += CRON_REUSE_SECONDS + 1
    assert sd_run() == 2  # older than a minute: asked again
    site.write_text("[policy]\n")  # the site changed (as a startd reconfig reruns its cron)
    assert sd_run() == 3
    cron.write_text(
        CRON.format(up="false", reason="no guest image").replace(
            "#!/bin/sh\n", f"#!/bin/sh\necho run >> {count}\n"
        )
    )
    for _ in range(2):  # offline: never reused, so a fixed node is back at the next job
        (outcome,) = Harness(
            submit, SlotUser.current(), hooks_dir=hooks, environ={}, cron_cache=cache
        ).run(lambda _outcome: None)
        assert outcome.state == "idle"
    assert len(count.read_text().splitlines()) == 5
    assert (cache.path.stat().st_mode & 0o777) == 0o600
