"""The viewer in headless Chromium (Debian chromium + chromium-driver, selenium): 320 prompts,
no console errors, the picker pages / searches / filters, clicking a prompt redraws the
chart, modes and smoothing change it, the cursor shows the token; a screenshot is kept."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from analyses.viewer import build_viewer
from store import BuildSpec, Store

NOTES = ("refusal", "compliance", "jailbreak_success", "jailbreak_fail")
N = 320


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("viewer-store")))
    prompts = [{"prompt_id": str(i), "prompt": f"question number {i} about topic {i % 7}", "note": NOTES[i % 4],
                "polarity": None} for i in range(N)]
    store.build(BuildSpec("prompts-big", "prompts", "test", "1", {}, {}, {}), lambda w: w.write_table(prompts))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        n = 8 + i % 9
        for t in range(n):
            for v in ("refusal:mean_diff", "evil:probe"):
                score = float(rng.normal(i % 5, 1))
                rows.append({"prompt_id": str(i), "sample": f"{i}:0", "token_index": t, "token_id": t,
                             "token": f"tok{t}", "is_response": t >= 4, "layer": 12, "vector": v, "score": score,
                             "cosine": score / 50, "centered": score - 1.0, "norm": 50.0})
    spec = BuildSpec("projections-x-a-big", "projections", "test", "1", {"prompt_set": "big"}, {}, {})
    projections = store.build(spec, lambda w: w.write_table(rows)).manifest
    return store, build_viewer(store, projections.ref).manifest


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup.sh and .ci/run install them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1300,1000"):
        opts.add_argument(arg)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    yield drv
    drv.quit()


def test_viewer_in_headless_chromium(page, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    store, manifest = page
    assert manifest.summary["samples"] == N
    browser.get("file://" + store.path(manifest, "index.html"))
    by_id = lambda i: browser.find_element("id", i)  # noqa: E731
    items = lambda: browser.find_elements("css selector", "#prompt-list li")  # noqa: E731
    chart = lambda: [p.get_attribute("d") for p in browser.find_elements("css selector", "path.trait-line")]  # noqa: E731
    assert by_id("match-count").text == f"{N} prompts" and by_id("page-info").text == "1 / 16" and len(items()) == 20
    first_page = items()[0].text
    by_id("next").click()
    assert by_id("page-info").text == "2 / 16" and items()[0].text != first_page
    before = chart()
    assert len(before) == 2 and all(before)
    items()[3].click()
    assert "question number 23 " in by_id("current-prompt").text + " "
    after = chart()
    assert after != before
    by_id("search").send_keys("number 123 ")
    assert by_id("match-count").text == "1 prompts" and "question number 123" in items()[0].text
    by_id("search").clear()
    by_id("search").send_keys(" ")  # fire input with an empty-ish query
    Select(by_id("note-filter")).select_by_value("jailbreak_fail")
    assert by_id("match-count").text == f"{N // 4} prompts" and all("jailbreak_fail" in li.text for li in items())
    Select(by_id("mode")).select_by_value("cosine")
    assert chart() != after
    cosine = chart()
    by_id("smooth").clear()
    by_id("smooth").send_keys("5")
    assert chart() != cosine
    ActionChains(browser).move_to_element_with_offset(by_id("chart"), 100, 20).perform()
    assert by_id("hover-token").text.startswith("#") and "tok" in by_id("hover-token").text
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    shot = tmp_path / "viewer.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
