"""A real browser (chromium-headless-shell via playwright) watches the live view update by itself."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layercast.common.registry import codec_by_name
from layercast.common.transport.memory import memory_pair
from layercast.common.types import EncodedImage, LayerKind, Prompt
from layercast.receiver.layers import layerset_from_image
from layercast.receiver.session import ReceiveSession, Stage
from layercast.receiver.web import LiveView
from layercast.sender.session import SendSession
from tests.session_helpers import encoded_samples, read_png

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

CHROMIUM = shutil.which("chromium-headless-shell") or "/usr/bin/chromium-headless-shell"
HOSTILE = '<b id="xss">not bold</b> & <img src=x onerror="window.pwned=1">'
"""A prompt written to break out of the page: it must show as this very text."""

MEASURE = """(k) => {
  // what the card of cam8 shows once it was told of image k's first stage and its picture loaded (else null)
  const card = document.getElementById("stream-cam8");
  if (!card || card.dataset.receiving !== String(k) || card.dataset.stage === "0") return null;
  const img = card.querySelector("img.view");
  if (!img.complete || !img.naturalWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0, sum = 0, sq = 0;
  for (let i = 0; i < px.length; i += 4) {
    for (let c = 0; c < 3; c++) { n++; sum += px[i + c]; sq += px[i + c] * px[i + c]; }
  }
  const mean = sum / n;
  return {
    image: img.dataset.image, layers: img.dataset.layers, std: Math.sqrt(Math.max(0, sq / n - mean * mean)),
    arrived: card.dataset.arrived, prompt: card.querySelector(".prompt").textContent,
    negative: card.querySelector(".negative").textContent, receiving: card.querySelector(".receiving").textContent,
    finals: card.querySelectorAll(".finals img").length, stats: Object.assign({}, window.liveStats),
  };
}"""


def with_prompt(image: EncodedImage, text: str) -> EncodedImage:
    """`image` with its semantic layer replaced by `text` (raw UTF-8)."""
    semantic = codec_by_name("prompt-utf8").compress(Prompt(text=text))
    return dataclasses.replace(image, layers=[semantic if x.kind == LayerKind.SEMANTIC else x for x in image.layers])


def prompt_of(image: EncodedImage) -> Prompt:
    prompt = layerset_from_image(image).prompt
    assert prompt is not None
    return prompt


def png_std(path: Path) -> float:
    return float(read_png(path).astype(np.float64).std())


async def launch(pw: Any) -> Any:
    return await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])


def playwright_api() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser binary {CHROMIUM} not installed (Debian package chromium-headless-shell)")
    return pytest.importorskip("playwright.async_api", reason="playwright is not installed")


async def test_live_page_updates_itself(tmp_path: Path) -> None:
    api = playwright_api()
    results = encoded_samples()
    a, b = memory_pair()
    b.camera = "cam8"  # as a WebRTC offer names its camera
    async with ReceiveSession(b) as rx, SendSession(a, camera="cam8") as tx:
        view = LiveView(rx)
        async with view.serve("127.0.0.1", 0) as url, api.async_playwright() as pw:
            await tx.send_image(results[0].image)
            await rx.run(count=1, until_closed=False)
            browser = await launch(pw)
            try:
                page = await browser.new_page()
                await page.goto(url)
                img = page.locator("#stream-cam8 img.view")
                await img.wait_for(timeout=10_000)
                await page.wait_for_function(
                    "document.querySelector('#stream-cam8 img.view').naturalWidth > 0", timeout=10_000
                )
                assert await img.get_attribute("data-image") == "0"
                await tx.send_image(results[1].image)  # no reload: the page must notice by itself
                await rx.run(count=2, until_closed=False)
                await page.wait_for_function(
                    "document.querySelector('#stream-cam8 img.view').dataset.image === '1'"
                    " && document.querySelector('#stream-cam8 img.view').complete",
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


async def test_paced_stream_shows_prompts_refined_pictures_and_finals(tmp_path: Path) -> None:
    """Five images paced at 2400 bit/s (~8 s): between an image's prompt and its edge map (~0.8 s at that
    rate) the card shows the new prompt over the previous image's refined picture, never a flat fill."""
    api = playwright_api()
    samples = [r.image for r in encoded_samples()]
    images = [samples[i % len(samples)] for i in range(5)]
    images[2] = with_prompt(images[2], HOSTILE)
    prompts = [prompt_of(im) for im in images]
    a, b = memory_pair()
    b.camera = "cam8"
    first_stage = {k: asyncio.Event() for k in range(len(images))}

    def on_stage(stage: Stage) -> None:
        first_stage[stage.image_id].set()

    async with ReceiveSession(b) as rx, SendSession(a, camera="cam8", rate_bps=2400) as tx:
        rx.add_listener(on_stage)
        view = LiveView(rx)
        async with api.async_playwright() as pw:
            browser = await launch(pw)
            try:
                async with view.serve("127.0.0.1", 0) as url:
                    page = await browser.new_page()
                    requests: list[str] = []
                    page.on("request", lambda r: requests.append(r.url))
                    await page.goto(url)
                    await page.wait_for_function("window.liveStats.messages > 0", timeout=10_000)
                    assert view.sse_clients == 1

                    async def send_all() -> None:
                        for im in images:
                            await tx.send_image(im)

                    sender = asyncio.create_task(send_all())
                    seen: list[dict[str, Any]] = []
                    for k in range(1, len(images)):  # each new image, while later ones are still to come
                        await asyncio.wait_for(first_stage[k].wait(), 20)
                        handle = await page.wait_for_function(MEASURE, arg=k, timeout=10_000)
                        m = await handle.json_value()
                        await page.locator("#stream-cam8 img.view").screenshot(path=str(tmp_path / f"picture-{k}.png"))
                        await page.screenshot(path=str(tmp_path / f"page-{k}.png"))
                        m["k"], m["sending"] = k, not sender.done()
                        m["screenshot_std"] = png_std(tmp_path / f"picture-{k}.png")
                        seen.append(m)
                    await sender
                    await rx.run(count=len(images), until_closed=False)
                    await page.wait_for_function(
                        "[...document.querySelectorAll('#stream-cam8 .finals img')]"
                        f".filter(i => i.complete && i.naturalWidth > 0).length === {len(images)}",
                        timeout=10_000,
                    )
                    await page.screenshot(path=str(tmp_path / "page-end.png"))
                    stats = await page.evaluate("Object.assign({}, window.liveStats)")
                    pwned = await page.evaluate("window.pwned === undefined && !document.getElementById('xss')")
                    titles = await page.locator("#stream-cam8 .finals img").evaluate_all("a => a.map(i => i.title)")
                    t0 = asyncio.get_running_loop().time()
                # the page is still connected: the server's exit must end its event stream at once
                assert asyncio.get_running_loop().time() - t0 < 3, "the open event stream held the server's exit"
            finally:
                await browser.close()
        view.close()

    report = [{k: v for k, v in m.items() if k != "stats"} for m in seen]
    prompt_only = [m for m in seen if m["arrived"] == "semantic"]  # caught between the prompt and the edges
    assert len(prompt_only) >= 2, f"too few moments with only the newest prompt on the page: {report}"
    assert any(m["sending"] for m in prompt_only), report
    for m in seen:
        k = m["k"]
        # (a) the prompt text (and negative prompt) of the image that is arriving, as plain text
        assert (m["prompt"], m["negative"]) == (prompts[k].text, prompts[k].negative), report
        assert m["receiving"].startswith(f"receiving image {k}") or m["receiving"].startswith(f"image {k}"), report
        # (b) a refined picture, never the flat fill of a prompt-only stage
        assert m["std"] > 20 and m["screenshot_std"] > 20, f"the picture is a flat fill: {report}"
        assert "structure" in m["layers"] or "texture" in m["layers"], report
    for m in prompt_only:
        assert m["image"] == str(m["k"] - 1), f"the previous image stays until the new one has edges: {report}"
    # (c) the strip of recent finals grows during the stream
    counts = [m["finals"] for m in seen]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[0] < len(images), report
    assert titles[0].startswith("image 4: ") and f"image 2: {HOSTILE}" in titles, titles
    assert pwned, "a prompt was interpreted as HTML"
    # (d) pushed by server-sent events, not polled
    assert stats["mode"] == "live" and stats["polls"] == 0 and stats["messages"] >= len(seen), stats
    assert view.sse_connections >= 1 and not [u for u in requests if "/events" in u], requests


