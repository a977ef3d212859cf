"""Warm VMs (`batch.warm`): which job may take one (`vm.warm`, pure), and their life on
libvirt's test driver: made paused, taken by a job's prepare (disks plugged in, ledger rows
handed over), left alone by the reaper while a job has it, removed by the job's cleanup, by
the pool's stop, or by the reaper once the service that made it is gone. A job that differs
(its own description, another size) takes the cold path and leaves the warm VM idle.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from sd_batch.batch import jobs
from sd_batch.batch.domains import job_domain
from sd_batch.batch.key import JobKey
from sd_batch.batch.warm import FIRST_BACKOFF, REFILL_AFTER, WarmPool, is_warm
from sd_batch.config.site import SiteConfig, load_config
from sd_batch.deploy.reaper import reap
from sd_batch.errors import ConfigError
from sd_batch.hypervisor.connections import Connections
from sd_batch.hypervisor.types import DomainState
from sd_batch.ledger.store import Ledger, OwnerKind
from sd_batch.vm.domain_xml import DiskSource, ExtraDisk, HostFiles, Owner, build_domain_xml
from sd_batch.vm.domain_xml import OwnerKind as XmlOwnerKind
from sd_batch.vm.spec import DiskFormat, Flavour, KernelBoot, VMSpec
from sd_batch.vm.warm import comparable, job_disk_targets

from conftest import MINIMAL, JobSite, fake_kernel, write_node, write_site_toml


# --- the pure matching ------------------------------------------------------------------------
def _xml(
    name: str, folder: str, *, memory: int = 256, job: bool = True, cmdline: str = "quiet"
) -> str:
    spec = VMSpec(
        name=name,
        memory_mib=memory,
        vcpus=1,
        flavour=Flavour.QEMU,
        boot=KernelBoot(
            PurePosixPath("minimal/vmlinux"), PurePosixPath("minimal/initrd.img"), cmdline
        ),
    )
    extra = (
        (
            ExtraDisk(
                DiskSource(PurePosixPath(f"{folder}/input.img"), DiskFormat.RAW), True, "sd-input"
            ),
            ExtraDisk(
                DiskSource(PurePosixPath(f"{folder}/output.img"), DiskFormat.RAW),
                False,
                "sd-output",
            ),
        )
        if job
        else ()
    )
    files = HostFiles(extra_disks=extra, console_log=PurePosixPath(f"{folder}/{name}.log"))
    return build_domain_xml(spec, files, Owner(XmlOwnerKind.JOB, f"1000:{name}"))


JOB_DISKS = ("/s/jobs/aaaa/input.img", "/s/jobs/aaaa/output.img")


def test_a_job_of_the_warm_vms_template_and_size_matches_it_whatever_its_name_and_folder() -> None:
    job = comparable(_xml("sd-job-aaaa", "/s/jobs/aaaa"), "/s/jobs/aaaa", "sd-job-aaaa", JOB_DISKS)
    warm = comparable(_xml("sd-job-bbbb", "/s/jobs/bbbb", job=False), "/s/jobs/bbbb", "sd-job-bbbb")
    assert job == warm
    assert "aaaa" not in job and "bbbb" not in warm  # names and folders are marks
    assert "sd-input" not in job  # the job's disks are what the claim plugs in


@pytest.mark.parametrize(
    "other", [{"memory": 512}, {"cmdline": "quiet init=/bin/sh"}], ids=["size", "cmdline"]
)
def test_any_other_difference_takes_the_cold_path(other: dict[str, object]) -> None:
    job = comparable(
        _xml("sd-job-aaaa", "/s/jobs/aaaa", **other),  # type: ignore[arg-type]
        "/s/jobs/aaaa",
        "sd-job-aaaa",
        JOB_DISKS,
    )
    warm = comparable(_xml("sd-job-bbbb", "/s/jobs/bbbb", job=False), "/s/jobs/bbbb", "sd-job-bbbb")
    assert job != warm


def test_a_path_outside_the_vms_own_folder_is_compared_as_it_is() -> None:
    """A file the job's XML names elsewhere (not its folder) is never marked away."""
    job = _xml("sd-job-aaaa", "/s/jobs/aaaa").replace("/s/jobs/aaaa/sd-job-aaaa.log", "/tmp/x.log")
    warm = _xml("sd-job-bbbb", "/s/jobs/bbbb", job=False)
    assert comparable(job, "/s/jobs/aaaa", "sd-job-aaaa", JOB_DISKS) != comparable(
        warm, "/s/jobs/bbbb", "sd-job-bbbb"
    )


