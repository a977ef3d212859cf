"""`sd web` through Starlette's test client: every route, each error, the access rules.

Pools start on libvirt's test driver: each test's site (tmp site.toml) has, as `localhost`, a
private `test:///TMP/host.xml`, shared in-process (`connections.SHARED_CONNECTIONS`) so `sd status`
sees what the web form started. Real resolver, real site policy, real ledger. A start runs in
the background: tests follow `/api/pools/NAME` until it is no longer "starting"; a slow start
is the real `start_pool` behind a gate (a threading.Event) the test opens.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("starlette", reason="the web extra is not installed")
pytest.importorskip("httpx", reason="starlette's test client needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from sd_batch.config.site import BUILTIN_TEMPLATE_DIR, load_config  # noqa: E402
from sd_batch.deploy.pools import start_pool  # noqa: E402
from sd_batch.errors import ConfigError  # noqa: E402
from sd_batch.hypervisor.connections import SHARED_CONNECTIONS  # noqa: E402
from sd_batch.web.access import Access, hash_password, verify_password  # noqa: E402
from sd_batch.web.app import WebSite, create_app  # noqa: E402

from conftest import SdSite, fake_kernel, site_environ, write_node, write_site_toml  # noqa: E402

#: Where the tests' clients say they are (an Access's default `Served` is loopback, any port).
SERVED = "http://127.0.0.1:8080"
ROLE_SF = """#include "minimal.sf"
templateDescription "a minimal VM whose role you choose";
sfConfig extends MinimalVM { role TBD; }
"""


@dataclass
class Gate:
    """The real `start_pool`, once the test opens the gate: a start as slow as the test wants."""

    opened: threading.Event = field(default_factory=threading.Event)

    def start_pool(self, *args: Any, **kwargs: Any) -> object:
        assert self.opened.wait(30), "the test never opened the gate"
        return start_pool(*args, **kwargs)


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A gate for a site's starts (`WebSiteDir.site(gate=...)`), opened when the test ends."""
    made = Gate()
    yield made
    made.opened.set()  # a failed test must not leave a start waiting


@dataclass
class WebSiteDir(SdSite):
    uri: str

    def site(self, access: Access | None = None, gate: Gate | None = None) -> WebSite:
        return WebSite(
            load_config(self.root / "site.toml"),
            access or Access(local_user="alice"),
            grace_seconds=0,
            start_pool=gate.start_pool if gate is not None else start_pool,
        )

    def client(self, access: Access | None = None, **kwargs: Any) -> TestClient:
        kwargs.setdefault("base_url", SERVED)
        return TestClient(create_app(self.site(access)), follow_redirects=False, **kwargs)

    def clients(self, site: WebSite, *users: str) -> list[TestClient]:
        """One app for SITE, a client per user (named by a trusted proxy's header)."""
        app = create_app(site)
        return [
            TestClient(
                app, base_url=SERVED, follow_redirects=False, headers={"X-Remote-User": user}
            )
            for user in users
        ]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebSiteDir]:
    fake_kernel(tmp_path / "images")
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "role.sf").write_text(ROLE_SF, encoding="utf-8")
    uri = write_node(tmp_path / "host.xml")
    config = write_site_toml(
        tmp_path,
        uri,
        template_dirs=[templates, BUILTIN_TEMPLATE_DIR],
        tables="[policy]\nmax_memory_mib = 2048\nmax_vcpus = 4\n",
    )
    made = WebSiteDir(tmp_path, site_environ(config), uri)
    yield made
    code, out, _err = made.sd("status")
    assert out == "no pools or jobs\n", "the test left pools behind"
    SHARED_CONNECTIONS.forget(made.uri)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "the page has no CSRF token"
    return match[1]