async def test_page_polls_where_there_is_no_event_source(tmp_path: Path) -> None:
    api = playwright_api()
    a, b = memory_pair()
    b.camera = "cam8"
    async with ReceiveSession(b) as rx, SendSession(a, camera="cam8") as tx:
        view = LiveView(rx)
        async with view.serve("127.0.0.1", 0) as url, api.async_playwright() as pw:
            browser = await launch(pw)
            try:
                page = await browser.new_page()
                await page.add_init_script("delete window.EventSource")
                await page.goto(url)
                await tx.send_image(with_prompt(encoded_samples()[0].image, HOSTILE))
                await rx.run(count=1, until_closed=False)
                await page.wait_for_function(
                    "document.querySelector('#stream-cam8 .finals img')?.naturalWidth > 0", timeout=10_000
                )
                assert await page.locator("#stream-cam8 .prompt").text_content() == HOSTILE
                stats = await page.evaluate("Object.assign({}, window.liveStats)")
                assert stats["mode"] == "polling" and stats["polls"] >= 1 and stats["messages"] == 0, stats
                assert await page.evaluate("window.pwned === undefined && !document.getElementById('xss')")
                assert view.sse_connections == 0
                await page.screenshot(path=str(tmp_path / "polling.png"))
            finally:
                await browser.close()
        view.close()
