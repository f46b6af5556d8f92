"""A real browser (chromium-headless-shell via playwright) watches the live view update by itself."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from layercast.common.transport.memory import memory_pair
from layercast.receiver.session import ReceiveSession
from layercast.receiver.web import LiveView
from layercast.sender.session import SendSession
from tests.session_helpers import encoded_samples

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

CHROMIUM = shutil.which("chromium-headless-shell") or "/usr/bin/chromium-headless-shell"


async def test_live_page_updates_itself(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser binary {CHROMIUM} not installed (Debian package chromium-headless-shell)")
    playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    results = encoded_samples()
    a, b = memory_pair()
    b.camera = "cam8"  # as a WebRTC offer names its camera
    async with ReceiveSession(b) as rx, SendSession(a, camera="cam8") as tx:
        view = LiveView(rx)
        async with view.serve("127.0.0.1", 0) as url, playwright_api.async_playwright() as pw:
            await tx.send_image(results[0].image)
            await rx.run(count=1, until_closed=False)
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = await browser.new_page()
                await page.goto(url)
                img = page.locator("#stream-cam8 img")
                await img.wait_for(timeout=10_000)
                await page.wait_for_function(
                    "document.querySelector('#stream-cam8 img').naturalWidth > 0", timeout=10_000
                )
                assert await img.get_attribute("data-image") == "0"
                await tx.send_image(results[1].image)  # no reload: the page must notice by itself
                await rx.run(count=2, until_closed=False)
                await page.wait_for_function(
                    "document.querySelector('#stream-cam8 img').dataset.image === '1'"
                    " && document.querySelector('#stream-cam8 img').complete",
                    timeout=10_000,
                )
                await asyncio.sleep(0.2)
                meta = await page.locator("#stream-cam8 .meta").text_content()
                assert meta is not None and "image 1" in meta and "final" in meta and "preview" in meta
                title = await page.locator("#stream-cam8 b").text_content()
                status = await page.locator("#status").text_content()
                assert title == "camera cam8" and status is not None and "decoder: preview" in status
                shot = tmp_path / "liveview.png"
                await page.screenshot(path=str(shot))
                assert shot.stat().st_size > 1000
            finally:
                await browser.close()
        view.close()
