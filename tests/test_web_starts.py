"""`sd web` starts pools in the background: the start POST answers at once (303 to the pool's
page), which says "starting", then shows the live pool, or why the start failed and that
nothing of it is left. Libvirt's test driver and the real `start_pool`, slowed by a gate
(`test_web.Gate`) the test opens; the site and fixtures are test_web's.
"""

from __future__ import annotations

import json
import logging
import threading

import pytest

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("starlette", reason="the web extra is not installed")
httpx = pytest.importorskip("httpx", reason="starlette's test client needs httpx")

from test_web import (  # noqa: E402
    QA,
    Gate,
    WebSiteDir,
    csrf_of,
    error_by,
    gate,
    serve,
    until_started,
    web,
)

from sd_batch.config.site import BUILTIN_TEMPLATE_DIR  # noqa: E402
from sd_batch.hypervisor.connections import SHARED_CONNECTIONS  # noqa: E402
from sd_batch.web.access import Access  # noqa: E402
from sd_batch.web.app import create_app  # noqa: E402

__all__ = ["gate", "web"]  # the fixtures, shared with test_web


def proxy() -> Access:
    """Users named by a trusted proxy's header: many users of one app in one test."""
    return Access.for_bind("127.0.0.1", None, "X-Remote-User")


def test_a_slow_start_answers_at_once_and_its_page_follows_it(web: WebSiteDir, gate: Gate) -> None:
    site = web.site(proxy(), gate)
    alice, carol = web.clients(site, "alice", "carol")
    token = csrf_of(alice.get("/templates/qa-testbed").text)
    started = alice.post("/templates/qa-testbed/start", data={**QA, "csrf": token})
    assert (started.status_code, started.headers["location"]) == (303, "/pools/qa")
    assert site.starts.in_progress() == ["qa"]  # the gate is shut: it cannot have started

    page = alice.get("/pools/qa").text
    assert '<strong id="pool-status">starting</strong>' in page and 'id="starting"' in page
    assert 'data-status="starting"' in page and 'id="terminate"' not in page
    assert alice.get("/api/pools/qa").json() == {
        "kind": "pool",
        "name": "qa",
        "uri": web.uri,
        "vms": [],
        "status": "starting",
        "interrupted": False,
    }
    assert '<a href="/pools/qa">qa</a> <span class="state-starting">(starting)' in (
        alice.get("/pools").text
    )
    assert web.sd("status")[1] == "no pools or jobs\n"

    again = alice.post("/templates/qa-testbed/start", data={**QA, "csrf": token})
    assert error_by(again.text, "pool") == "you already have a pool named qa (see /pools/qa)"
    carol_token = csrf_of(carol.get("/templates/qa-testbed").text)
    taken = carol.post("/templates/qa-testbed/start", data={**QA, "csrf": carol_token})
    assert error_by(taken.text, "pool") == "the pool name qa is taken: choose another"
    assert carol.get("/api/pools/qa").status_code == 404
    refused = alice.post("/pools/qa/terminate", data={"csrf": token})
    assert refused.status_code == 409
    assert "pool qa is still starting: terminate it once it is up" in refused.text

    gate.opened.set()
    report = until_started(alice, "qa")
    assert report["status"] == "active"
    assert [(vm["name"], vm["state"]) for vm in report["vms"]] == [
        ("qa-head", "running"),
        ("qa-worker1", "running"),
        ("qa-worker2", "running"),
    ]
    page = alice.get("/pools/qa").text
    assert 'data-status="active"' in page and 'id="terminate"' in page
    assert alice.post("/pools/qa/terminate", data={"csrf": token}).status_code == 303


def test_pools_of_one_user_and_of_two_start_at_the_same_time(web: WebSiteDir, gate: Gate) -> None:
    site = web.site(proxy(), gate)
    alice, bob = web.clients(site, "alice", "bob")
    tokens = {}
    for client, user, name in ((alice, "alice", "p1"), (alice, "alice", "p2"), (bob, "bob", "p3")):
        tokens[user] = csrf_of(client.get("/templates/pool").text)
        start = client.post("/templates/pool/start", data={"csrf": tokens[user], "pool": name})
        assert start.status_code == 303
    assert site.starts.in_progress() == ["p1", "p2", "p3"]  # three threads, all waiting
    gate.opened.set()
    for client, name in ((alice, "p1"), (alice, "p2"), (bob, "p3")):
        report = until_started(client, name)
        assert report["status"] == "active", report
        assert [vm["state"] for vm in report["vms"]] == ["running", "running"]
    code, out, _err = web.sd("status", "--json")
    assert code == 0 and sorted(p["name"] for p in json.loads(out)) == ["p1", "p2", "p3"]
    for client, user, name in ((alice, "alice", "p1"), (alice, "alice", "p2"), (bob, "bob", "p3")):
        assert (
            client.post(f"/pools/{name}/terminate", data={"csrf": tokens[user]}).status_code == 303
        )


