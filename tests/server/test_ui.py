"""The chat page at / in Debian's headless chromium (through its chromedriver): streaming, turns, Stop, safety."""

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from tokserve.engine import Engine

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's, as .ci/run installs them
# Records the text of one reply each animation frame while it streams: what a watching user saw, frame by frame.
WATCH = """
const item = [...document.querySelectorAll(".message.assistant")].pop();
window.frames_seen = [];
const watch = () => {
  const text = item.querySelector(".text").textContent;
  if (item.dataset.state === "streaming" && window.frames_seen.at(-1) !== text) window.frames_seen.push(text);
  if (["waiting", "streaming"].includes(item.dataset.state)) requestAnimationFrame(watch);
};
requestAnimationFrame(watch);
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            "these tests need Debian's chromium and chromium-driver: `apt-get install chromium chromium-driver`"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def fill(browser: WebDriver, field: str, value: str) -> None:
    element = browser.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def last_reply(browser: WebDriver) -> WebElement:
    return browser.find_elements(By.CSS_SELECTOR, ".message.assistant")[-1]


def ask(browser: WebDriver, text: str, ended: tuple[str, ...] = ("done", "stopped", "error")) -> WebElement:
    """Send `text` with the Send button, start watching the reply, and wait until it has ended."""
    fill(browser, "message", text)
    browser.find_element(By.ID, "send").click()
    browser.execute_script(WATCH)
    WebDriverWait(browser, 120).until(lambda _: last_reply(browser).get_attribute("data-state") in ended)
    return last_reply(browser)


def test_reply_streams_and_both_turns_reach_the_server(
    browser: WebDriver, logged_server: tuple[str, list[tuple[dict[str, str], Any]]], tmp_path: Path
) -> None:
    url, received = logged_server
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda _: browser.find_element(By.ID, "model").text == "SmolLM2-135M-Instruct")
    fill(browser, "system", "You are a helpful poet. Write short lines.")
    fill(browser, "temperature", "0")
    fill(browser, "max-tokens", "16")
    fill(browser, "api-key", "sk-test")
    question = "Write a haiku about the sea."

    reply = ask(browser, question)
    assert reply.get_attribute("data-state") == "done"
    first = browser.execute_script("return arguments[0].querySelector('.text').textContent", reply)
    frames: list[str] = browser.execute_script("return window.frames_seen")
    assert len(frames) >= 3, frames  # it grew on screen, frame after frame, before it was complete
    assert all(first.startswith(text) for text in frames) and frames[0] != first
    note = reply.find_element(By.CLASS_NAME, "note").text
    assert "\n" in first and "\n" in reply.find_element(By.CLASS_NAME, "text").text  # shown on its own lines

    ask(browser, "Now one about the sky.")
    headers, body = received[-1]
    assert headers["authorization"] == "Bearer sk-test"
    session = headers["x-session-id"]  # one per conversation: replicas behind nginx or a gateway keep its cache
    assert re.fullmatch(r"[0-9a-f]{32}", session) and received[-2][0]["x-session-id"] == session
    system = {"role": "system", "content": "You are a helpful poet. Write short lines."}
    assert body["messages"] == [
        system,
        {"role": "user", "content": question},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Now one about the sky."},
    ]
    assert (body["temperature"], body["max_tokens"], body["stream"]) == (0, 16, True)
    # What the page showed is the model's whole reply, newlines and spaces included.
    whole = httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": [system, {"role": "user", "content": question}], "temperature": 0, "max_tokens": 16},
        timeout=120,
    )
    assert whole.json()["choices"][0]["message"]["content"] == first
    tokens = whole.json()["usage"]["completion_tokens"]
    assert re.fullmatch(rf"TTFT \d+\.\d\d s · [\d.]+ tokens/s · {tokens} tokens", note)

    screenshot = tmp_path / "chat-page.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot of the finished exchange: {screenshot}")


def test_stop_ends_the_generation(
    browser: WebDriver, base_url: str, engine: Engine, wait_until: Callable[..., None]
) -> None:
    browser.get(base_url)
    fill(browser, "temperature", "0")
    fill(browser, "max-tokens", "4000")
    wait_until(lambda: engine.counters.running == 0)  # the worker counts a request just after its last token
    before = engine.counters
    fill(browser, "message", "Tell me a long story about a dragon.")
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 60).until(lambda _: last_reply(browser).get_attribute("data-state") == "streaming")
    browser.find_element(By.ID, "stop").click()
    wait_until(lambda: engine.counters.cancelled == before.cancelled + 1)
    assert engine.counters.running == 0 and engine.counters.finished == before.finished
    WebDriverWait(browser, 10).until(lambda _: last_reply(browser).get_attribute("data-state") == "stopped")
    assert browser.find_element(By.ID, "send").is_enabled() and not browser.find_element(By.ID, "stop").is_enabled()

    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".message") == []


def test_model_output_is_shown_as_text(
    browser: WebDriver, serve_with: Callable[..., AbstractContextManager[str]]
) -> None:
    # The model's real output, with every "e" turned into markup by a server replacement rule.
    markup = "<b>e</b><script>document.title='injected'</script>"
    with serve_with(replace=[f"e={markup}"]) as url:
        browser.get(url)
        fill(browser, "temperature", "0")
        fill(browser, "max-tokens", "12")
        reply = ask(browser, "Hello!")
    assert markup in reply.find_element(By.CLASS_NAME, "text").text
    assert browser.find_elements(By.CSS_SELECTOR, "#transcript b, #transcript script") == []
    assert browser.title == "tokserve chat"


def test_page_and_assets_are_served_and_no_ui_turns_them_off(
    base_url: str, serve_with: Callable[..., AbstractContextManager[str]]
) -> None:
    page = httpx.get(base_url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self': no inline script
    assert httpx.get(f"{base_url}/ui/chat.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{base_url}/ui/%2E%2E%2Fconfig.py").status_code == 404  # only the listed files
    with serve_with(no_ui=True) as url:
        for path in ("/", "/ui/chat.js"):
            response = httpx.get(f"{url}{path}")
            assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(f"{url}/health").json() == {"status": "ready"}
