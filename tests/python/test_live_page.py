"""The live page in a real browser (Debian's headless Chromium, driven by Selenium through
Debian's chromedriver).

The test runs its own projector, query API and notifier for the producer's topic (so it can stop
and start them), writes events *before* the page opens, and checks that the page shows the
present on arrival (totals, chart, recent events, low stock), that a later write appears once,
that a reload shows the same history without duplicates, that the product panel shows a
product's history (newest first) and the product as of an earlier event (slider or click), and
that the page says so when the
notifier or the query API is down and recovers when they return. Screenshots are kept under
FOLDLINE_TEST_OUTPUT (default .foldline)."""

import os
import pathlib
import time
import uuid

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from services import (AVAILABLE, REASON, RECENT_EVENTS_TABLE, TOPIC, Process, free_port, post, projector,
                      recent_events)

OUTPUT = pathlib.Path(os.environ.get("FOLDLINE_TEST_OUTPUT", ".foldline"))

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=REASON)


@pytest.fixture(scope="module")
def services():
    ports = {name: free_port() for name in ("projector", "query", "notifier", "recent-events")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    common = {"FOLDLINE_TOPIC": TOPIC}
    procs = {
        "projector": projector(ports["projector"]),
        "recent-events": recent_events(ports["recent-events"]),
        "query": Process("query", {**common, "FOLDLINE_QUERY_LISTEN": f"127.0.0.1:{ports['query']}",
                                   "FOLDLINE_QUERY_CORS_ORIGINS": url["notifier"],
                                   "FOLDLINE_RECENT_EVENTS_TABLE": RECENT_EVENTS_TABLE}, url["query"]),
        "notifier": Process("notifier", {**common, "FOLDLINE_NOTIFIER_LISTEN": f"127.0.0.1:{ports['notifier']}",
                                         "FOLDLINE_QUERY_PUBLIC_URL": url["query"]}, url["notifier"]),
    }
    # Events written before anything of the page exists: the page must show them on arrival.
    seller = f"page-{uuid.uuid4().hex[:8]}"
    before = [post("/products", {"name": f"Lamp {i}", "price_cents": 1000 + i, "stock": 8, "seller_id": seller})
              for i in range(3)]
    low = post(f"/products/{before[0]['id']}/stock", {"delta": -5})  # 8 -> 3: low stock
    for p in procs.values():
        p.start()
    yield {"url": url, "procs": procs, "before": before, "low_position": low["position"]}
    for p in procs.values():
        p.stop()


@pytest.fixture()
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


def positions(browser):
    # Read in one script: the page re-renders lists, and elements found earlier may be gone.
    return browser.execute_script("return [...document.querySelectorAll('#feed li')].map(li => li.dataset.position)")


def total(browser, event_type):
    return browser.execute_script(
        f"const e = document.querySelector('#totals li[data-type=\"{event_type}\"] strong'); return e ? +e.textContent : -1")


def bars(browser):
    return browser.execute_script("return [...document.querySelectorAll('#chart rect')].map(r => +r.getAttribute('height'))")


def waiter(browser, seconds):
    return WebDriverWait(browser, seconds, ignored_exceptions=(StaleElementReferenceException,))


def screenshot(browser, name):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = OUTPUT / name
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0


def text(browser, element_id):
    return browser.find_element(By.ID, element_id).text


def test_the_page_shows_the_present_on_arrival_then_live_writes_once(services, browser):
    url, before = services["url"], services["before"]
    browser.get(url["notifier"] + "/")
    wait = waiter(browser, 30)
    wait.until(lambda d: text(d, "status") == "live")
    # Recent events from the log, written before the page opened.
    wait.until(lambda d: all(p["id"] in text(d, "feed") for p in before))
    assert "LowStockWarning" in text(browser, "feed")
    # Totals and the chart from the read model (the projector may still be catching up).
    wait.until(lambda d: "read model: up to date" == text(d, "model"))
    wait.until(lambda d: total(d, "ProductCreated") >= 3)
    assert total(browser, "LowStockWarning") >= 1
    heights = bars(browser)
    assert len(heights) == 24 and heights[-1] > 0, heights
    # The current low-stock products, from the read model.
    wait.until(lambda d: before[0]["id"] in text(d, "low-stock"))
    screenshot(browser, "live-page-on-arrival.png")

    # A write after load appears once, live.
    later = post("/products", {"name": "Late lamp", "price_cents": 500, "stock": 9, "seller_id": "web"})
    wait.until(lambda d: later["id"] in text(d, "feed"))
    time.sleep(1)
    seen = positions(browser)
    assert seen.count(later["position"]) == 1
    assert len(seen) == len(set(seen)), "an event shown twice"

    # A reload shows the same history, with no duplicate.
    browser.refresh()
    wait.until(lambda d: text(d, "status") == "live" and later["id"] in text(d, "feed"))
    again = positions(browser)
    assert len(again) == len(set(again)), "an event shown twice after a reload"
    # The page loads the last 50 events: those it showed before (nothing was written since).
    assert set(again) <= set(seen) and len(again) == min(50, len(seen)), (again, seen)
    assert later["position"] in again

    # The product panel: its state and its history from the read model (the projector may
    # still be writing them: search again until they are there).
    def product_shown(d):
        d.find_element(By.ID, "search-id").clear()
        d.find_element(By.ID, "search-id").send_keys(before[0]["id"])
        d.find_element(By.CSS_SELECTOR, "#search button").click()
        time.sleep(0.5)
        kinds = d.execute_script("return [...document.querySelectorAll('#product-events li')].map(li => li.className)")
        return kinds == ["LowStockWarning", "StockAdjusted", "ProductCreated"] and "stock\n3\n" in text(d, "product-state") + "\n"
    wait.until(product_shown)
    screenshot(browser, "live-page.png")


def history_types(browser):
    return browser.execute_script(
        "return [...document.querySelectorAll('#product-events li')].map(li => li.className.split(' ')[0])")


def slide_to(browser, index):
    browser.execute_script(
        "const r = document.getElementById('as-of-range'); r.value = arguments[0];"
        "r.dispatchEvent(new Event('input'))", index)


def test_the_product_panel_shows_its_history_and_the_product_as_of_an_earlier_event(services, browser):
    url = services["url"]
    created = post("/products", {"name": "Chair", "price_cents": 1000, "stock": 20, "seller_id": "web"})
    pid = created["id"]
    repriced = post(f"/products/{pid}", {"price_cents": 1100}, method="PATCH")
    post(f"/products/{pid}/stock", {"delta": -2, "reason": "sold"})
    post(f"/products/{pid}", {"name": "Armchair"}, method="PATCH")
    browser.get(url["notifier"] + "/")
    wait = waiter(browser, 30)
    wait.until(lambda d: text(d, "status") == "live")

    # The whole history from the read model, newest first; the state now.
    def panel_loaded(d):
        d.find_element(By.ID, "search-id").clear()
        d.find_element(By.ID, "search-id").send_keys(pid)
        d.find_element(By.CSS_SELECTOR, "#search button").click()
        time.sleep(0.5)
        return (history_types(d) == ["ProductUpdated", "StockAdjusted", "ProductUpdated", "ProductCreated"]
                and "Armchair" in text(d, "product-state"))
    wait.until(panel_loaded)
    assert text(browser, "as-of-label") == "now (v4)"

    # As of the price change: the name and stock it had then, from `?as_of=`.
    slide_to(browser, 1)
    wait.until(lambda d: "as it was at " + repriced["position"] in text(d, "product-state"))
    state = text(browser, "product-state")
    assert "Chair" in state and "Armchair" not in state and "11.00" in state and "stock\n20" in state, state
    assert text(browser, "as-of-label").startswith("v2 · ProductUpdated")
    selected = browser.execute_script("return document.querySelector('#product-events li.selected').dataset.position")
    assert selected == repriced["position"]
    # As of its creation, by clicking that row.
    browser.find_elements(By.CSS_SELECTOR, "#product-events li")[-1].click()
    wait.until(lambda d: "version\n1" in text(d, "product-state") and "10.00" in text(d, "product-state"))
    screenshot(browser, "live-page-as-of.png")

    # Back to now, then live writes join the history on top; a delete leaves the history.
    slide_to(browser, 3)
    wait.until(lambda d: "as it was" not in text(d, "product-state") and "Armchair" in text(d, "product-state"))
    post(f"/products/{pid}/stock", {"delta": 5})
    wait.until(lambda d: history_types(d)[:2] == ["StockAdjusted", "ProductUpdated"] and "stock\n23" in text(d, "product-state"))
    post(f"/products/{pid}", None, method="DELETE")
    wait.until(lambda d: history_types(d)[0] == "ProductDeleted" and "deleted" in text(d, "product-state"))
    assert len(history_types(browser)) == 6
    slide_to(browser, 4)
    wait.until(lambda d: "stock\n23" in text(d, "product-state") and "as it was" in text(d, "product-state"))
    screenshot(browser, "live-page-history.png")


def test_the_page_says_when_it_is_reconnecting_or_behind_and_recovers(services, browser):
    url, procs = services["url"], services["procs"]
    browser.get(url["notifier"] + "/")
    wait = waiter(browser, 40)
    wait.until(lambda d: text(d, "status") == "live" and text(d, "model") == "read model: up to date")

    # The notifier goes away: the page says it is reconnecting, and is live again after.
    procs["notifier"].stop()
    wait.until(lambda d: text(d, "status") == "reconnecting…")
    screenshot(browser, "live-page-reconnecting.png")
    written = post("/products", {"name": "While away", "price_cents": 700, "stock": 9, "seller_id": "web"})
    procs["notifier"].start()
    wait.until(lambda d: text(d, "status") == "live")
    # The write made while the notifier was down arrives once (the stream resumes at its cursor).
    wait.until(lambda d: written["id"] in text(d, "feed"))
    assert positions(browser).count(written["position"]) == 1

    # The projector stops: a new write is on the page but not in the read model: "behind".
    procs["projector"].stop()
    behind = post("/products", {"name": "Not yet applied", "price_cents": 700, "stock": 9, "seller_id": "web"})
    wait.until(lambda d: behind["id"] in text(d, "feed"))
    wait.until(lambda d: text(d, "model").startswith("read model: behind by"))
    screenshot(browser, "live-page-behind.png")
    procs["projector"].start()
    wait.until(lambda d: text(d, "model") == "read model: up to date")

    # The query API goes away: the page says so, and recovers.
    procs["query"].stop()
    wait.until(lambda d: text(d, "model") == "read model: query API unreachable")
    procs["query"].start()
    wait.until(lambda d: text(d, "model") == "read model: up to date")