def test_the_disks_to_plug_in_are_the_jobs_own_as_a_cold_define_has_them() -> None:
    disks = job_disk_targets(_xml("sd-job-aaaa", "/s/jobs/aaaa"), JOB_DISKS)
    assert [ET.fromstring(d).findtext("serial") for d in disks] == ["sd-input", "sd-output"]
    assert ET.fromstring(disks[0]).find("readonly") is not None
    assert ET.fromstring(disks[1]).find("source").get("file") == JOB_DISKS[1]  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ['"minimal"', '["../x.sf"]', "[1]"])
def test_the_warm_list_takes_template_names_only(tmp_path: Path, value: str) -> None:
    path = write_site_toml(tmp_path, None, tables=f"[jobs]\nwarm = {value}\n")
    with pytest.raises(ConfigError, match="warm"):
        load_config(path)


def test_no_warm_vms_unless_the_site_asks(tmp_path: Path) -> None:
    assert load_config(write_site_toml(tmp_path, None)).warm_templates == ()
    asked = write_site_toml(tmp_path, None, tables='[jobs]\nwarm = ["minimal", "minimal"]\n')
    assert load_config(asked).warm_templates == ("minimal",)


# --- their life on the test driver ------------------------------------------------------------
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("classad2", reason="the htcondor bindings are not installed")


class WarmSite(JobSite):
    def write_config(self, policy: str = "", templates: tuple[Path, ...] = ()) -> SiteConfig:
        """The site of `JobSite`, keeping a warm `minimal` VM (a table after [policy]'s)."""
        return super().write_config(f'{policy}\n[jobs]\nwarm = ["minimal"]\n', templates)

    def prepare_warm(
        self, config: SiteConfig, pool: WarmPool, description: str, sf_text: str | None = None
    ) -> tuple[JobKey, jobs.PreparedJob]:
        key, disk = self.job(description, sf_text)
        prepared = jobs.prepare(
            config, key, io.BytesIO(disk), connections=self.connections, warm=pool
        )
        return key, prepared

    def state(self, config: SiteConfig, domain: str) -> DomainState:
        return self.connections(config.default_uri).state(domain).state

    def domains(self, config: SiteConfig) -> set[str]:
        return {d.name for d in self.connections(config.default_uri).list_domains()}


@pytest.fixture
def warm_site(tmp_path: Path) -> Iterator[tuple[WarmSite, SiteConfig, WarmPool]]:
    write_node(tmp_path / "node.xml", cpus=2, memory_kib=4 << 20)
    fake_kernel(tmp_path / "images")
    sandbox = tmp_path / "scratch"
    sandbox.mkdir()
    site = WarmSite(tmp_path, sandbox, Connections())
    config = site.write_config()
    pool = WarmPool(config.warm_templates, site.connections, lambda: load_config(site.config_path))
    yield site, config, pool
    pool.stop()
    site.connections.close()


pytestmark = pytest.mark.libvirt


def test_a_job_of_the_template_takes_the_warm_vm_and_its_cleanup_leaves_nothing(
    warm_site: tuple[WarmSite, SiteConfig, WarmPool],
) -> None:
    site, config, pool = warm_site
    assert pool.fill_once() is None
    (warm,) = pool.idle()
    assert site.state(config, warm.key.domain) is DomainState.PAUSED
    key, prepared = site.prepare_warm(config, pool, '"minimal"')
    assert prepared.domain == warm.key.domain != key.domain
    assert pool.idle() == ()
    assert pool.plug(key.uid, key.job_id)  # what the service does after PREPARE_JOB's reply
    assert pool.plug(key.uid, key.job_id) is None  # once
    with Ledger.for_site(config) as ledger:
        assert not any(is_warm(o.owner_id) for o in ledger.owners())  # handed over, not shared
        owner = jobs.prepared_owner(ledger, key, config.default_uri)
        assert job_domain(ledger, owner, key) == warm.key.domain
    dom = site.connections(config.default_uri)._lookup(warm.key.domain)  # type: ignore[attr-defined]
    inactive = ET.fromstring(dom.XMLDesc(2))  # the test driver plugs into the definition only
    assert [d.findtext("serial") for d in inactive.iter("disk")] == ["sd-input", "sd-output"]
    assert jobs.start_paused(config, key, connections=site.connections)  # nothing to start
    # the reaper sees a job that has its VM: neither the domain nor the warm VM's folder go
    assert [
        o.line(dry_run=True) for o in reap(config, dry_run=True, connections=site.connections)
    ] == []
    jobs.cleanup(config, key, connections=site.connections)
    assert warm.key.domain not in site.domains(config)
    assert site.leftovers(config) == []


