"""`sd web` in a real headless Chromium (Debian's chromium + chromium-driver, Selenium).

The qa-testbed form with one wrong value (its error shown by the field), fixed, previewed,
started on libvirt's test driver (in the background: the page says "starting" while the start
waits on a gate the test then opens), watched until running (the page polls the JSON
endpoint), terminated; `sd status` agrees at each step. Served on 127.0.0.1 only, from a
thread of this process (the test driver's host lives in this process's shared connection).
Screenshots go to the test's tmp folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.libvirt]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)
pytest.importorskip("libvirt", reason="libvirt-python is not installed")
pytest.importorskip("selenium", reason="selenium is not installed (test extra)")
pytest.importorskip("uvicorn", reason="the web extra is not installed")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_web import Gate, gate, serve  # noqa: E402

from sd_batch.config.site import load_config  # noqa: E402
from sd_batch.hypervisor.connections import SHARED_CONNECTIONS  # noqa: E402
from sd_batch.web.access import Access  # noqa: E402
from sd_batch.web.app import WebSite, create_app  # noqa: E402

from conftest import fake_kernel, sd_in_process, site_environ, write_node, write_site_toml  # noqa: E402

__all__ = ["gate"]  # the fixture, shared with test_web


@pytest.fixture
def served(tmp_path: Path, gate: Gate) -> Iterator[tuple[str, dict[str, str]]]:
    """(base URL, environment for `sd`) of a site served on 127.0.0.1 from this process,
    whose pool starts wait for GATE."""
    fake_kernel(tmp_path / "images")
    uri = write_node(tmp_path / "host.xml")
    config = write_site_toml(tmp_path, uri, tables="[policy]\nmax_memory_mib = 2048\n")
    site = WebSite(
        load_config(config),
        Access(local_user="tester"),
        grace_seconds=0,
        start_pool=gate.start_pool,
    )
    server, port, thread = serve(create_app(site))
    yield f"http://127.0.0.1:{port}", site_environ(config)
    gate.opened.set()  # a failed test must not leave the server waiting for a start at shutdown
    server.should_exit = True
    thread.join(10)
    SHARED_CONNECTIONS.forget(uri)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.implicitly_wait(2)
    yield driver
    driver.quit()


def sd_status(environ: dict[str, str], *argv: str) -> str:
    code, out, _err = sd_in_process(environ, "status", *argv)
    assert code == 0
    return out


def test_fill_the_qa_testbed_form_start_watch_and_terminate_it(
    served: tuple[str, dict[str, str]],
    browser: webdriver.Chrome,
    gate: Gate,
    tmp_path: Path,
) -> None:
    base, environ = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    browser.get(base + "/")
    assert "virtual cluster for QA" in browser.find_element(By.ID, "template-qa-testbed").text
    browser.save_screenshot(str(shots / "1-templates.png"))

    browser.find_element(By.LINK_TEXT, "qa-testbed").click()
    pool = browser.find_element(By.NAME, "pool")
    pool.clear()
    pool.send_keys("qa")
    memory = browser.find_element(By.NAME, "sfConfig:head:memory")
    memory.clear()
    memory.send_keys("99999")
    browser.find_element(By.ID, "preview").click()
    field = browser.find_element(
        By.CSS_SELECTOR, '.field.invalid[data-path="sfConfig:head:memory"]'
    )
    assert field.find_element(By.CLASS_NAME, "error").text == (
        "sfConfig:head:memory 99999 MiB is over the site limit of 2048 MiB; ask for less memory"
    )
    browser.save_screenshot(str(shots / "2-form-error.png"))

    memory = browser.find_element(By.NAME, "sfConfig:head:memory")
    memory.clear()
    memory.send_keys("512")
    browser.find_element(By.ID, "preview").click()
    assert "sfConfig:head:memory 512;" in browser.find_element(By.ID, "sf-text").text
    assert "qa-worker2" in browser.find_element(By.ID, "placement").text
    browser.save_screenshot(str(shots / "3-preview.png"))
    assert sd_status(environ) == "no pools or jobs\n"  # nothing runs before the button

    browser.find_element(By.ID, "start").click()
    assert browser.find_element(By.ID, "pool-status").text == "starting"
    note = browser.find_element(By.ID, "starting").text
    assert note.endswith("You can terminate the pool once it is up.")
    table = browser.find_element(By.ID, "vms")
    WebDriverWait(browser, 15).until(lambda _d: int(table.get_attribute("data-polled") or 0) >= 1)
    assert browser.find_element(By.ID, "pool-status").text == "starting"  # polled, still so
    assert not browser.find_elements(By.ID, "terminate")
    browser.save_screenshot(str(shots / "4-starting.png"))
    assert sd_status(environ) == "no pools or jobs\n"

    gate.opened.set()  # the page reloads itself when the start ends
    states = WebDriverWait(browser, 15, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: (
            [s.text for s in d.find_elements(By.CSS_SELECTOR, "#vms td.state")] == ["running"] * 3
            and d.find_element(By.ID, "pool-status").text == "active"
        )
    )
    assert states
    rows = [r.text.split() for r in browser.find_elements(By.CSS_SELECTOR, "#vms tbody tr")]
    assert rows == [
        ["qa-head", "localhost", "running"],
        ["qa-worker1", "localhost", "running"],
        ["qa-worker2", "localhost", "running"],
    ]
    browser.save_screenshot(str(shots / "5-running.png"))
    assert [line.split() for line in sd_status(environ, "qa").splitlines()[1:4]] == [
        ["qa-head", "running"],
        ["qa-worker1", "running"],
        ["qa-worker2", "running"],
    ]

    browser.find_element(By.ID, "terminate").click()
    assert "You have no pools" in browser.find_element(By.ID, "no-pools").text
    browser.save_screenshot(str(shots / "6-terminated.png"))
    assert sd_status(environ) == "no pools or jobs\n"
