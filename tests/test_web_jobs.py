"""`sd web`'s job templates: the `job.sub` it writes asks HTCondor for a slot the size of the
VM its `my.sf` makes, so the job lands where its VM fits and gets exactly that VM.

The downloaded files go through condor_submit's own code and the site transform (the real
bindings), then through `jobs.prepare` on libvirt's test driver with the slot HTCondor would
carve from those requests.
"""

from __future__ import annotations

import io
import os

import pytest

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("starlette", reason="the web extra is not installed")
pytest.importorskip("httpx", reason="starlette's test client needs httpx")
pytest.importorskip("classad2", reason="the htcondor bindings are not installed")

from test_web import WebSiteDir, csrf_of, web  # noqa: E402

from sd_batch.batch import jobs  # noqa: E402
from sd_batch.batch.key import JobKey  # noqa: E402
from sd_batch.condor.jobad import format_updates, job_ad_from_submit, parse_job_ad  # noqa: E402
from sd_batch.config.site import load_config  # noqa: E402
from sd_batch.guest.contract import Manifest  # noqa: E402
from sd_batch.hypervisor.connections import SHARED_CONNECTIONS  # noqa: E402
from sd_batch.staging import write_input_tar  # noqa: E402

__all__ = ["web"]  # the fixture, shared with test_web


def test_a_job_templates_submit_file_requests_the_vms_size(web: WebSiteDir) -> None:
    client = web.client()
    token = csrf_of(client.get("/templates/role").text)
    values = {"sfConfig:memory": "768", "sfConfig:vcpus": "2", "sfConfig:role": "db"}
    preview = client.post("/templates/role", data={**values, "csrf": token})
    assert "request_memory          = 768" in preview.text
    submit = client.get("/templates/role/files/job.sub", params=values).text
    assert (
        "request_memory          = 768\nrequest_cpus            = 2\n"
        "request_disk            = 256M\n"
    ) in submit
    sandbox = web.root / "job"
    sandbox.mkdir()
    (sandbox / "my.sf").write_text(client.get("/templates/role/files/my.sf", params=values).text)
    (sandbox / "job.sh").write_text("#!/bin/sh\nexit 0\n")
    (sandbox / "job.sub").write_text(submit)
    (ad,) = job_ad_from_submit(
        submit, submit_dir=sandbox, owner="alice", schedd_name=f"web-{os.getpid()}@test", qdate=1
    )
    job = parse_job_ad(ad)
    # the slot a startd carves from the requests (my.sf is in no template record)
    machine = format_updates(
        {
            "Memory": job.request_memory_mib or 0,
            "Cpus": job.request_cpus or 0,
            "Disk": job.request_disk_kib or 0,
        }
    )
    out = io.BytesIO()
    write_input_tar(
        sandbox,
        Manifest(("./job.sh",), {}, "."),
        out,
        job_ad_text=ad,
        machine_ad_text=machine,
        max_bytes=1 << 30,
    )
    config = load_config(web.root / "site.toml")
    key = JobKey(os.getuid(), job.global_job_id)
    prepared = jobs.prepare(config, key, io.BytesIO(out.getvalue()), connections=SHARED_CONNECTIONS)
    try:
        assert (prepared.memory_mib, prepared.vcpus) == (768, 2)
    finally:
        jobs.cleanup(config, key, connections=SHARED_CONNECTIONS)
