"""The page at / and the `gpner render` file, driven in a real headless Chromium (selenium).

Needs Debian's chromium and chromium-driver (`.ci/run` installs them). Skipped with a reason
where they are missing, except under CI (CI=true), where that is a failure.
"""

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="needs pip install fastapi")
httpx = pytest.importorskip("httpx", reason="needs pip install httpx")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs pip install selenium")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from gpner.cli import main  # noqa: E402
from gpner.serve.app import create_app  # noqa: E402
from tests.serve_helpers import REQUEST_SECONDS, running_server  # noqa: E402

TEXTS = ["北京大学的张三来了", "张三在上海工作。"]


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        message = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]:
        options.add_argument(arg)
    options.add_argument("--window-size=1000,700")
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def shown_spans(browser):
    """Per rendered text: its text content and its spans as the tags in the DOM give them."""
    docs = []
    for doc in browser.find_elements(By.CSS_SELECTOR, ".gpner-doc"):
        tags = doc.find_elements(By.CSS_SELECTOR, ".gpner-tag")
        spans = {
            (
                int(t.get_attribute("data-start")),
                int(t.get_attribute("data-end")),
                t.get_attribute("data-label"),
            )
            for t in tags
        }
        docs.append((doc.get_attribute("textContent"), spans))
    return docs


def line_boxes(browser, start, end, label):
    """The on-screen boxes of one span's underline pieces."""
    tag = browser.find_element(
        By.CSS_SELECTOR, f'.gpner-tag[data-start="{start}"][data-end="{end}"][data-label="{label}"]'
    )
    line = tag.find_element(By.XPATH, "..")
    slot = line.get_attribute("style")
    doc = tag.find_element(By.XPATH, "ancestor::div[@class='gpner-doc']")
    pieces = [
        e
        for e in doc.find_elements(By.CSS_SELECTOR, ".gpner-line")
        if e.get_attribute("style") == slot
    ]
    return [p.rect for p in pieces], line.value_of_css_property("background-color")


def assert_nested_visible(browser):
    """北京 (LOC) inside 北京大学 (ORG): two underlines under 北京, apart, in two colours."""
    inner, inner_color = line_boxes(browser, 0, 2, "LOC")
    outer, outer_color = line_boxes(browser, 0, 4, "ORG")
    assert inner_color != outer_color
    for box in inner + outer:
        assert box["width"] > 0 and box["height"] >= 3
    assert min(b["y"] for b in outer) >= max(
        b["y"] + b["height"] for b in inner
    )  # stacked, inner first
    span_inner = max(b["x"] + b["width"] for b in inner) - min(b["x"] for b in inner)
    span_outer = max(b["x"] + b["width"] for b in outer) - min(b["x"] for b in outer)
    assert span_outer > 1.5 * span_inner  # 4 characters against 2


def test_page_highlights_what_the_api_predicts(browser, served_model, tmp_path):
    with running_server(create_app(served_model)) as url:
        browser.get(url + "/")
        box = browser.find_element(By.ID, "input")
        box.send_keys("\n".join(TEXTS))
        browser.find_element(By.ID, "run").click()
        WebDriverWait(browser, REQUEST_SECONDS).until(
            lambda b: b.find_element(By.ID, "output").get_attribute("data-state") == "done"
        )
        expected = httpx.post(
            f"{url}/predict", json={"texts": TEXTS}, timeout=REQUEST_SECONDS
        ).json()["results"]
        shown = shown_spans(browser)
        assert [text for text, _ in shown] == TEXTS
        assert [spans for _, spans in shown] == [
            {(s["start"], s["end"], s["label"]) for s in r["spans"]} for r in expected
        ]
        assert_nested_visible(browser)
        tag = browser.find_element(By.CSS_SELECTOR, '.gpner-tag[data-label="ORG"]')
        drawn = browser.execute_script(
            "return getComputedStyle(arguments[0], '::after').content", tag
        )
        assert drawn == '"ORG"' and tag.rect["width"] > 0  # the label is drawn (by CSS) ...
        assert "ORG “北京大学” [0, 4) score" in tag.get_attribute("title")  # ... the score hovers
        status = browser.find_element(By.ID, "status").text
        assert status.startswith(f"{sum(len(r['spans']) for r in expected)} entities")
        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000

        # a bad request shows the server's message instead of failing silently
        browser.find_element(By.ID, "threshold").send_keys("abc")  # number input: stays empty
        box.clear()
        box.send_keys("\u3000")  # only whitespace: the page asks for text, sends nothing
        browser.find_element(By.ID, "run").click()
        assert browser.find_element(By.ID, "status").text == "Type a text first."


def test_rendered_file_shows_the_same_offline(browser, served_model, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.html"
    assert main(["render", str(served_model), str(texts), "-o", str(out)]) == 0
    browser.get(out.as_uri())
    shown = shown_spans(browser)
    assert [text for text, _ in shown] == TEXTS
    assert (0, 4, "ORG") in shown[0][1] and (0, 2, "LOC") in shown[0][1]
    assert_nested_visible(browser)
    browser.save_screenshot(str(tmp_path / "render.png"))
