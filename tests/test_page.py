"""The live page at `/`, driven in headless Chromium against a real uvicorn server."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.config import Settings
from tests.live_server import live_server
from tests.looped_models import CountLM
from tests.shaped_models import Grid

FINAL = ("converged", "max_iters", "deadline", "diverged", "cancelled", "error", "stop", "length")
MODELS = {"reciprocal": Reciprocal(), "grid": Grid(c=0.98), "count-lm": CountLM()}
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
    with live_server(create_app(settings, MODELS)) as url:
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


def open_page(driver: Any, url: str, model: str = "reciprocal", **fields: str) -> None:
    """Load `/`, pick `model` and wait for its example input, then type the given form fields."""
    from selenium.webdriver.support.ui import Select

    driver.get(url + "/")
    listed = f"#model option[value='{model}']"
    wait(driver, lambda d: d.find_elements("css selector", listed), "the model list")
    Select(driver.find_element("id", "model")).select_by_value(model)
    first_key = f'"{next(iter(MODELS[model].example_input))}"'
    wait(driver, lambda d: first_key in d.find_element("id", "input").get_attribute("value"), "example input")
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


def test_a_2d_state_is_drawn_as_an_image_while_it_settles(browser: Any, server: str, tmp_path: Path) -> None:
    """The grid model's iterates stream as base64 and the canvas shows the newest: once converged its
    brightest pixel is the field's maximum, computed here by iterating G to its fixed point."""
    n = 32
    f = torch.zeros(n, n, dtype=torch.float64)
    f[8, 10], f[22, 20], f[5, 25] = 1.0, 0.6, -0.8
    open_page(browser, server, model="grid", every="5", tol="1e-9", max_iters="5000")
    field = browser.find_element("id", "input")
    field.clear()
    browser.execute_script("arguments[0].value = arguments[1]", field, json.dumps({"f": f.tolist()}))
    browser.find_element("id", "solve").click()
    assert wait_result(browser, 1) == "converged"
    canvas = browser.find_element("id", "field")
    assert canvas.is_displayed() and canvas.get_attribute("data-shape") == f"{n}x{n}"
    assert int(canvas.get_attribute("data-frames")) >= 2
    model, y = MODELS["grid"], torch.zeros(1, n, n, dtype=torch.float64)
    ctx = model.encode(model.Input(f=f.tolist()))
    for _ in range(2000):
        y = model.step(y, ctx)
    row, col = divmod(int(y[0].argmax()), n)
    grey = browser.execute_script(
        "return arguments[0].getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data[0]",
        canvas, col, row,
    )
    assert grey == 255
    shot = tmp_path / "live-page-field.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_a_looped_lm_shows_its_tokens_shaded_by_their_iterations(browser: Any, server: str) -> None:
    """CountLM's tokens take more steps the larger their digit (its loop contracts by 0.2 + 0.07·d):
    the page shows each token as it comes, darker for more iterations."""
    from selenium.webdriver.support.ui import Select

    browser.get(server + "/")
    wait(browser, lambda d: d.find_elements("css selector", "#model option[value='count-lm']"), "model list")
    Select(browser.find_element("id", "model")).select_by_value("count-lm")
    wait(browser, lambda d: d.find_element("id", "input").get_attribute("value") == "3", "example prompt")
    assert not browser.find_element("id", "chart").is_displayed()
    Select(browser.find_element("id", "criterion")).select_by_value("latent-diff")
    for element_id, value in {"threshold": "1e-4", "max-iters": "60", "max-tokens": "9"}.items():
        browser.find_element("id", element_id).clear()
        browser.find_element("id", element_id).send_keys(value)
    browser.find_element("id", "solve").click()
    assert wait_result(browser, 1) == "stop"
    spans = browser.find_elements("css selector", "#tokens span")
    assert "".join(s.text for s in spans) == text(browser, "output") == "456789"
    iterations = [int(s.get_attribute("data-iterations")) for s in spans]
    assert iterations == sorted(iterations) and iterations[0] < iterations[-1]  # rate grows with the digit
    shades = [s.value_of_css_property("background-color") for s in spans]
    assert shades[0] != shades[-1]
    assert int(text(browser, "iterations")) == sum(iterations)  # the end token's span is empty but counted
