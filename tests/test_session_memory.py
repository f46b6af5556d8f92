"""Send and receive sessions end to end over the in-memory pair, with and without an emulated lossy link."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from layercast.common.fec import FecPolicy
from layercast.common.transport.lossy import LinkModel
from layercast.common.transport.memory import memory_pair
from layercast.common.types import LayerSet
from layercast.proto import framing
from layercast.receiver.decoder import Decoder
from layercast.receiver.preview import PreviewDecoder
from layercast.receiver.session import ReceiveSession, Stage
from layercast.sender.session import SendSession, plan_packets
from tests.session_helpers import encoded_samples, file_decodes, read_events, read_png

pytestmark = pytest.mark.timeout(60)


async def _stream(
    out: Path,
    *,
    profile: str = "webrtc",
    model: LinkModel | None = None,
    rate: float = 0,
    decoder: Decoder | None = None,
) -> tuple[ReceiveSession, list[int]]:
    results = encoded_samples()
    a, b = memory_pair()
    rx = ReceiveSession(b, decoder=decoder, out_dir=out, image_timeout=1.0)
    tx = SendSession(a, profile=profile, rate_bps=rate, link_model=model, stream_id=5)
    async with rx:
        async with tx:
            ids = [(await tx.send_image(r.image)).image_id for r in results]
        await rx.run(until_closed=True)
    return rx, ids


async def test_no_loss_outputs_equal_file_decode(tmp_path: Path) -> None:
    rx, ids = await _stream(tmp_path)
    want = file_decodes(encoded_samples())
    assert rx.summary.images == len(ids) == len(want)
    assert rx.summary.complete == len(ids) and rx.summary.rejected == 0
    for iid, ref in zip(ids, want, strict=True):
        got = read_png(tmp_path / "5" / str(iid) / "final.png")
        assert got.shape == ref.shape and np.array_equal(got, ref), f"image {iid} differs from the file decode"
    kinds = {e["event"] for e in read_events(tmp_path)}
    assert {"LayerComplete", "LayerSetChanged", "ImageReady", "Stage"} <= kinds


async def test_start_loads_the_prompt_model_before_packets_arrive() -> None:
    """The first prompt must not stall a receiver for the model's ~1 s load: `start` does it, off the loop."""
    from layercast.common.codecs.prompt_mix import shipped_mix_model

    shipped_mix_model.cache_clear()
    async with ReceiveSession():
        assert shipped_mix_model.cache_info().currsize == 1


@pytest.mark.parametrize(
    "model",
    [LinkModel(loss=0.2, seed=3), LinkModel.parse(burst="5%", burst_len=4, seed=4)],
    ids=["random-20pct", "burst-5pct"],
)
async def test_lossy_link_every_image_yields_output(tmp_path: Path, model: LinkModel) -> None:
    rx, ids = await _stream(tmp_path, profile="lora", model=model)
    assert rx.summary.images == len(ids)
    for iid in ids:
        final = tmp_path / "5" / str(iid) / "final.png"
        assert final.is_file(), f"image {iid} got packets but no output"
        stage = rx.records[("5", iid)].final
        assert stage is not None and read_png(final).shape[:2] == stage.rgb.shape[:2]
    events = read_events(tmp_path)
    ready = [e for e in events if e["event"] == "ImageReady"]
    assert sorted(e["image_id"] for e in ready) == sorted(ids)
    assert all("semantic" in e["layers"] for e in ready), "FEC keeps the semantic layer alive"
    if model.loss:
        partial = [e for e in events if e["event"] == "LayerPartial"]
        assert partial, "20% loss on the lora profile leaves some layer partial"
        assert all(e["missing_units"] and e["unit_count"] >= len(e["missing_units"]) for e in partial)
        # an image ends partial unless FEC repaired every stripe: the log says which, per image
        assert all(set(e["partial_families"]) | set(e["missing_families"]) or e["complete"] for e in ready)
        assert rx.assembler.stats["recovered"] > 0, "FEC repaired some fragments"


async def test_progressive_stages_per_layer(tmp_path: Path) -> None:
    rx, ids = await _stream(tmp_path, profile="sbd", rate=60_000)
    for iid in ids:
        rec = rx.records[("5", iid)]
        want = len({f for f, a in rec.layers.items() if a.complete})
        cancelled = [e for e in read_events(tmp_path) if e["event"] == "DecodeCancelled" and e["image_id"] == iid]
        # each arriving layer starts a decode; one superseded by a richer layer set is cancelled, not written
        assert want >= 2 and rec.stages >= 2, f"image {iid}: progressive stages ({rec.stages})"
        assert rec.stages + len(cancelled) >= want, f"image {iid}: a layer set was neither decoded nor cancelled"
        folder = tmp_path / "5" / str(iid)
        names = sorted(p.name for p in folder.glob("stage-*.png"))
        assert names == [f"stage-{n}.png" for n in range(1, rec.stages + 1)]
        assert (folder / "final.png").read_bytes() == (folder / f"stage-{rec.stages}.png").read_bytes()
    stages = [e for e in read_events(tmp_path) if e["event"] == "Stage" and e["image_id"] == ids[0]]
    assert stages[0]["layers"] == ["semantic"], "the first preview comes from the prompt alone"
    assert len(stages[-1]["layers"]) > 1 and stages[-1]["final"]


