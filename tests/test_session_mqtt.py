"""A folder of images through a real Mosquitto broker started by the test, with and without emulated loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiomqtt")

from layercast.common.transport.lossy import LinkModel
from layercast.common.transport.mqtt import MqttConfig, MqttTransport
from layercast.receiver.session import ReceiveSession
from layercast.sender.session import SendSession
from tests.mqtt_broker import start_broker
from tests.session_helpers import encoded_samples, file_decodes, read_events, read_png

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]


async def _run(tmp_path: Path, model: LinkModel | None) -> tuple[Path, ReceiveSession, list[int]]:
    broker = start_broker(tmp_path)
    out = tmp_path / "out"
    try:
        results = encoded_samples()
        rx_t = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port, role="receive", stream="cam4"))
        tx_t = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port, role="send", stream="cam4"))
        async with rx_t, ReceiveSession(out_dir=out, image_timeout=1.0) as rx:
            rx.add_transport(rx_t, "mqtt")
            async with SendSession(tx_t, profile="mqtt", link_model=model, camera="cam4") as tx:
                ids = [(await tx.send_image(r.image)).image_id for r in results]
            await rx.run(count=len(ids), idle_timeout=5.0, until_closed=False)
    finally:
        broker.stop()
    return out, rx, ids


async def test_folder_over_mosquitto_equals_file_decode(tmp_path: Path) -> None:
    out, rx, ids = await _run(tmp_path, None)
    assert rx.summary.images == rx.summary.complete == len(ids)
    assert rx.summary.packets == len(ids), "the mqtt profile bundles each image into one message"
    for iid, ref in zip(ids, file_decodes(encoded_samples()), strict=True):
        assert np.array_equal(read_png(out / "cam4" / str(iid) / "final.png"), ref), f"image {iid}"


async def test_mosquitto_with_20pct_loss_yields_every_image(tmp_path: Path) -> None:
    out, rx, ids = await _run(tmp_path, LinkModel(loss=0.2, seed=11))
    ready = [e for e in read_events(out) if e["event"] == "ImageReady"]
    assert sorted(e["image_id"] for e in ready) == sorted(ids) and rx.summary.images == len(ids)
    assert all("semantic" in e["layers"] for e in ready), "FEC repairs keep the prompt"
    assert all((out / "cam4" / str(i) / "final.png").is_file() for i in ids)