def error_by(html: str, path: str) -> str:
    """The error shown inside the field of attribute PATH ('' when none)."""
    match = re.search(
        r'<div class="field invalid" data-path="'
        + re.escape(path)
        + r'">.*?<p class="error"[^>]*>([^<]*)</p>',
        html,
        re.S,
    )
    return match[1] if match else ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(app: Any, port: int | None = None) -> tuple[Any, int, threading.Thread]:
    """Serve APP with uvicorn on PORT (default: a free one) of 127.0.0.1 from a thread:
    (server, port, the thread). Set `server.should_exit` to stop it."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    return server, port, thread


def until_started(client: TestClient, name: str, seconds: float = 15) -> dict[str, Any]:
    """Pool NAME's JSON once its start has ended (it runs in the background)."""
    deadline = time.monotonic() + seconds
    while True:
        report: dict[str, Any] = client.get(f"/api/pools/{name}").json()
        if report.get("status") != "starting" or time.monotonic() > deadline:
            return report
        time.sleep(0.05)


QA = {
    "pool": "qa",
    "sfConfig:head:memory": "384",
    "sfConfig:head:vcpus": "1",
    "sfConfig:worker:memory": "256",
    "sfConfig:worker:vcpus": "1",
}


# --- the list and the forms -----------------------------------------------------------------------
def test_the_list_shows_each_template_with_its_cost_and_fields(web: WebSiteDir) -> None:
    page = web.client().get("/")
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", page.text)
    assert 'href="/templates/qa-testbed"' in text
    assert "virtual cluster for QA: one head and two workers" in text
    assert "3 VMs: 896 MiB, 3 vCPUs" in text
    assert "sfConfig:role (required); 2 you may change" in text
    assert web.client().get("/static/app.js").status_code == 200


def test_a_form_has_one_typed_input_per_tbd_and_overridable_value(web: WebSiteDir) -> None:
    page = web.client().get("/templates/qa-testbed").text
    names = re.findall(r'<input id="f-[^"]+" name="([^"]+)" type="(\w+)"', page)
    assert names == [
        ("pool", "text"),
        ("sfConfig:head:memory", "number"),
        ("sfConfig:head:vcpus", "number"),
        ("sfConfig:worker:memory", "number"),
        ("sfConfig:worker:vcpus", "number"),
    ]
    assert 'min="32" max="2048" value="384"' in page  # the site's limit, the template's value
    assert 'max="4" value="1"' in page
    role = web.client().get("/templates/role").text
    assert re.search(r'name="sfConfig:role" type="text" required value=""', role)


def test_a_form_offers_the_networks_the_site_allows_as_a_choice(web: WebSiteDir) -> None:
    config = web.root / "site.toml"
    config.write_text(config.read_text() + 'networks = ["default"]\n', encoding="utf-8")
    page = web.client().get("/templates/minimal").text
    assert (
        '<select id="f-3" name="sfConfig:network"><option selected>NULL</option>'
        "<option>default</option></select>" in page
    )


def test_an_unknown_template_is_not_found(web: WebSiteDir) -> None:
    page = web.client().get("/templates/nope")
    assert page.status_code == 404
    assert "no site template named &#39;nope&#39;; templates offered: debian-batch" in page.text


# --- checking values ------------------------------------------------------------------------------
def test_a_value_over_the_site_limit_is_shown_by_its_field(web: WebSiteDir) -> None:
    client = web.client()
    token = csrf_of(client.get("/templates/qa-testbed").text)
    page = client.post(
        "/templates/qa-testbed", data={**QA, "csrf": token, "sfConfig:head:memory": "99999"}
    )
    assert page.status_code == 400
    assert error_by(page.text, "sfConfig:head:memory") == (
        "sfConfig:head:memory 99999 MiB is over the site limit of 2048 MiB; ask for less memory"
    )
    assert error_by(page.text, "sfConfig:worker:vcpus") == ""
    assert 'value="99999"' in page.text  # the user's value stays, to be fixed