def test_a_failed_start_shows_why_on_the_pool_page_and_leaves_nothing(web: WebSiteDir) -> None:
    """A domain named like the third VM is already on the host: the start is rolled back."""
    host = SHARED_CONNECTIONS(web.uri)
    foreign = host.define(
        "<domain type='test'><name>qa-worker2</name><memory unit='MiB'>64"
        "</memory><os><type>hvm</type></os></domain>"
    )
    try:
        site = web.site()
        client = web.clients(site, "alice")[0]
        token = csrf_of(client.get("/templates/qa-testbed").text)
        started = client.post("/templates/qa-testbed/start", data={**QA, "csrf": token})
        assert (started.status_code, started.headers["location"]) == (303, "/pools/qa")
        report = until_started(client, "qa")
        assert (report["status"], report["vms"], report["left_behind"]) == ("failed", [], False)
        assert report["error"].startswith("pool qa: VM qa-worker2 (sfConfig:worker")
        assert "already exists" in report["error"]
        assert report["error"].endswith("; rolled back: removed 2 domains, 0 volumes, 3 files")

        page = client.get("/pools/qa").text
        assert '<strong id="pool-status">failed</strong>' in page
        assert '<p class="error" id="start-error">Starting pool qa failed: pool qa: VM ' in page
        assert "Nothing of it is left: the start was rolled back" in page
        assert 'href="/templates/qa-testbed"' in page and 'id="dismiss"' in page
        assert 'id="terminate"' not in page and "data-poll" not in page
        assert web.sd("status")[1] == "no pools or jobs\n"
        assert [d.name for d in host.list_domains()] == ["qa-worker2"]  # only the foreign one
        assert site.owners.owner(web.uri, "qa") is None
        assert '<span class="state-failed">(failed to start)' in client.get("/pools").text

        dismissed = client.post("/pools/qa/dismiss", data={"csrf": token})
        assert (dismissed.status_code, dismissed.headers["location"]) == (303, "/pools")
        assert "You have no pools" in client.get("/pools").text
        assert client.get("/api/pools/qa").status_code == 404
        assert client.post("/pools/qa/dismiss", data={"csrf": token}).status_code == 404
    finally:
        host.undefine(foreign)


def test_a_name_taken_while_the_start_waited_is_a_failed_start(web: WebSiteDir, gate: Gate) -> None:
    site = web.site(gate=gate)
    client = web.clients(site, "alice")[0]
    token = csrf_of(client.get("/templates/pool").text)
    assert (
        client.post("/templates/pool/start", data={"csrf": token, "pool": "qa"}).status_code == 303
    )
    assert web.sd("start", "localhost", "qa", str(BUILTIN_TEMPLATE_DIR / "pool.sf"))[0] == 0
    gate.opened.set()
    report = until_started(client, "qa")
    assert (report["status"], report["error"]) == (
        "failed",
        "the pool name qa was taken elsewhere while yours was starting: choose another",
    )
    code, out, _err = web.sd("status", "qa", "--json")  # the other start's pool is untouched
    assert code == 0 and [vm["state"] for vm in json.loads(out)[0]["vms"]] == ["running"] * 2
    assert client.post("/pools/qa/terminate", data={"csrf": token}).status_code == 303  # dismissed
    assert client.get("/pools/qa").status_code == 404
    assert web.sd("terminate", "localhost", "qa", "--grace", "0")[0] == 0


class Said(logging.Handler):
    """An event set once sd_batch.web logs a line holding TEXT (no sleeping until it has)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.event = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()

    def __enter__(self) -> Said:
        logging.getLogger("sd_batch.web").addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger("sd_batch.web").removeHandler(self)


def test_server_shutdown_waits_for_a_start_in_progress(
    web: WebSiteDir, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("uvicorn", reason="the web extra is not installed")
    site = web.site(gate=gate)
    server, port, thread = serve(create_app(site))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        started = http.post(
            "/templates/pool/start", data={"csrf": site.access.csrf_token("alice"), "pool": "p1"}
        )
    assert (started.status_code, started.headers["location"]) == (303, "/pools/p1")

    with caplog.at_level(logging.WARNING, logger="sd_batch.web"), Said("in progress") as said:
        server.should_exit = True
        assert said.event.wait(30), "the server never said it waits for the start"
        assert thread.is_alive(), "the server stopped with a start in progress"
        assert "waiting for the pool starts in progress: p1" in caplog.text
        gate.opened.set()
        thread.join(15)
    assert not thread.is_alive()
    code, out, _err = web.sd("status", "p1", "--json")  # it finished: up, not half-made
    assert code == 0 and [vm["state"] for vm in json.loads(out)[0]["vms"]] == ["running"] * 2
    assert web.sd("terminate", "localhost", "p1", "--grace", "0")[0] == 0
