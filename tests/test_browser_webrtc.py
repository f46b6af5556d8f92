"""A real browser (chromium-headless-shell via playwright) is the sender: its RTCPeerConnection mirrors
our negotiated channels, POSTs its offer to WebRTCServer's /offer, and sends real encoded packets."""

from __future__ import annotations

import asyncio
import base64
import shutil
from pathlib import Path

import pytest

pytest.importorskip("aiortc")

from layercast.common.codecs.prompt import Utf8PromptCodec
from layercast.common.transport.base import FAMILIES
from layercast.common.transport.signalling import WebRTCServer
from layercast.common.transport.webrtc import (
    WebRTCConfig,
    certificate_fingerprint,
    datachannel_init,
    generate_certificate_pem,
)
from layercast.common.types import EncodedImage, EncodedLayer, LayerKind, Prompt
from layercast.proto import framing, pb

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

CHROMIUM = shutil.which("chromium-headless-shell") or "/usr/bin/chromium-headless-shell"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

PAGE = """<!doctype html><meta charset="utf-8"><title>layercast browser sender</title>
<script>
async function sendPackets(channelInit, packets) {
  const pc = new RTCPeerConnection({iceServers: []});
  const channels = {};
  for (const [family, init] of Object.entries(channelInit)) {
    channels[family] = pc.createDataChannel(family, init);
    channels[family].binaryType = "arraybuffer";
  }
  const opened = Promise.all(Object.values(channels).map(ch => new Promise(
    resolve => ch.readyState === "open" ? resolve() : ch.addEventListener("open", resolve))));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(resolve => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
  });
  const resp = await fetch("/offer", {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify(pc.localDescription)});
  if (resp.status !== 200) throw new Error("offer refused: " + resp.status + " " + await resp.text());
  const answer = await resp.json();
  await pc.setRemoteDescription(answer);
  await opened;
  for (const [family, b64] of packets) {
    channels[family].send(Uint8Array.from(atob(b64), c => c.charCodeAt(0)));
  }
  const echo = await new Promise(resolve => channels.semantic.addEventListener(
    "message", ev => resolve(btoa(String.fromCharCode(...new Uint8Array(ev.data)))), {once: true}));
  const fp = answer.sdp.match(/a=fingerprint:sha-256 (\\S+)/)[1];
  window.layercastPc = pc;
  return {echo, fingerprint: fp};
}
</script>"""


def _packets() -> list[tuple[str, bytes]]:
    """Real wire packets of one image: a prompt layer plus structure and texture layers (opaque units)."""
    prompt = Utf8PromptCodec().compress(Prompt("a lighthouse at dusk, long exposure", negative="blurry"))
    units = [bytes([k]) * 700 for k in range(3)]
    edges = pb.LayerDescriptor(
        codec=pb.CODEC_ID_EDGES_CTX, unit_count=3, edges=pb.EdgeParams(width=64, height=48, stripe_rows=16)
    )
    colours = pb.LayerDescriptor(
        codec=pb.CODEC_ID_COLORMAP_PRED, unit_count=3, colormap=pb.ColormapParams(grid_width=8, grid_height=8)
    )
    layers = [
        prompt,
        EncodedLayer(LayerKind.STRUCTURE_EDGES, edges, units),
        EncodedLayer(LayerKind.TEXTURE, colours, units),
    ]
    img = EncodedImage(pb.ImageHeader(width=512, height=512, seed=11), layers, stream_id=1, image_id=9)
    packets = framing.packetize(img, mtu=1200)
    return [(LayerKind(p.kind).family, framing.encode_packet(p)) for p in packets]


async def test_browser_sender_packets_arrive_byte_exact() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser binary {CHROMIUM} not installed (Debian package chromium-headless-shell)")
    playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    packets = _packets()
    assert {f for f, _ in packets} == {"semantic", "structure", "texture"}
    pem = generate_certificate_pem()
    server = WebRTCServer(port=0, config=WebRTCConfig(certificate_pem=pem))
    server.add_routes([web.get("/", page)])
    async with server, playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            tab = await browser.new_page()
            await tab.goto(f"http://127.0.0.1:{server.port}/")
            call = tab.evaluate(
                "([init, packets]) => sendPackets(init, packets)",
                [datachannel_init(), [[f, base64.b64encode(p).decode()] for f, p in packets]],
            )
            sending = asyncio.ensure_future(call)
            rx = await server.accept(timeout=30)
            got = [await rx.recv(timeout=10) for _ in packets]
            await rx.send(b"echo:" + got[0])
            result = await asyncio.wait_for(sending, 20)
        finally:
            await browser.close()
    assert sorted(got) == sorted(p for _, p in packets), "every browser packet arrives byte-exact"
    assert got[0] == packets[0][1], "the semantic packet leads (reliable, ordered, sent first)"
    decoded = [framing.decode_packet(g) for g in got]
    assert {(d.stream_id, d.image_id) for d in decoded} == {(1, 9)}
    assert rx.stats.received == {f: sum(1 for g, _ in packets if g == f) for f in FAMILIES}
    assert base64.b64decode(result["echo"]) == b"echo:" + packets[0][1]
    assert "sha-256 " + result["fingerprint"] == certificate_fingerprint(pem), "the browser saw our identity"