def test_a_job_that_differs_takes_the_cold_path_and_the_warm_vm_waits_on(
    warm_site: tuple[WarmSite, SiteConfig, WarmPool],
) -> None:
    site, config, pool = warm_site
    pool.fill_once()
    (warm,) = pool.idle()
    key, prepared = site.prepare_warm(config, pool, '"my.sf"', MINIMAL + "memory 512;\n}\n")
    assert prepared.domain == key.domain
    key2, bigger = site.prepare_warm(config, pool, '"minimal"')
    assert bigger.domain == warm.key.domain  # the template's own size still takes it
    for k in (key, key2):
        jobs.cleanup(config, k, connections=site.connections)
    assert site.leftovers(config) == []


def test_the_pools_stop_removes_its_idle_vms_and_a_claim_makes_the_next(
    warm_site: tuple[WarmSite, SiteConfig, WarmPool],
) -> None:
    site, config, pool = warm_site
    pool.fill_once()
    (first,) = pool.idle()
    key, _prepared = site.prepare_warm(config, pool, '"minimal"')
    # the next is not made beside the taking job's boot: at the end of a run, or later
    assert pool.fill_once() == pytest.approx(REFILL_AFTER, abs=1.0)
    assert pool.idle() == ()
    pool.job_ended()
    assert pool.fill_once() is None
    (second,) = pool.idle()
    assert second.key.domain != first.key.domain
    pool.stop()
    assert second.key.domain not in site.domains(config)
    assert first.key.domain in site.domains(config)  # the job's now: its cleanup removes it
    jobs.cleanup(config, key, connections=site.connections)
    assert site.leftovers(config) == []


def test_the_reaper_removes_the_warm_vms_of_a_service_that_died(
    warm_site: tuple[WarmSite, SiteConfig, WarmPool],
) -> None:
    site, config, pool = warm_site
    pool.fill_once()
    (warm,) = pool.idle()
    dead = subprocess.Popen(["true"])  # noqa: S607 - a pid that is gone, as a dead service's
    dead.wait()
    with Ledger.for_site(config) as ledger:
        owner = ledger.owner(OwnerKind.JOB, warm.key.owner_id, config.default_uri)
        assert owner is not None
        ledger.set_status(owner, owner.status, pid=dead.pid)
    lines = [o.line(dry_run=False) for o in reap(config, connections=site.connections)]
    assert any("died" in line for line in lines), lines
    assert warm.key.domain not in site.domains(config)
    assert site.leftovers(config) == []


def test_a_template_that_cannot_be_made_is_tried_again_only_after_a_growing_pause(
    tmp_path: Path,
) -> None:
    write_node(tmp_path / "node.xml")
    path = write_site_toml(tmp_path, f"test://{tmp_path / 'node.xml'}")  # no kernel: it fails
    now = [100.0]
    tries: list[str] = []

    class Counting(WarmPool):
        def make(self, template: str):  # type: ignore[no-untyped-def]
            tries.append(template)
            return super().make(template)

    connections = Connections()
    pool = Counting(("minimal",), connections, lambda: load_config(path), clock=lambda: now[0])
    try:
        assert pool.fill_once() == pytest.approx(FIRST_BACKOFF)
        assert pool.fill_once() == pytest.approx(FIRST_BACKOFF)  # not due: not tried
        now[0] += FIRST_BACKOFF
        assert pool.fill_once() == pytest.approx(2 * FIRST_BACKOFF)
        assert tries == ["minimal", "minimal"]
        with Ledger.for_site(load_config(path)) as ledger:
            assert ledger.owners() == ()
        assert not (tmp_path / "state" / "jobs").exists() or not any(
            (tmp_path / "state" / "jobs").iterdir()
        )
    finally:
        pool.stop()
        connections.close()


def test_a_job_never_counts_a_warm_vm_against_its_users_or_the_hosts_limit(
    warm_site: tuple[WarmSite, SiteConfig, WarmPool],
) -> None:
    site, _config, pool = warm_site
    config = site.write_config("max_vms_per_host = 1\n")
    pool.fill_once()
    key, prepared = site.prepare_warm(config, pool, '"my.sf"', MINIMAL + "memory 512;\n}\n")
    assert prepared.domain == key.domain  # one VM of a job, beside the warm one: allowed
    assert len(pool.idle()) == 1
    jobs.cleanup(config, key, connections=site.connections)