def test_values_of_the_wrong_type_and_missing_fields_are_refused(web: WebSiteDir) -> None:
    client = web.client()
    token = csrf_of(client.get("/templates/role").text)
    page = client.post(
        "/templates/role", data={"csrf": token, "sfConfig:memory": "lots", "sfConfig:role": ""}
    )
    assert page.status_code == 400
    assert error_by(page.text, "sfConfig:memory") == "enter a whole number"
    assert error_by(page.text, "sfConfig:role") == "fill this field: the template leaves it to you"
    page = client.post("/templates/qa-testbed", data={**QA, "csrf": token, "pool": "no way"})
    assert error_by(page.text, "pool").startswith("&#39;no way&#39; is not a pool name")
    page = client.post(
        "/templates/qa-testbed", data={**QA, "csrf": token, "sfConfig:worker:vcpus": "9"}
    )
    assert error_by(page.text, "sfConfig:worker:vcpus") == (
        "sfConfig:worker:vcpus 9 is over the site limit of 4 vCPUs; ask for fewer vCPUs"
    )


def test_a_job_template_previews_its_sf_and_submit_file_and_downloads_them(
    web: WebSiteDir,
) -> None:
    client = web.client()
    token = csrf_of(client.get("/templates/role").text)
    page = client.post(
        "/templates/role",
        data={
            "csrf": token,
            "sfConfig:memory": "512",
            "sfConfig:vcpus": "1",
            "sfConfig:role": 'a"b',
        },
    )
    assert page.status_code == 200, page.text
    sf = (
        '// my.sf: the site template role with your values (sd web)\n#include "role.sf"\n\n'
        'sfConfig:role "a\\"b";\nsfConfig:memory 512;\n'
    )
    assert sf.replace('"', "&#34;") in page.text
    assert "+SDVMDescription        = &#34;my.sf&#34;" in page.text
    query = {"sfConfig:memory": "512", "sfConfig:role": 'a"b'}
    download = client.get("/templates/role/files/my.sf", params=query)
    assert download.status_code == 200 and download.text == sf
    assert download.headers["content-disposition"] == 'attachment; filename="my.sf"'
    submit = client.get("/templates/role/files/job.sub", params=query).text
    assert "transfer_input_files    = my.sf\n" in submit
    assert '+SDVMDescription        = "my.sf"\n' in submit
    bad = client.get("/templates/role/files/my.sf", params={**query, "sfConfig:memory": "4096"})
    assert bad.status_code == 400
    assert bad.text == (
        "sfConfig:memory: sfConfig:memory 4096 MiB is over the site limit of "
        "2048 MiB; ask for less memory"
    )
    assert client.get("/templates/role/files/other.txt", params=query).status_code == 404
    refused = client.post("/templates/role/start", data={**query, "csrf": token})
    assert refused.status_code == 400 and "is a job template" in refused.text


# --- pools ----------------------------------------------------------------------------------------
def test_a_pool_previews_its_placement_starts_shows_status_and_terminates(web: WebSiteDir) -> None:
    client = web.client()
    token = csrf_of(client.get("/templates/qa-testbed").text)
    preview = client.post(
        "/templates/qa-testbed", data={**QA, "csrf": token, "sfConfig:worker:memory": "512"}
    )
    assert preview.status_code == 200
    assert "sfConfig:worker:memory 512;" in preview.text
    assert "testbedScheduler: spread, 3 VMs on 1 of 1 hosts" in preview.text
    assert web.sd("status")[1] == "no pools or jobs\n"  # nothing starts before the button

    started = client.post("/templates/qa-testbed/start", data={**QA, "csrf": token})
    assert (started.status_code, started.headers["location"]) == (303, "/pools/qa")
    report = until_started(client, "qa")
    assert report["status"] == "active"
    page = client.get("/pools/qa")
    assert page.status_code == 200 and 'data-poll="/api/pools/qa"' in page.text
    assert 'id="terminate"' in page.text
    assert [(vm["name"], vm["host"], vm["state"]) for vm in report["vms"]] == [
        ("qa-head", "localhost", "running"),
        ("qa-worker1", "localhost", "running"),
        ("qa-worker2", "localhost", "running"),
    ]
    assert 'href="/pools/qa"' in client.get("/pools").text
    code, out, _ = web.sd("status", "qa", "--json")
    assert code == 0 and [vm["state"] for vm in json.loads(out)[0]["vms"]] == ["running"] * 3

    again = client.post("/templates/qa-testbed/start", data={**QA, "csrf": token})
    assert again.status_code == 400
    assert error_by(again.text, "pool") == "you already have a pool named qa (see /pools/qa)"
    carol = web.client(Access(local_user="carol"))
    taken = carol.post(
        "/templates/qa-testbed/start",
        data={**QA, "csrf": csrf_of(carol.get("/templates/pool").text)},
    )
    assert error_by(taken.text, "pool") == "the pool name qa is taken: choose another"

    gone = client.post("/pools/qa/terminate", data={"csrf": token})
    assert (gone.status_code, gone.headers["location"]) == (303, "/pools")
    assert web.sd("status")[1] == "no pools or jobs\n"
    assert client.get("/api/pools/qa").status_code == 404
    assert "You have no pools" in client.get("/pools").text


