"""A folder of images through a real aiortc connection on loopback, with and without emulated loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiortc")

from layercast.common.transport.lossy import LinkModel
from layercast.common.transport.signalling import WebRTCServer, connect_webrtc
from layercast.receiver.session import ReceiveSession
from layercast.sender.session import SendSession
from tests.session_helpers import encoded_samples, file_decodes, read_events, read_png

pytestmark = pytest.mark.timeout(60)


async def _run(out: Path, model: LinkModel | None, profile: str = "webrtc") -> tuple[ReceiveSession, list[int]]:
    results = encoded_samples()
    rx = ReceiveSession(out_dir=out, image_timeout=1.0)
    server = WebRTCServer("127.0.0.1", 0, on_transport=rx.serve_transport)
    async with rx, server:
        transport = await connect_webrtc(server.url, timeout=30)
        tx = SendSession(transport, profile=profile, link_model=model, reliable_families=["semantic"], stream_id=2)
        async with tx:
            ids = [(await tx.send_image(r.image)).image_id for r in results]
        await rx.run(count=len(ids), idle_timeout=5.0, until_closed=False)
    return rx, ids


async def test_folder_over_webrtc_equals_file_decode(tmp_path: Path) -> None:
    rx, ids = await _run(tmp_path, None)
    assert rx.summary.images == rx.summary.complete == len(ids)
    for iid, ref in zip(ids, file_decodes(encoded_samples()), strict=True):
        assert np.array_equal(read_png(tmp_path / "2" / str(iid) / "final.png"), ref), f"image {iid}"


async def test_webrtc_with_20pct_loss_yields_every_image(tmp_path: Path) -> None:
    rx, ids = await _run(tmp_path, LinkModel(loss=0.2, seed=7))
    assert rx.summary.images == len(ids)
    assert all((tmp_path / "2" / str(i) / "final.png").is_file() for i in ids)
    ready = [e for e in read_events(tmp_path) if e["event"] == "ImageReady"]
    assert sorted(e["image_id"] for e in ready) == sorted(ids)
    assert all("semantic" in e["layers"] for e in ready), "the reliable semantic channel never loses the prompt"


async def test_a_sender_hanging_up_closes_the_receivers_transport() -> None:
    rx = ReceiveSession(image_timeout=1.0)
    server = WebRTCServer("127.0.0.1", 0, on_transport=rx.serve_transport)
    async with rx, server:
        transport = await connect_webrtc(server.url, timeout=30)
        async with SendSession(transport, profile="webrtc-bundle", stream_id=5) as tx:
            await tx.send_image(encoded_samples()[0].image)
            await rx.run(count=1, until_closed=False)
            assert not await rx.wait_transports_closed(0.3), "the sender is still connected"
        assert await rx.wait_transports_closed(10), "the receiver sees the sender hang up"


async def test_bundled_images_over_webrtc_equal_file_decode(tmp_path: Path) -> None:
    rx, ids = await _run(tmp_path, None, profile="webrtc-bundle")
    assert rx.summary.images == rx.summary.complete == rx.summary.packets == len(ids)
    for iid, ref in zip(ids, file_decodes(encoded_samples()), strict=True):
        assert np.array_equal(read_png(tmp_path / "2" / str(iid) / "final.png"), ref), f"image {iid}"
