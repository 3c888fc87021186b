"""Captum Insights: IG2 and Guided IG in the Insights web app (Flask back end, React front end).

Insights ships with captum <= 0.8.0. Where it is missing these tests are skipped, except that CI
sets CAPTUM_IG2_REQUIRE_INSIGHTS=1 (and CAPTUM_IG2_REQUIRE_BROWSER=1) in its captum 0.8
environment, where a skip would hide missing work and fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import pytest
import torch

from captum_ig2 import GuidedIG, IterativeGradientIG, insights

# Insights batches its examples with Captum's _batched_generator, which warns that the inputs
# do not require gradients (they need not: our methods enable them themselves).
# Flask's static file responses, compressed by flask-compress, leave files to the garbage
# collector (ResourceWarning), reported by pytest as unraisable: not this package's files.
pytestmark = [
    pytest.mark.filterwarnings("ignore:It looks like that the attribution:UserWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

try:
    from captum.insights.attr_vis import config as insights_config
except ImportError:
    insights_config = None


def _require(condition: bool, variable: str, reason: str) -> None:
    if condition:
        return
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason}, and {variable}=1 asks for these tests to run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def visualizer():  # type: ignore[no-untyped-def]
    _require(insights_config is not None, "CAPTUM_IG2_REQUIRE_INSIGHTS", "no Captum Insights")
    insights.register()
    return insights.build_visualizer(n_examples=8, epochs=2)


def test_register_without_insights_says_what_to_install(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "captum.insights.attr_vis", None)
    monkeypatch.setitem(sys.modules, "captum.insights", None)
    with pytest.raises(ImportError, match=r"captum 0\.8\.0.*captum-ig2\[insights\]"):
        insights.register()


def test_register_adds_both_methods_once(visualizer) -> None:  # type: ignore[no-untyped-def]
    insights.register()
    names = insights_config.ATTRIBUTION_NAMES_TO_METHODS
    assert names["IG2"] is IterativeGradientIG and names["Guided IG"] is GuidedIG
    assert list(names).count("IG2") == 1
    params = insights_config.ATTRIBUTION_METHOD_CONFIG
    assert {"n_steps", "step_size", "method"} <= set(params["IG2"].params)
    assert {"n_steps", "fraction", "max_dist", "method"} <= set(params["Guided IG"].params)
    # The app's own module sees them: it imported the dicts by reference.
    from captum.insights.attr_vis import app

    assert "IG2" in app.ATTRIBUTION_NAMES_TO_METHODS


def test_ui_values_are_post_processed_idempotently() -> None:
    assert insights._positive_float_or_auto("auto") is None
    assert insights._positive_float_or_auto("0.5") == 0.5
    assert insights._positive_float_or_auto(0.5) == 0.5
    assert insights._positive_float_or_auto(None) is None
    assert insights._clamp("0 1") == (0.0, 1.0)
    assert insights._clamp((0.0, 1.0)) == (0.0, 1.0)
    assert insights._clamp("") is None and insights._clamp(None) is None
    with pytest.raises(ValueError, match="clamp"):
        insights._clamp("0 1 2")


@pytest.mark.parametrize("method", ["IG2", "Guided IG"])
def test_flask_client_returns_attributions_of_the_input_shape(visualizer, method, monkeypatch):  # type: ignore[no-untyped-def]
    from captum.insights.attr_vis import server
    from captum.insights.attr_vis.attribution_calculation import AttributionCalculation

    computed = []
    original = AttributionCalculation.calculate_attribution

    def recording(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        attributions = original(self, *args, **kwargs)
        computed.append((kwargs.get("attribution_method_name", args[4]), attributions))
        return attributions

    monkeypatch.setattr(AttributionCalculation, "calculate_attribution", recording)
    monkeypatch.setattr(server, "visualizer", visualizer)
    client = server.app.test_client()
    config = client.get("/init").get_json()
    assert method in config["methods"]
    arguments = {k: v["value"] for k, v in config["method_arguments"][method].items()}
    arguments["n_steps"] = 20
    if method == "IG2":
        arguments["clamp"] = "0 1"
    response = client.post(
        "/fetch",
        json={"attribution_method": method, "arguments": arguments, "prediction": "all",
              "classes": []},
    )  # fmt: skip
    assert response.status_code == 200
    groups = response.get_json()
    assert groups and groups[0][0]["feature_outputs"][0]["modified"]  # the attribution image
    assert computed and all(name == method for name, _ in computed)
    for _, attributions in computed:
        (attribution,) = attributions
        assert attribution.shape == (1, 3, 8, 8)
        assert torch.isfinite(attribution).all() and attribution.abs().sum() > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_browser_selects_ig2_and_shows_its_attribution(visualizer, tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    _require(
        chromium is not None and driver_path is not None,
        "CAPTUM_IG2_REQUIRE_BROWSER",
        "no chromium and chromedriver",
    )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select, WebDriverWait
    except ImportError:
        _require(False, "CAPTUM_IG2_REQUIRE_BROWSER", "no selenium")
    from captum.insights.attr_vis import server
    from werkzeug.serving import make_server

    monkeypatch.setattr(server, "visualizer", visualizer)
    port = _free_port()
    http = make_server("127.0.0.1", port, server.app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-quic", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        method_select = wait.until(
            lambda b: next(
                (
                    el
                    for el in b.find_elements(By.NAME, "selected_method")
                    if "IG2" in [o.get_attribute("value") for o in Select(el).options]
                ),
                None,
            )
        )
        Select(method_select).select_by_value("IG2")
        step_size = wait.until(lambda b: b.find_element(By.NAME, "step_size"))
        assert step_size.get_attribute("value") == "auto"
        n_steps = browser.find_element(By.NAME, "n_steps")
        n_steps.clear()
        n_steps.send_keys("20")
        browser.find_element(By.XPATH, "//button[normalize-space()='Fetch']").click()
        image = WebDriverWait(browser, 180).until(
            lambda b: next(
                (
                    el
                    for el in b.find_elements(By.CSS_SELECTOR, "img[alt='attribution']")
                    if b.execute_script("return arguments[0].complete", el)
                ),
                None,
            )
        )
        width = browser.execute_script("return arguments[0].naturalWidth", image)
        assert width > 0
        browser.save_screenshot(str(tmp_path / "insights_ig2.png"))
        assert (tmp_path / "insights_ig2.png").stat().st_size > 0
    finally:
        browser.quit()
        http.shutdown()
        thread.join(timeout=10)


def test_the_example_serves_insights_on_localhost(visualizer) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import time
    import urllib.request

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "captum_ig2.insights", "--port", str(port), "--epochs", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        config = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/init", timeout=2) as r:
                    config = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert config is not None, process.stdout.read().decode() if process.stdout else ""
        assert {"IG2", "Guided IG"} <= set(config["methods"])
        assert any("Integrated" in name for name in config["methods"])
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout:
            process.stdout.close()