def test_a_pool_terminated_elsewhere_is_gone_from_the_page(web: WebSiteDir) -> None:
    client = web.client()
    token = csrf_of(client.get("/templates/pool").text)
    assert (
        client.post("/templates/pool/start", data={"csrf": token, "pool": "p1"}).status_code == 303
    )
    assert until_started(client, "p1")["status"] == "active"
    assert web.sd("terminate", "localhost", "p1", "--grace", "0")[0] == 0
    page = client.get("/pools/p1")
    assert page.status_code == 404 and "pool p1 is gone (terminated)" in page.text


# --- access ---------------------------------------------------------------------------------------
def test_a_post_without_the_csrf_token_is_refused(web: WebSiteDir) -> None:
    client = web.client()
    for data in ({**QA}, {**QA, "csrf": "0" * 64}):
        refused = client.post("/templates/qa-testbed/start", data=data)
        assert refused.status_code == 403 and "CSRF token missing or wrong" in refused.text
    bob = web.client(Access(local_user="bob"))
    token_of_bob = csrf_of(bob.get("/templates/pool").text)
    assert (
        client.post("/templates/qa-testbed", data={**QA, "csrf": token_of_bob}).status_code == 403
    )
    assert web.sd("status")[1] == "no pools or jobs\n"


def test_another_users_pool_cannot_be_seen_or_terminated(web: WebSiteDir) -> None:
    secret = b"s" * 32
    alice = web.client(Access(local_user="alice", secret=secret))
    bob = web.client(Access(local_user="bob", secret=secret))
    token = csrf_of(alice.get("/templates/pool").text)
    assert (
        alice.post("/templates/pool/start", data={"csrf": token, "pool": "mine"}).status_code == 303
    )
    assert until_started(alice, "mine")["status"] == "active"
    bob_token = csrf_of(bob.get("/templates/pool").text)
    assert bob.get("/pools/mine").status_code == 404
    assert bob.get("/api/pools/mine").json() == {
        "error": "you have no pool named mine; your pools are under /pools"
    }
    assert bob.post("/pools/mine/terminate", data={"csrf": bob_token}).status_code == 404
    assert 'href="/pools/mine"' not in bob.get("/pools").text
    assert alice.get("/api/pools/mine").status_code == 200  # still there, still alice's
    assert alice.post("/pools/mine/terminate", data={"csrf": token}).status_code == 303


def test_basic_auth_against_scrypt_hashes(web: WebSiteDir) -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$") and verify_password("correct horse", stored)
    assert not verify_password("wrong", stored) and not verify_password("x", "md5$1")
    passwords = web.root / "passwords"
    passwords.write_text(f"# users of sd web\nalice:{stored}\n", encoding="utf-8")
    access = Access.for_bind("0.0.0.0", passwords, None)
    client = web.client(access)
    assert client.get("/").status_code == 401
    assert client.get("/").headers["www-authenticate"] == 'Basic realm="sd web"'
    assert client.get("/", auth=("alice", "wrong")).status_code == 401
    assert client.get("/", auth=("mallory", "correct horse")).status_code == 401
    broken = {"Authorization": "Basic " + base64.b64encode(b"\xff").decode()}
    assert client.get("/", headers=broken).status_code == 401
    page = client.get("/", auth=("alice", "correct horse"))
    assert page.status_code == 200 and '<span class="user">alice</span>' in page.text