def test_disks_that_cannot_be_plugged_in_give_the_job_its_own_vm(
    warm_site: tuple[WarmSite, SiteConfig, WarmPool],
) -> None:
    site, config, pool = warm_site
    pool.fill_once()
    key, prepared = site.prepare_warm(config, pool, '"minimal"')
    hv = site.connections(config.default_uri)
    hv.destroy(prepared.domain)  # gone between the claim and the plug
    hv.undefine(prepared.domain)
    assert pool.plug(key.uid, key.job_id)
    assert site.state(config, key.domain) is DomainState.PAUSED  # its own, as cold
    with Ledger.for_site(config) as ledger:
        owner = jobs.prepared_owner(ledger, key, config.default_uri)
        assert job_domain(ledger, owner, key) == key.domain
    assert not (config.state_dir / "jobs" / prepared.domain.removeprefix("sd-job-")).exists()
    jobs.cleanup(config, key, connections=site.connections)
    assert site.leftovers(config) == []


def test_the_reaper_removes_a_dead_jobs_warm_vm_and_both_its_folders(
    warm_site: tuple[WarmSite, SiteConfig, WarmPool],
) -> None:
    site, config, pool = warm_site
    pool.fill_once()
    key, prepared = site.prepare_warm(config, pool, '"minimal"')
    assert pool.plug(key.uid, key.job_id)
    dead = subprocess.Popen(["true"])  # noqa: S607 - a runner that is gone
    dead.wait()
    with Ledger.for_site(config) as ledger:
        owner = jobs.prepared_owner(ledger, key, config.default_uri)
        ledger.set_status(owner, owner.status, pid=dead.pid)
    lines = [o.line(dry_run=False) for o in reap(config, connections=site.connections)]
    assert len([line for line in lines if "job folder" in line]) == 2, lines
    assert prepared.domain not in site.domains(config)
    assert site.leftovers(config) == []


def test_a_new_pool_removes_the_warm_vms_of_a_service_that_died(
    warm_site: tuple[WarmSite, SiteConfig, WarmPool],
) -> None:
    site, config, pool = warm_site
    pool.fill_once()
    (warm,) = pool.idle()
    dead = subprocess.Popen(["true"])  # noqa: S607 - the pid of a service that is gone
    dead.wait()
    with Ledger.for_site(config) as ledger:
        owner = ledger.owner(OwnerKind.JOB, warm.key.owner_id, config.default_uri)
        assert owner is not None
        ledger.set_status(owner, owner.status, pid=dead.pid)
    successor = WarmPool(config.warm_templates, site.connections, lambda: config)
    assert successor.remove_orphans() == [warm.key.domain]
    assert warm.key.domain not in site.domains(config)
    assert site.leftovers(config) == []


def test_a_warm_vm_of_a_changed_template_is_made_again_and_another_size_keeps_it(
    warm_site: tuple[WarmSite, SiteConfig, WarmPool],
) -> None:
    site, config, pool = warm_site
    pool.fill_once()
    (warm,) = pool.idle()
    key, disk = site.input_disk(site.submit('"minimal"', "request_memory = 512\n"))
    bigger = jobs.prepare(config, key, io.BytesIO(disk), connections=site.connections, warm=pool)
    assert (bigger.domain, bigger.memory_mib) == (key.domain, 512)
    pool.fill_once()  # the job was only bigger: the warm VM is still the template's
    assert pool.idle() == (warm,)
    jobs.cleanup(config, key, connections=site.connections)
    # the site's flavour changes (kvm): the template's VM is another one now
    site.root.joinpath("site.toml").write_text(
        site.config_path.read_text().replace('"qemu"', '"kvm"'), encoding="utf-8"
    )
    changed = load_config(site.config_path)
    key, prepared = site.prepare_warm(changed, pool, '"minimal"')
    assert prepared.domain == key.domain  # not the old warm VM
    pool.fill_once()
    (fresh,) = pool.idle()
    assert fresh.key.domain != warm.key.domain
    assert warm.key.domain not in site.domains(config)
    jobs.cleanup(changed, key, connections=site.connections)


def test_a_warm_vm_goes_even_when_the_ledger_cannot_be_written(
    warm_site: tuple[WarmSite, SiteConfig, WarmPool],
) -> None:
    """A full state folder: the VM is destroyed by its name (ours alone), its rows stay for the
    reaper (here: a second discard once the ledger can be written again)."""
    site, config, pool = warm_site
    pool.fill_once()
    (warm,) = pool.idle()
    unwritable = dataclasses.replace(config, state_dir=Path("/dev/null/state"))
    pool.site = lambda: unwritable
    pool.stop()
    assert warm.key.domain not in site.domains(config)
    assert site.leftovers(config) != []  # the rows: nothing could write them
    pool.site = lambda: config
    pool.discard(warm)
    assert site.leftovers(config) == []
