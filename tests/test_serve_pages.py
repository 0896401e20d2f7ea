"""The playground and the arena in a real headless Chromium (Debian's chromium and its
chromedriver, driven by Selenium; nothing is downloaded): a prompt streams into the page, and
a vote lands in the SQLite file. Each page's screenshot is kept in $TINYGPT_TEST_ARTIFACTS
(default: the test's temporary folder). Without a browser these tests are skipped, saying so."""

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from test_serve import serving

from tinygpt.serve import ServeConfig, create_app, load_models

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="no chromium + chromedriver here (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def site(serve_run, tmp_path_factory):
    """A server with one tiny model and an arena (votes in a fresh SQLite file): (url, votes path)."""
    votes = tmp_path_factory.mktemp("pages") / "votes.sqlite"
    app = create_app(load_models([str(serve_run)], device="cpu", dtype="fp32"), ServeConfig(votes=str(votes)))
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}", votes


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("selenium", reason="selenium is a dev dependency: pip install -e '.[dev]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")   # Selenium Manager must not fetch a browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts(tmp_path):
    folder = Path(os.environ.get("TINYGPT_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait(driver, condition, seconds=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(condition)


def test_the_playground_streams_a_completion_into_the_page(site, browser, artifacts):
    import httpx
    from selenium.webdriver.common.by import By

    url, _ = site
    browser.get(url + "/")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    prompt = "the cat sat on"
    browser.find_element(By.ID, "prompt").send_keys(prompt)
    for field, value in (("temperature", "0"), ("max_tokens", "40")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "go").click()
    wait(browser, lambda d: "tokens/s" in d.find_element(By.ID, "speed").text
         and "first token" in d.find_element(By.ID, "speed").text)
    shown = browser.find_element(By.ID, "output").get_attribute("textContent")
    expected = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 40,
                                                         "temperature": 0, "top_p": 1}).json()["choices"][0]["text"]
    assert shown == expected and len(shown) > 0
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    browser.save_screenshot(str(artifacts / "playground.png"))


def test_an_arena_vote_lands_in_the_sqlite_file(site, browser, artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, votes = site
    browser.get(url + "/arena")
    browser.find_element(By.ID, "prompt").send_keys("Once upon a time")
    browser.find_element(By.ID, "battle").click()
    wait(browser, lambda d: d.find_element(By.ID, "ballot").is_displayed())
    left = browser.find_element(By.ID, "left").get_attribute("textContent")
    Select(browser.find_element(By.NAME, "left-fluency")).select_by_value("4")
    Select(browser.find_element(By.NAME, "right-relevance")).select_by_value("2")
    browser.save_screenshot(str(artifacts / "arena.png"))
    browser.find_element(By.CSS_SELECTOR, "[data-verdict='left']").click()
    wait(browser, lambda d: d.find_element(By.ID, "reveal").is_displayed())
    assert "A was tiny temperature=" in browser.find_element(By.ID, "reveal").text
    with sqlite3.connect(votes) as db:
        rows = db.execute("SELECT v.verdict, v.ratings, b.left_text, b.prompt FROM votes v "
                          "JOIN battles b ON b.id = v.battle_id").fetchall()
    assert len(rows) == 1
    verdict, ratings, left_text, prompt = rows[0]
    assert (verdict, prompt, left_text) == ("left", "Once upon a time", left)
    assert ratings == '{"left": {"fluency": 4}, "right": {"relevance": 2}}'
