"""The web page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser download):
upload a clip and ask about it, watch the answer stream in, then a second turn recorded from the (fake)
microphone as webm/opus with no text: voice chat. The answers equal model.chat's. Screenshots are kept in
tests/artifacts/."""

import base64
import os
from pathlib import Path

import pytest

import qwen2audio
from conftest import audio_bytes, tone
from qwen2audio.serve import ServeConfig, ServerThread, create_app

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
KEY = "browser-key"
MAX_TOKENS = 24

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: apt-get install "
                                "chromium (make system-deps) to run the browser test")


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    config = ServeConfig(max_batch=2, max_tokens=MAX_TOKENS, api_key=KEY)
    with ServerThread(create_app(qwen2audio.load(tiny_checkpoint), config)) as running:
        yield running


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])  # a beeping microphone
        context = browser.new_context(viewport={"width": 1000, "height": 760})
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        yield page
        browser.close()


def answer_of(page, n):
    """Wait for the n-th assistant bubble to finish; its text and how many streamed pieces built it."""
    bubble = page.locator(".msg.assistant").nth(n)
    bubble.wait_for()
    page.wait_for_function("(n) => document.querySelectorAll('.msg.assistant')[n].dataset.done === 'true'", arg=n,
                           timeout=60_000)
    return bubble.locator(".text").inner_text(), int(bubble.get_attribute("data-chunks")), bubble


def test_upload_ask_and_stream_then_voice_chat_from_the_microphone(server, page, tiny_checkpoint, tmp_path):
    reference = qwen2audio.load(tiny_checkpoint)
    clip = audio_bytes(tone(1.5))
    path = tmp_path / "clip.wav"
    path.write_bytes(clip)
    ARTIFACTS.mkdir(exist_ok=True)

    page.goto(server.url)
    page.wait_for_function("document.getElementById('model-name').textContent.includes('API key')")
    page.locator("#settings summary").click()
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.fill("#max-tokens", str(MAX_TOKENS))
    page.dispatch_event("#max-tokens", "change")
    page.locator("#settings summary").click()
    page.wait_for_function("document.getElementById('model-name').textContent === 'qwen2-audio'")

    # turn 1: an uploaded clip and a typed question
    page.set_input_files("#file", str(path))
    page.locator(".attachment audio").wait_for()  # the clip can be played back before sending
    page.fill("#text", "What is this sound?")
    page.click("#send")
    text, chunks, bubble = answer_of(page, 0)
    question = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}},
        {"type": "text", "text": "What is this sound?"}]}]
    assert text == reference.chat(question, max_new_tokens=MAX_TOKENS)
    assert chunks > 3, "the answer did not arrive in streamed pieces"
    assert f"{MAX_TOKENS} tokens" in bubble.locator(".meta").inner_text()
    assert page.locator(".msg.user audio").count() == 1  # the sent clip stays playable in the conversation
    page.screenshot(path=str(ARTIFACTS / "serve_browser_upload.png"))

    # turn 2: voice chat, recorded from the fake microphone (webm/opus, decoded by ffmpeg on the server)
    page.click("#record")
    page.wait_for_timeout(1200)
    page.click("#record")
    page.locator(".attachment audio").wait_for()
    page.click("#send")
    second, chunks, _ = answer_of(page, 1)
    assert chunks > 3 and second
    assert not page.locator(".msg.error").count(), page.locator(".msg.error").inner_text()
    assert page.locator(".msg.user").nth(1).locator(".meta").inner_text() == "voice chat"
    page.screenshot(path=str(ARTIFACTS / "serve_browser_voice_chat.png"))
    assert not page.errors
    print(f"screenshots: {ARTIFACTS / 'serve_browser_upload.png'}, {ARTIFACTS / 'serve_browser_voice_chat.png'}")
