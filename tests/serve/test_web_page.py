"""The web chat page in a real browser: Debian's Chromium, headless, driven by Playwright
(no browser download), against a real server process."""

from __future__ import annotations

import shutil
import time

import pytest
from serving import Server

CHROMIUM = "/usr/bin/chromium"
#: As this machine's probe starts it: root needs --no-sandbox; the closed network refuses
#: Chromium's background connections, so they are switched off.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(serve_model_dir, tmp_path_factory):
    srv = Server(serve_model_dir, tmp_path_factory.mktemp("serve-web"))
    yield srv
    srv.assert_stopped_cleanly()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    assert shutil.which("chromium") == CHROMIUM, "install Debian's chromium (scripts/setup.sh --test does)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page()
        page.goto(server.url)
        yield page
        browser.close()


def _reply(page, n: int) -> str:
    return page.locator(".msg.assistant .body").nth(n).inner_text()


STOP_AT_FIRST_TEXT = """() => {
  const observer = new MutationObserver(() => {
    const body = document.querySelectorAll('.msg.assistant .body')[1];
    const stop = document.getElementById('stop');
    if (body && body.textContent.length > 0 && !stop.disabled) {
      observer.disconnect();
      window.stoppedWith = body.textContent.length;
      stop.click();
    }
  });
  observer.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def test_the_page_chats_streams_and_stops(page, server, reference, tmp_path):
    page.get_by_text("llama on cpu").wait_for()  # the model and the backend are shown
    page.get_by_text("Settings").click()
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max tokens").fill("24")
    page.get_by_text("Settings").click()
    page.get_by_label("Message").fill("Hello, who are you?")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('send').disabled === false "
                           "&& document.querySelectorAll('.msg.assistant').length === 1")
    expected, _ = reference(messages=[{"role": "user", "content": "Hello, who are you?"}], max_tokens=24)
    assert _reply(page, 0) == expected  # the streamed deltas, as the greedy answer alone

    page.get_by_text("Settings").click()
    page.get_by_label("Max tokens").fill("")  # as long as the context allows
    page.get_by_label("Message").fill("Tell me a long story.")
    # Stop is pressed in the page the moment the first text shows: the tiny model can finish a
    # whole reply (up to its small context) in the time a round trip from here to the page takes.
    page.evaluate(STOP_AT_FIRST_TEXT)
    page.get_by_role("button", name="Send").click()
    page.get_by_text("(stopped)").wait_for()
    assert page.evaluate("window.stoppedWith") > 0  # pressed mid-stream, with some of the reply shown
    assert page.get_by_role("button", name="Send").is_enabled()
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
    assert (tmp_path / "chat.png").stat().st_size > 10_000
    for _ in range(100):  # the server notices the closed stream between two steps
        if any(e["finish_reason"] == "cancelled" for e in server.events("engine.done")):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the server did not cancel the stopped reply")