def test_a_reverse_proxys_user_header_when_the_admin_says_so(web: WebSiteDir) -> None:
    access = Access.for_bind(
        "10.0.0.5", None, "X-Remote-User", port=8081, names=("sd.example.org",)
    )  # the proxy's public name
    client = web.client(access, base_url="https://sd.example.org")
    assert client.get("/").status_code == 401
    page = client.get("/pools", headers={"X-Remote-User": "carol"})
    assert page.status_code == 200 and '<span class="user">carol</span>' in page.text


def test_binding_beyond_this_machine_needs_authentication(web: WebSiteDir) -> None:
    assert not Access.for_bind("127.0.0.1", None, None).require_auth
    assert not Access.for_bind("::1", None, None).require_auth
    with pytest.raises(ConfigError, match="needs authentication"):
        Access.for_bind("0.0.0.0", None, None)
    bad = web.root / "bad-passwords"
    bad.write_text("alice plain\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad-passwords:1: expected USER:scrypt"):
        Access.for_bind("0.0.0.0", bad, None)
    code, _out, err = web.sd("web", "--bind", "0.0.0.0:8080")
    assert (
        code == 3
        and "sd: error: sd web bound to 0.0.0.0 (not this machine only) needs authentication" in err
    )
    code, _out, err = web.sd("web", "--bind", "nowhere")
    assert code == 2 and "--bind 'nowhere' is not HOST:PORT" in err


SCRATCH_SF = """#include "minimal.sf"
templateDescription "a minimal VM with a blank scratch disk";
sfConfig extends MinimalVM {
    disks extends DATA { scratch extends Disk { size 1024; } }
}
"""


def test_a_blank_disk_size_is_a_field_within_the_site_disk_limit(web: WebSiteDir) -> None:
    (web.root / "templates" / "scratch.sf").write_text(SCRATCH_SF, encoding="utf-8")
    client = web.client()
    page = client.get("/templates/scratch").text
    assert 'name="sfConfig:disks:scratch:size" type="number"' in page
    token = csrf_of(page)
    too_big = client.post(
        "/templates/scratch", data={"csrf": token, "sfConfig:disks:scratch:size": "99999999"}
    )
    assert too_big.status_code == 400
    assert error_by(too_big.text, "sfConfig:disks:scratch:size").startswith(
        "sfConfig:disks:scratch:size 97656.2 GiB is over the site limit of 64 GiB per disk"
    )
    fine = client.post(
        "/templates/scratch", data={"csrf": token, "sfConfig:disks:scratch:size": "2048"}
    )
    assert fine.status_code == 200 and "sfConfig:disks:scratch:size 2048;" in fine.text


def test_boolean_and_choice_fields_become_sf_literals() -> None:
    from sd_batch.web.forms import Field, TemplateForm, user_sf

    form = TemplateForm(
        "t",
        Path("/site/t.sf"),
        "",
        "job",
        (
            Field("sfConfig:debug", "debug", "boolean", "false"),
            Field("sfConfig:network", "network", "choice", "NULL", choices=("NULL", "default")),
            Field("sfConfig:note", "note", "text", "", required=True),
        ),
        None,
        ("sfConfig:note",),
    )
    text, errors, line_of = user_sf(
        form, {"sfConfig:debug": "true", "sfConfig:network": "default", "sfConfig:note": "a\nb"}
    )
    assert text.splitlines()[3:] == [
        "sfConfig:debug true;",
        'sfConfig:network "default";',
        'sfConfig:note "a\\nb";',
    ]
    assert errors == {} and line_of == {
        4: "sfConfig:debug",
        5: "sfConfig:network",
        6: "sfConfig:note",
    }
    _text, errors, _ = user_sf(form, {"sfConfig:network": "evil", "sfConfig:note": "x"})
    assert errors == {"sfConfig:network": "choose one of NULL, default"}


def test_hash_password_prints_a_password_file_line(
    web: WebSiteDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse\n"))
    code, out, _err = web.sd("web", "--hash-password", "alice")
    user, _, stored = out.strip().partition(":")
    assert code == 0 and user == "alice" and verify_password("correct horse", stored)
