"""A host that stops answering costs one connection attempt per command, not one per VM: `sd
status` and `sd terminate` ask it once, report what it holds, and terminate finishes later.
On libvirt's test driver (the site fixture of test_scheduling: hosts n1..n4 as node files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_scheduling import Site, description, site, vms

from sd_batch.config.site import load_config
from sd_batch.deploy.pools import start_pool, status, terminate_pool
from sd_batch.errors import DeployError
from sd_batch.hypervisor.connection import Hypervisor
from sd_batch.hypervisor.connections import Connections
from sd_batch.hypervisor.types import HypervisorAPI

pytestmark = pytest.mark.libvirt
__all__ = ["site"]  # the fixture, shared with test_scheduling


def test_a_host_that_stops_answering_is_asked_once_by_status_and_terminate(site: Site) -> None:
    config = load_config(site.root / "site.toml")
    n2 = site.hosts["n2"]
    opened: list[str] = []

    def opener(uri: str) -> HypervisorAPI:
        opened.append(uri)
        return Hypervisor.connect(uri, attempts=1)

    conns = Connections(opener)
    try:
        file = Path(site.write(description('hosts [| "n2" |];', vms(2))))
        start_pool(config, "n4", "lab", file, connections=conns)
        node = Path(n2.removeprefix("test://"))
        saved = node.read_text()
        conns.forget(n2)
        node.unlink()  # n2 stops answering
        opened.clear()
        [report] = status(config, "lab", connections=conns)
        assert [vm.state.split(":")[0] for vm in report.vms] == ["unknown", "unknown"]
        assert opened.count(n2) == 1
        opened.clear()
        with pytest.raises(DeployError) as failed:
            terminate_pool(config, "n4", "lab", grace_seconds=0, connections=conns)
        assert opened.count(n2) == 1
        assert "could not remove everything: domain lab-v2: " in failed.value.message
        assert "domain lab-v1: " in failed.value.message
        node.write_text(saved)  # back: the rows left are removed (idempotently: a fresh
        assert (
            terminate_pool(
                config,
                "n4",
                "lab",
                grace_seconds=0,  # test:/// host has
                connections=conns,
            )
            == "2 domains, 0 volumes"
        )  # none left)
    finally:
        conns.close()
