"""Swagger UI in a real browser: headless Debian Chromium driven by Playwright.

The test fills the /v1/embed form with a text, a photo and a WAV through "Try it out",
executes it and reads a 200 and a vector from the response panel. The page may load
nothing from outside 127.0.0.1, which proves the assets are served by the service.
"""

import json
import shutil
from pathlib import Path

import pytest

from app.settings import PROJECT_ROOT
from tests.support.server import RunningServer
from tests.support.speech import speak

SCREENSHOT = PROJECT_ROOT / "docs" / "img" / "swagger-embed.png"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed; install Debian's chromium (make setup-test does)")
    return path


def test_swagger_try_it_out_embeds(
    server: RunningServer, chromium_path: str, photo_jpegs: dict[str, bytes], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "cat.jpg"
    photo.write_bytes(photo_jpegs["cat"])
    speech = tmp_path / "speech.wav"
    speech.write_bytes(speak("Hello from the browser test."))
    outside_requests: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1800})
        page.on(
            "request",
            lambda request: None if request.url.startswith(server.url) else outside_requests.append(request.url),
        )
        page.goto(f"{server.url}/docs")

        operation = page.locator("#operations-inference-embed_v1_embed_post")
        operation.locator(".opblock-summary").click()
        operation.get_by_role("button", name="Try it out").click()
        operation.locator("tr[data-property-name='text'] input[type=text]").fill("A cat asleep on a sofa")
        operation.locator("tr[data-property-name='image'] input[type=file]").set_input_files(str(photo))
        operation.locator("tr[data-property-name='audio'] input[type=file]").set_input_files(str(speech))
        operation.get_by_role("button", name="Execute").click()

        status_cell = operation.locator(".live-responses-table .response .response-col_status").first
        status_cell.wait_for(timeout=60_000)
        status = status_cell.inner_text().strip()
        body_text = operation.locator(".live-responses-table .response-col_description pre").first.inner_text()
        operation.locator(".live-responses-table").scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOT), full_page=False)
        browser.close()

    assert status == "200"
    body = json.loads(body_text)
    assert body["modalities"] == ["text", "image", "audio"]
    assert len(body["embedding"]) == body["dimension"] == 1920
    assert outside_requests == []