class SlowDecoder:
    """A decoder that, like a diffusion run, takes a while on partial layer sets and honours should_stop."""

    name = "slow"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped: list[list[str]] = []
        self.calls: list[list[str]] = []

    def decode(
        self,
        layers: LayerSet,
        *,
        on_step: Callable[..., None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        self.calls.append(layers.present())
        if layers.texture is None:
            self.started.set()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if should_stop is not None and should_stop():
                    self.stopped.append(layers.present())
                    break
                time.sleep(0.005)
        return PreviewDecoder().decode(layers)


async def test_stale_decode_is_cancelled(tmp_path: Path) -> None:
    res = encoded_samples()[0]
    dec = SlowDecoder()
    packets = plan_packets(res.image, mtu=340, fec=FecPolicy.none())
    first = [w for w in packets if w.family == "semantic"]
    rest = [w for w in packets if w.family != "semantic"]
    async with ReceiveSession(decoder=dec, out_dir=tmp_path) as rx:
        for w in first:
            rx.feed(w.data)
        assert await asyncio.to_thread(dec.started.wait, 5), "the prompt-only decode started"
        for w in rest:
            rx.feed(w.data)
        await rx.wait_decodes()
        assert rx.summary.images == 1 and rx.summary.cancelled == 1
    assert dec.stopped == [["semantic"]], "the prompt-only decode was told to stop"
    final = read_png(tmp_path / "0" / "0" / "final.png")
    assert np.array_equal(final, file_decodes([res])[0])
    events = read_events(tmp_path)
    assert [e["layers"] for e in events if e["event"] == "DecodeCancelled"] == [["semantic"]]


async def test_forged_replayed_oversized_rejected_with_reason(tmp_path: Path) -> None:
    key, wrong = bytes(range(32)), bytes(range(1, 33))
    res = encoded_samples()[0]
    a, b = memory_pair()
    sent: list[bytes] = []
    async with ReceiveSession(b, out_dir=tmp_path, key=key) as rx:
        async with SendSession(a, profile="webrtc", key=key, stream_id=9) as tx:
            await tx.send_image(res.image)
            start = int(time.time() * 1000) + 100_000  # after the session's own (clock) numbers, not far ahead
            seq = iter(range(start, start + 100))
            forged = plan_packets(res.image, mtu=1200, fec=FecPolicy.none(), key=wrong, next_sequence=lambda: next(seq))
            sent = [
                w.data
                for w in plan_packets(
                    res.image, mtu=1200, fec=FecPolicy.none(), key=key, next_sequence=lambda: next(seq)
                )
            ]
            await a.send(forged[0].data)
            unkeyed = framing.encode_packet(framing.packetize(res.image)[0])
            await a.send(unkeyed)
            await a.send(sent[0])
            await a.send(sent[0])  # replay of a packet just accepted
            await a.send(b"\x08\x01" + bytes(70_000))  # larger than any packet may be
        await rx.run(until_closed=True)
    rejected = [e for e in read_events(tmp_path) if e["event"] == "PacketRejected"]
    reasons = [(e["error"], e["reason"]) for e in rejected]
    assert len(rejected) == 4, reasons
    assert reasons[0][0] == "AuthError" and "does not match" in reasons[0][1]
    assert reasons[1][0] == "AuthError" and "no authentication tag" in reasons[1][1]
    assert reasons[2][0] == "AuthError" and "already received" in reasons[2][1]
    assert reasons[3][0] == "LimitError" and "exceeds" in reasons[3][1]
    assert rx.summary.reject_reasons == {"AuthError": 3, "LimitError": 1}
    assert (tmp_path / "9" / "0" / "final.png").is_file(), "the genuine image still came through"


def test_stage_record_is_json_ready() -> None:
    stage = Stage(1, 2, 1, True, ("semantic",), "image ready", np.zeros((2, 2, 3), np.uint8), 1.5, 0.0, "preview")
    rec = stage.record()
    assert rec["stage"] == 1 and rec["final"] and rec["layers"] == ["semantic"] and "rgb" not in rec
