"""Attacks on warm VMs (`batch.warm`), each a bound: a job's own description never takes a warm
VM, even one whose VM would be the template's to the byte; a retried PREPARE_JOB never leaves
a job holding a warm VM it gave up, nor two jobs one VM; and jobs that never match cost the
pool no refill. Same test-driver site as tests/test_warm.py.
"""

from __future__ import annotations

import io

import pytest
import test_warm

from sd_batch.batch import jobs
from sd_batch.batch.domains import job_domain
from sd_batch.batch.warm import WarmPool
from sd_batch.config.site import SiteConfig
from sd_batch.ledger.store import Ledger

from conftest import MINIMAL

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")

warm_site = test_warm.warm_site
Site = tuple[test_warm.WarmSite, SiteConfig, WarmPool]


def test_an_own_description_identical_to_the_template_never_takes_the_warm_vm(
    warm_site: Site,
) -> None:
    site, config, pool = warm_site
    pool.fill_once()
    (warm,) = pool.idle()
    # the template's own VM, described by the user (its file may include anything)
    key, prepared = site.prepare_warm(config, pool, '"my.sf"', MINIMAL + "}\n")
    assert prepared.domain == key.domain != warm.key.domain
    assert pool.idle() == (warm,)  # not taken, not doubted away
    assert pool.plug(key.uid, key.job_id) is None
    jobs.cleanup(config, key, connections=site.connections)
    assert pool.fill_once() is None  # nothing to make again: no hot refill
    assert pool.idle() == (warm,)


def test_a_retried_prepare_gives_the_warm_vm_up_and_its_late_plug_touches_nothing(
    warm_site: Site,
) -> None:
    """PREPARE_JOB again for a job that took the warm VM (the starter retried, or another
    process of its uid): the warm VM and its folder go; the first prepare's plug, coming late,
    neither plugs disks into a VM the job no longer has nor gives it to anyone."""
    site, config, pool = warm_site
    pool.fill_once()
    (warm,) = pool.idle()
    key, disk = site.job('"minimal"')

    def prepare() -> jobs.PreparedJob:
        return jobs.prepare(config, key, io.BytesIO(disk), connections=site.connections, warm=pool)

    assert prepare().domain == warm.key.domain
    again = prepare()
    assert again.domain == key.domain  # no idle warm VM left: its own, cold
    assert warm.key.domain not in site.domains(config)  # the taken one went with the retry
    assert not warm.key.folder(config).exists()
    assert pool.plug(key.uid, key.job_id) is None  # the first prepare's pending plug
    with Ledger.for_site(config) as ledger:
        owner = jobs.prepared_owner(ledger, key, config.default_uri)
        assert job_domain(ledger, owner, key) == key.domain
    jobs.cleanup(config, key, connections=site.connections)
    assert site.leftovers(config) == []
