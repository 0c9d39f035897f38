"""The live page at `/`, driven in headless Chromium against a real uvicorn server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.config import Settings
from tests.live_server import live_server

FINAL = ("converged", "max_iters", "deadline", "diverged", "cancelled", "error")
WAIT_S = 20


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not shutil.which("chromium"):
        return "chromium is not installed (apt-get install chromium)"
    if not shutil.which("chromedriver"):
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A real server of reciprocal, with room for long solves and no dropped iterates."""
    settings = Settings(models=[], max_iters_cap=10**7, stream_buffer=100_000)
    with live_server(create_app(settings, {"reciprocal": Reciprocal()})) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium through the system chromedriver; fails instead of skipping under CI=true."""
    reason = _missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


def text(driver: Any, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def points(driver: Any) -> int:
    return int(driver.find_element("id", "chart").get_attribute("data-points"))


def wait(driver: Any, condition: Any, what: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition, what)


def open_page(driver: Any, url: str, **fields: str) -> None:
    """Load `/`, wait for reciprocal's example input, then type the given form fields."""
    from selenium.webdriver.support.ui import Select

    driver.get(url + "/")
    wait(driver, lambda d: d.find_elements("css selector", "#model option"), "the model list")
    Select(driver.find_element("id", "model")).select_by_value("reciprocal")
    wait(driver, lambda d: '"x"' in d.find_element("id", "input").get_attribute("value"), "example input")
    for element_id, value in fields.items():
        field = driver.find_element("id", element_id.replace("_", "-"))
        field.clear()
        field.send_keys(value)


def result_count(driver: Any) -> int:
    return int(driver.find_element("id", "status").get_attribute("data-results"))


def wait_result(driver: Any, count: int) -> str:
    """Wait for the `count`-th result of the solve; its status."""
    wait(driver, lambda d: result_count(d) >= count and text(d, "status") in FINAL, f"result {count}")
    return text(driver, "status")


def test_solve_draws_one_point_per_iteration(browser: Any, server: str, tmp_path: Path) -> None:
    open_page(browser, server, every="1")
    browser.find_element("id", "solve").click()
    assert wait_result(browser, 1) == "converged"
    iterations = int(text(browser, "iterations"))
    assert iterations > 10
    assert text(browser, "dropped") == "0"
    assert points(browser) == int(text(browser, "streamed")) == iterations
    assert "y: [4, 2, 1, 0.666667]" in text(browser, "output")
    assert float(text(browser, "per-iter-us")) > 0
    assert browser.find_element("id", "more").get_attribute("disabled") is not None
    shot = tmp_path / "live-page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_iterate_more_goes_on_from_max_iters(browser: Any, server: str) -> None:
    open_page(browser, server, every="1", max_iters="10", more_iters="500")
    browser.find_element("id", "solve").click()
    assert wait_result(browser, 1) == "max_iters"
    assert text(browser, "iterations") == "10"
    assert points(browser) == 10
    browser.find_element("id", "more").click()
    assert wait_result(browser, 2) == "converged"
    iterations = int(text(browser, "iterations"))
    assert iterations > 10
    assert points(browser) == int(text(browser, "streamed")) == iterations


def test_cancel_stops_a_long_solve(browser: Any, server: str) -> None:
    open_page(browser, server, input='{"x": [1e-5]}', tol="0", max_iters="10000000", every="100")
    browser.find_element("id", "solve").click()
    wait(browser, lambda d: points(d) > 0, "first iterates")
    browser.find_element("id", "cancel").click()
    assert wait_result(browser, 1) == "cancelled"
    assert 0 < int(text(browser, "iterations")) < 10_000_000
    assert points(browser) == int(text(browser, "streamed"))
    assert browser.find_element("id", "cancel").get_attribute("disabled") is not None
