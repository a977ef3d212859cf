"""`sd web` answers only to its own names, and slows password guessing.

DNS rebinding: a page of evil.example re-points its name at 127.0.0.1 and reads our pages as
its own (same origin, for the browser); every request then carries `Host: evil.example`, and a
form it posts `Origin: http://evil.example:8080`. Both are refused before any page (and its
CSRF token) is made. Failed logins lock the guessing address out, doubling each time, and
many addresses together meet a global bound. The real Starlette app through httpx (Starlette's
test client, and once a real uvicorn socket); the throttle's clock is injected, so no test waits.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.libvirt
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("starlette", reason="the web extra is not installed")
httpx = pytest.importorskip("httpx", reason="starlette's test client needs httpx")

from test_web import WebSiteDir, csrf_of, free_port, serve, web  # noqa: E402

from sd_batch.web.access import Access, Served, hash_password  # noqa: E402
from sd_batch.web.app import create_app  # noqa: E402
from sd_batch.web.throttle import LoginThrottle  # noqa: E402

__all__ = ["web"]  # the fixture, shared with test_web

LOCAL = Access.for_bind("127.0.0.1", None, None, port=8080)
EVIL = "http://evil.example:8080"


# --- Host and Origin ------------------------------------------------------------------------------
def test_a_rebinding_page_gets_421_and_never_sees_the_csrf_token(web: WebSiteDir) -> None:
    ours = web.client(dataclasses.replace(LOCAL, local_user="alice"))
    token = csrf_of(ours.get("/templates/pool").text)
    evil = web.client(dataclasses.replace(LOCAL, local_user="alice"), base_url=EVIL)
    for path in ("/", "/templates/pool", "/pools", "/api/pools/p1", "/static/style.css"):
        page = evil.get(path)
        assert page.status_code == 421, path
        assert token not in page.text and 'name="csrf"' not in page.text
    started = evil.post("/templates/pool/start", data={"csrf": token, "pool": "p1"})
    assert started.status_code == 421
    assert web.sd("status")[1] == "no pools or jobs\n"


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"])
def test_the_bound_address_and_loopback_names_are_served(web: WebSiteDir, host: str) -> None:
    client = web.client(LOCAL, base_url=f"http://{host}")
    assert client.get("/").status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:9999",
        "127.0.0.1",
        "evil.example",
        "evil.example:8080",
        "10.0.0.1:8080",
        "127.0.0.1:8080@evil.example",
        "127.0.0.1:x",
    ],
)
def test_another_name_or_port_is_misdirected(web: WebSiteDir, host: str) -> None:
    client = web.client(LOCAL)
    page = client.get("/", headers={"Host": host})
    assert page.status_code == 421 and "--server-name" in page.text


def test_the_admins_names_pass_at_any_port_and_no_others() -> None:
    served = Served.for_bind("10.0.0.5", 8081, ("sd.example.org",))
    assert served.host_ok("10.0.0.5:8081") and served.host_ok("sd.example.org")
    assert served.host_ok("SD.example.org.:443")
    assert not served.host_ok("10.0.0.5:8080") and not served.host_ok("127.0.0.1:8081")
    assert not served.host_ok("example.org") and not served.host_ok("")
    anywhere = Served.for_bind("0.0.0.0", 8080)
    assert anywhere.host_ok("192.0.2.7:8080") and anywhere.host_ok("[2001:db8::1]:8080")
    assert not anywhere.host_ok("evil.example:8080") and not anywhere.host_ok("192.0.2.7:80")


def test_a_form_posted_from_another_origin_is_refused(web: WebSiteDir) -> None:
    client = web.client(LOCAL)
    token = csrf_of(client.get("/templates/pool").text)
    form = {"csrf": token, "pool": "p1"}
    for headers in (
        {"Origin": EVIL},
        {"Origin": "null"},
        {"Referer": f"{EVIL}/x"},
        {"Origin": "http://127.0.0.1:9999"},
        {"Origin": "ftp://127.0.0.1:8080"},
    ):
        refused = client.post("/templates/pool/start", data=form, headers=headers)
        assert refused.status_code == 403, headers
        assert "not sent from a page of this server" in refused.text
    assert web.sd("status")[1] == "no pools or jobs\n"
    previewed = client.post(
        "/templates/pool", data=form, headers={"Origin": "http://127.0.0.1:8080"}
    )
    assert previewed.status_code == 200
    previewed = client.post(
        "/templates/pool", data=form, headers={"Referer": "http://localhost:8080/templates/pool"}
    )
    assert previewed.status_code == 200
    assert client.post("/templates/pool", data=form).status_code == 200  # not a browser: token


def test_a_real_server_refuses_a_rebound_host(web: WebSiteDir) -> None:
    pytest.importorskip("uvicorn", reason="the web extra is not installed")
    port = free_port()
    site = web.site(Access.for_bind("127.0.0.1", None, None, port=port))
    server, port, thread = serve(create_app(site), port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert http.get("/").status_code == 200
            assert http.get("/", headers={"Host": "127.0.0.1:8080"}).status_code == 421
            rebound = http.get("/templates/pool", headers={"Host": f"evil.example:{port}"})
            assert rebound.status_code == 421 and site.access.csrf_token("x") not in rebound.text
    finally:
        server.should_exit = True
        thread.join(10)


# --- failed logins --------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guarded(web: WebSiteDir, clock: Clock, **limits: float) -> Access:
    passwords = web.root / "passwords"
    passwords.write_text(f"alice:{hash_password('correct horse')}\n", encoding="utf-8")
    access = Access.for_bind("0.0.0.0", passwords, None, port=8080)
    return dataclasses.replace(access, throttle=LoginThrottle(clock=clock, **limits))  # type: ignore[arg-type]


def test_failed_logins_lock_the_address_out_for_doubling_times(web: WebSiteDir) -> None:
    clock = Clock()
    access = guarded(web, clock)
    mallory = web.client(access, client=("192.0.2.66", 4000))
    for _ in range(5):  # the free tries
        assert mallory.get("/", auth=("alice", "guess")).status_code == 401
    waits = []
    for _ in range(4):
        assert mallory.get("/", auth=("alice", "guess")).status_code == 429
        locked = mallory.get("/", auth=("alice", "correct horse"))  # not even checked
        assert locked.status_code == 429 and "too many failed logins" in locked.text
        waits.append(int(locked.headers["retry-after"]))
        clock.now += waits[-1]
        assert mallory.get("/", auth=("alice", "guess")).status_code == 401  # one more check
    assert waits == [1, 2, 4, 8]
    other = web.client(access, client=("192.0.2.7", 4000))  # another address is not locked
    assert other.get("/", auth=("alice", "correct horse")).status_code == 200
    clock.now += 16
    assert mallory.get("/", auth=("alice", "correct horse")).status_code == 200
    assert mallory.get("/", auth=("alice", "guess")).status_code == 401  # a success clears it


def test_a_guess_loop_is_slowed_by_orders_of_magnitude(web: WebSiteDir) -> None:
    """Ten minutes of guessing (the clock moves only as the loop waits): unthrottled, at the
    ~52 ms an scrypt check costs, that is ~11,500 guesses; here a handful."""
    clock = Clock()
    mallory = web.client(guarded(web, clock), client=("192.0.2.66", 4000))
    checked = 0
    start = clock.now
    while clock.now - start < 600:
        answer = mallory.get("/", auth=("alice", f"guess{checked}"))
        if answer.status_code == 429:
            clock.now += int(answer.headers["retry-after"])
        else:
            assert answer.status_code == 401
            checked += 1
            clock.now += 0.052
    assert checked == 14, checked  # 5 free, then waits of 1, 2, 4 ... 256 s, then 300 s each
    assert 600 / 0.052 / checked > 500


def test_guesses_from_many_addresses_meet_the_global_bound(web: WebSiteDir) -> None:
    clock = Clock()
    access = guarded(web, clock, global_failures=20, global_window=60)
    alice = web.client(access, client=("198.51.100.1", 4000))
    assert alice.get("/", auth=("alice", "correct horse")).status_code == 200
    for n in range(20):  # one guess each: no address reaches its own limit
        guess = web.client(access, client=(f"192.0.2.{n}", 4000))
        assert guess.get("/", auth=("alice", "guess")).status_code == 401
    fresh = web.client(access, client=("203.0.113.9", 4000))
    refused = fresh.get("/", auth=("alice", "correct horse"))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) == 60
    assert alice.get("/", auth=("alice", "correct horse")).status_code == 200  # known: served
    clock.now += 60
    assert fresh.get("/", auth=("alice", "correct horse")).status_code == 200


def test_parallel_guesses_cannot_slip_past_the_count() -> None:
    throttle = LoginThrottle(clock=Clock())
    admitted = [throttle.admit("192.0.2.66") for _ in range(50)]  # none has finished yet
    assert admitted.count(0.0) == 5 and all(wait > 0 for wait in admitted[5:])


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    throttle = LoginThrottle(clock=Clock(), max_addresses=1000, global_failures=10**9)
    for n in range(20_000):
        address = f"2001:db8::{n:x}"
        assert throttle.admit(address) == 0.0
        throttle.record(address, False)
    assert len(throttle._addresses) == 1000


def test_no_password_check_without_credentials_or_in_proxy_mode(web: WebSiteDir) -> None:
    clock = Clock()
    access = guarded(web, clock)
    client = web.client(access, client=("192.0.2.66", 4000))
    for _ in range(20):  # a browser's first request, before the prompt: not a failure
        assert client.get("/").status_code == 401
    assert client.get("/", auth=("alice", "correct horse")).status_code == 200


def test_sd_web_serves_its_bind_and_server_names(web: WebSiteDir) -> None:
    """The command itself: `sd web --bind 127.0.0.1:PORT --server-name sd.example.org`."""
    pytest.importorskip("uvicorn", reason="the web extra is not installed")
    port = free_port()
    environ = {**web.environ, "CONDOR_CONFIG": "/dev/null", "HOME": str(web.root)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from sd_batch.cli.main import main; sys.exit(main())",
            "web",
            "--bind",
            f"127.0.0.1:{port}",
            "--server-name",
            "sd.example.org",
        ],
        env=environ,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        assert f"serving http://127.0.0.1:{port}/" in server.stderr.readline()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(100):  # uvicorn binds just after the line above
                try:
                    http.get("/")
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            assert http.get("/").status_code == 200
            assert http.get("/", headers={"Host": "sd.example.org"}).status_code == 200
            assert http.get("/", headers={"Host": f"evil.example:{port}"}).status_code == 421
    finally:
        server.terminate()
        server.wait(10)
