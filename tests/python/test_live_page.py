"""The live page in a real browser (Debian's headless Chromium, driven by Selenium through
Debian's chromedriver): open it, make a write through the producer, see the event appear,
and keep a screenshot under the test output (FOLDLINE_TEST_OUTPUT, default .foldline)."""

import json
import os
import pathlib
import time
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

NOTIFIER = os.environ.get("FOLDLINE_NOTIFIER_URL")
PRODUCER = os.environ.get("FOLDLINE_PRODUCER_URL")
# An admin token minted by scripts/test with the producer's secret.
TOKEN = os.environ.get("FOLDLINE_TEST_TOKEN", "")
OUTPUT = pathlib.Path(os.environ.get("FOLDLINE_TEST_OUTPUT", ".foldline"))


def post(path, body):
    request = urllib.request.Request(
        PRODUCER + path, data=json.dumps(body).encode(), headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture()
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


@pytest.mark.skipif(not NOTIFIER or not PRODUCER, reason="needs FOLDLINE_NOTIFIER_URL and FOLDLINE_PRODUCER_URL")
def test_a_write_appears_on_the_live_page(browser):
    browser.get(NOTIFIER + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "status").text == "live")
    created = post("/products", {"name": "Browser lamp", "price_cents": 999, "stock": 6, "seller_id": "web"})
    # 6 -> 3 crosses the low-stock threshold: the warning must be highlighted.
    post(f"/products/{created['id']}/stock", {"delta": -3})
    WebDriverWait(browser, 30).until(
        lambda d: created["id"] in d.find_element(By.ID, "feed").text
        and d.find_elements(By.CSS_SELECTOR, "#feed li.LowStockWarning")
    )
    feed = browser.find_element(By.ID, "feed").text
    assert "Browser lamp" in feed
    alerts = browser.find_element(By.ID, "counts-alerts").text
    assert created["id"] in alerts
    counts = browser.find_element(By.ID, "counts").text
    assert "LowStockWarning\n1" in counts or "LowStockWarning 1" in counts
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = OUTPUT / "live-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0
    time.sleep(0)  # keep the page open until here
