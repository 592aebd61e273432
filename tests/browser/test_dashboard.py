"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium through Debian's
chromedriver (the same build as the browser), against a real `bulkinfer serve` with two tenants and real
jobs on a slowed echo model.

Set ``BULKINFER_NO_BROWSER`` to skip it; otherwise a browser that cannot start fails the test.
Screenshots go to ``tests/artifacts/`` (or ``$BULKINFER_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import base64
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import write_jsonl
from tests.integration.test_bedrock_api import (
    Server,
    client,
    create,
    records,
    start_server,
    tenants_file,
    wait_status,
)

pytestmark = pytest.mark.slow

CATALOG = """
[models.crawl-echo]
provider = "echo"
batch_size = 2
concurrency = 1
[models.crawl-echo.options]
delay_s = 0.2
"""
"""About ten records a second: a job of 600 runs for about a minute, long enough to watch and stop."""
ALICE, ALICE_SECRET = "AKIDUIALICE", "alice-ui-secret"
BOB, BOB_SECRET = "AKIDUIBOB", "bob-ui-secret"
WAIT_S = 90
ARTIFACTS = Path(os.environ.get("BULKINFER_TEST_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))


def chromium() -> WebDriver:
    """Headless Chromium at 1280x800 (as root it needs ``--no-sandbox``)."""
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver_path is None:  # (never Selenium Manager's download of another build)
        pytest.fail("Debian's chromium and chromium-driver are needed: run scripts/chromium as root")
    options = Options()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(flag)
    service = Service(executable_path=driver_path)
    driver = webdriver.Chrome(service=service, options=options)
    fit(driver, 800)
    return driver


def fit(driver: WebDriver, height: int) -> None:
    """Make the page's viewport (not the window) 1280 x ``height``."""
    driver.set_window_size(1280, height)
    inner = driver.execute_script("return window.innerHeight")
    driver.set_window_size(1280, 2 * height - int(inner))


def whole_page(driver: WebDriver, path: Path) -> None:
    """A screenshot of the whole page, however tall, then the viewport as it was."""
    fit(driver, int(driver.execute_script("return document.documentElement.scrollHeight")))
    driver.save_screenshot(str(path))
    fit(driver, 800)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if os.environ.get("BULKINFER_NO_BROWSER"):
        pytest.skip("BULKINFER_NO_BROWSER is set")
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    catalog = tmp_path / "models.toml"
    catalog.write_text(CATALOG)
    tenants = tenants_file(tmp_path / "tenants.toml", {ALICE: ALICE_SECRET, BOB: BOB_SECRET})
    running = start_server(tmp_path / "data", catalog, "--tenants", str(tenants))
    yield running
    running.stop()


def until(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    # The pages redraw rows and the chart at each poll: an element found just before a redraw is
    # stale when read, which says nothing about the condition; it is looked for again.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=ignored)
    return wait.until(condition, message=what)


def status_of(url: str, key: str | None = None, secret: str | None = None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url)
    if key is not None:
        token = base64.b64encode(f"{key}:{secret}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def processed(driver: WebDriver, job_id: str) -> int:
    text = driver.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"] .processed').text
    return int(text.replace(",", ""))


def chart_points(driver: WebDriver) -> int:
    lines = driver.find_elements(By.CSS_SELECTOR, "#chart polyline.rps")
    return len((lines[0].get_attribute("points") or "").split()) if lines else 0


def no_reload_since_marked(driver: WebDriver) -> bool:
    return bool(driver.execute_script("return window.__notReloaded === true"))


def submit(server: Server) -> tuple[Any, dict[str, str]]:
    """Alice's job with failed records (ended), Bob's job, and Alice's long job (running)."""
    write_jsonl(server.bucket("ui-input") / "long.jsonl", records(600))
    bad = [{"recordId": f"B{i:010d}", "modelInput": {"nonsense": i}} for i in range(3)]
    write_jsonl(server.bucket("ui-input") / "mixed.jsonl", [*records(20, "M"), *bad])
    alice, bob = client(server, ALICE, ALICE_SECRET), client(server, BOB, BOB_SECRET)
    mixed = create(alice, "alice-mixed", "s3://ui-input/mixed.jsonl", "s3://ui-output/mixed/", "crawl-echo")
    wait_status(alice, mixed, {"Completed"}, WAIT_S)
    bobs = create(bob, "bobs-secret-job", "s3://ui-input/mixed.jsonl", "s3://ui-output/bob/", "crawl-echo")
    long = create(alice, "alice-long", "s3://ui-input/long.jsonl", "s3://ui-output/long/", "crawl-echo")
    wait_status(alice, long, {"InProgress"}, WAIT_S)
    arns = {"long": long, "mixed": mixed, "bobs": bobs}
    return alice, {name: arn.rsplit("/", 1)[1] for name, arn in arns.items()}


def sign_in(browser: WebDriver, server: Server) -> None:
    """Alice signs in: the browser keeps her credentials for the site, as after its sign-in prompt."""
    host = server.url.removeprefix("http://")
    browser.get(f"http://{ALICE}:{ALICE_SECRET}@{host}/ui")
    browser.get(f"{server.url}/ui")  # (a page whose address holds credentials may not fetch())


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def test_a_tenant_watches_its_job_move_stops_it_and_sees_no_one_elses(
    server: Server, browser: WebDriver
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    alice, ids = submit(server)
    code, headers = status_of(f"{server.url}/ui")  # no credentials: the browser is asked for them
    assert code == 401 and headers["www-authenticate"].startswith('Basic realm="bulkinfer"')

    sign_in(browser, server)
    row = f'tr[data-job="{ids["long"]}"]'
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), "alice's job is not listed")
    assert "alice-long" in text_of(browser, "jobs") and "alice-mixed" in text_of(browser, "jobs")
    assert "bobs-secret-job" not in browser.page_source and ids["bobs"] not in browser.page_source

    # the processed count moves on the page, without a reload
    browser.execute_script("window.__notReloaded = true")
    first = until(browser, lambda d: processed(d, ids["long"]) + 1, "no processed count shown") - 1
    until(browser, lambda d: processed(d, ids["long"]) > first, "the processed count never moved")
    rate = f"{row} td.rate"
    until(browser, lambda d: d.find_element(By.CSS_SELECTOR, rate).text, "no records/s shown")
    assert no_reload_since_marked(browser)
    browser.save_screenshot(str(ARTIFACTS / "jobs.png"))

    # the job page: Stop, then Stopped, without a reload
    browser.get(f"{server.url}/ui/jobs/{ids['long']}")
    browser.execute_script("window.__notReloaded = true")
    until(browser, lambda d: chart_points(d) >= 5, "no chart of five samples drawn")
    browser.find_element(By.ID, "stop").click()
    until(browser, lambda d: text_of(d, "status") == "Stopped", "the job never showed Stopped")
    assert no_reload_since_marked(browser)
    assert not browser.find_element(By.ID, "stop").is_displayed()
    until(browser, lambda d: "manifest.json.out" in text_of(d, "outputs"), "no outputs listed")
    assert "job.stopping" in text_of(browser, "timeline") and "job.ended" in text_of(browser, "timeline")
    whole_page(browser, ARTIFACTS / "job-stopped.png")
    assert wait_status(alice, f"{ids['long']}", {"Stopped"}, 5)["status"] == "Stopped"  # the API agrees

    # a job with failed records shows a sample of its error lines
    browser.get(f"{server.url}/ui/jobs/{ids['mixed']}")
    assert "B0000000000" in text_of(browser, "error-samples")
    assert "modelInput" in text_of(browser, "error-samples")
    whole_page(browser, ARTIFACTS / "job-errors.png")

    browser.get(f"{server.url}/ui/models")
    until(browser, lambda d: "crawl-echo" in text_of(d, "models"), "the model is not listed")
    browser.save_screenshot(str(ARTIFACTS / "models.png"))

    # another tenant's job is not found, on the page and by status
    browser.get(f"{server.url}/ui/jobs/{ids['bobs']}")
    assert browser.find_element(By.TAG_NAME, "h1").text == "404"
    assert status_of(f"{server.url}/ui/jobs/{ids['bobs']}", ALICE, ALICE_SECRET)[0] == 404
    assert status_of(f"{server.url}/ui/jobs/{ids['bobs']}", BOB, BOB_SECRET)[0] == 200
    assert status_of(f"{server.url}/ui", ALICE, "not-alices-secret")[0] == 401
