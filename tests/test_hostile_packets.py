"""Packets that used to stop a receiver: two fragments slicing one unit with different part counts
(KeyError in collect_units) and a bundle whose priority overflows (ValueError in unbundle). Each is now a
typed, counted reject: in the sans-I/O assembler, in file decode and inspect (one line, no traceback),
and on a live MQTT receiver process, which then decodes the next valid images."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from layercast.common.errors import BitstreamError, LimitError
from layercast.common.identity import camera_id
from layercast.common.types import EncodedImage
from layercast.proto import FORMAT_VERSION, framing, pb
from layercast.receiver.assembler import Assembler
from layercast.receiver.events import PacketRejected
from tests.fleet_helpers import Proc, finals, wait_for
from tests.mqtt_broker import start_broker
from tests.session_helpers import encoded_samples


def sliced_unit_crash(stream_id: int = 0) -> list[bytes]:
    """Two unauthenticated fragments of one prompt unit: part 2 of 3, then part 0 of 2."""
    desc = pb.LayerDescriptor(codec=pb.CODEC_ID_PROMPT_UTF8, unit_count=1, prompt=pb.PromptParams())
    first = pb.Packet(version=FORMAT_VERSION, stream_id=stream_id, image_id=999, kind=pb.LAYER_KIND_SEMANTIC)
    first.fragment_count, first.fragment_index, first.part_count, first.part_index = 3, 2, 3, 2
    first.payload = b"c"
    first.layer.CopyFrom(desc)
    second = pb.Packet(version=FORMAT_VERSION, stream_id=stream_id, image_id=999, kind=pb.LAYER_KIND_SEMANTIC)
    second.fragment_count, second.fragment_index, second.part_count, second.part_index = 3, 0, 2, 0
    second.payload = b"a"
    return [framing.encode_packet(first), framing.encode_packet(second)]


def overflowing_bundle(stream_id: int = 0) -> bytes:
    """A valid two-layer bundle whose priority leaves no room for its second layer."""
    img = encoded_samples()[0].image
    (p,) = framing.packetize(img, bundle=framing.DEFAULT_ORDER)
    assert len(p.bundle) >= 2
    p.stream_id, p.image_id, p.priority = stream_id, 998, 2**32 - 1
    return framing.encode_packet(p)


def test_assembler_rejects_both_with_types() -> None:
    asm = Assembler()
    events = [e for data in [*sliced_unit_crash(), overflowing_bundle()] for e in asm.receive(data, 0.0)]
    rejected = [e for e in events if isinstance(e, PacketRejected)]
    assert [e.error for e in rejected] == ["BitstreamError", "LimitError"], rejected
    assert asm.stats["internal_errors"] == 0
    with pytest.raises(BitstreamError, match="slices"):
        framing.collect_units(1, [framing.decode_packet(d) for d in sliced_unit_crash()])
    with pytest.raises(LimitError, match="priority"):
        framing.decode_packet(overflowing_bundle())


@pytest.mark.parametrize("command", ["decode", "inspect"])
def test_file_decode_and_inspect_say_one_line(tmp_path: Path, command: str) -> None:
    for name, packets in (("slices", sliced_unit_crash()), ("bundle", [overflowing_bundle()])):
        lcs = tmp_path / f"{name}.lcs"
        lcs.write_bytes(framing.write_container(packets))
        argv = [command, str(lcs), *(["-o", str(tmp_path / "x.png")] if command == "decode" else [])]
        run = subprocess.run([sys.executable, "-m", "layercast", *argv], capture_output=True, text=True, timeout=60)
        assert run.returncode == 1, run
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("layercast: error:") and "Traceback" not in run.stderr, lines


@pytest.mark.mqtt
@pytest.mark.timeout(120)
def test_live_mqtt_receiver_survives_them_and_decodes_what_follows(tmp_path: Path) -> None:
    from layercast.common.transport.mqtt import MqttConfig, MqttTransport
    from layercast.sender.session import SendSession

    broker = start_broker(tmp_path)
    out = tmp_path / "out"
    url = f"mqtt://127.0.0.1:{broker.port}/layercast"
    rx = Proc(["receive", "--on", url, "--out", str(out), "--json"], tmp_path / "rx")
    rx.start()
    try:
        wait_for(lambda: "subscribed to" in rx.stderr(), 30, "the receiver to subscribe", rx.stderr)

        async def send() -> None:
            cfg = MqttConfig(host="127.0.0.1", port=broker.port, role="send", stream="cam1")
            async with MqttTransport(cfg) as t:
                for _ in range(2):  # the crash pair, twice, then a bad bundle
                    for data in sliced_unit_crash(camera_id("cam1")):
                        await t.send(data, family="semantic")
                await t.send(overflowing_bundle(camera_id("cam1")), family="semantic")
            async with SendSession(MqttTransport(cfg), profile="mqtt", camera="cam1") as tx:
                for r in encoded_samples()[:3]:
                    await tx.send_image(r.image)

        asyncio.run(send())
        wait_for(
            lambda: {0, 1, 2} <= finals(out).get("cam1", set()), 60, "the valid images after the bad ones", rx.stderr
        )
        assert rx.terminate() == 0
    finally:
        if rx.proc is not None and rx.proc.poll() is None:
            rx.kill()
        broker.stop()
    summary = next(e for e in rx.events() if "reject_reasons" in e)
    assert summary["reject_reasons"].get("InternalError", 0) == 0
    assert summary["reject_reasons"].get("LimitError") == 1 and summary["reject_reasons"].get("BitstreamError", 0) >= 2
    assert summary["images"] >= 3 and "Traceback" not in rx.stderr()


def test_declared_size_is_a_request_not_an_order(tmp_path: Path) -> None:
    """A stream declaring 16384 x 16384 (edges and colours included) renders at the pixel cap, aspect kept;
    `--max-pixels` moves the cap."""
    import dataclasses
    import resource
    import time

    from layercast.common import limits
    from layercast.receiver.layers import layerset_from_image
    from layercast.receiver.preview import PreviewDecoder
    from tests.session_helpers import read_png

    img = encoded_samples()[0].image
    header = pb.ImageHeader()
    header.CopyFrom(img.header)
    header.width, header.height = 16384, 8192
    (bomb,) = framing.container_to_images(framing.images_to_container([dataclasses.replace(img, header=header)]))
    layers = layerset_from_image(bomb)
    assert layers.size == (2896, 1448) and layers.width * layers.height <= limits.MAX_RENDER_PIXELS
    decoder = PreviewDecoder()
    decoder.decode(layerset_from_image(img))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    assert decoder.decode(layers).shape == (1448, 2896, 3)
    # generous guards (the figures are in the fuzz campaign): before the cap this took 6-10 s and 2 GB
    assert time.perf_counter() - t < 5 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 * 1024
    lcs = tmp_path / "bomb.lcs"
    lcs.write_bytes(framing.images_to_container([bomb]))
    out = tmp_path / "b.png"
    run = subprocess.run(
        [sys.executable, "-m", "layercast", "decode", str(lcs), "-o", str(out), "--max-pixels", "20000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert read_png(out).shape == (100, 200, 3)


def test_an_unexpected_error_is_a_counted_reject_not_a_crash() -> None:
    """Whatever goes wrong inside (here a user callback with a bug), `receive` answers with a reject and
    the next packet is taken as usual."""
    calls: list[int] = []

    def buggy(camera: str, image_id: int) -> bool:
        calls.append(image_id)
        if len(calls) == 1:
            raise ZeroDivisionError("a bug")
        return False

    asm = Assembler(already_done=buggy)
    data = framing.encode_packet(framing.packetize(encoded_samples()[0].image, bundle=framing.DEFAULT_ORDER)[0])
    (ev,) = asm.receive(data, 0.0)
    assert isinstance(ev, PacketRejected) and ev.error == "InternalError" and "ZeroDivisionError" in ev.reason
    assert asm.stats["internal_errors"] == 1 and asm.last_key is None
    assert any(type(e).__name__ == "ImageReady" for e in asm.receive(data, 1.0))


def test_fec_recovered_fragment_is_validated_like_a_received_one() -> None:
    """Fuzz finding (KeyError: 0): repair blocks encode a lost fragment's slice fields; a sender that put
    an out-of-range slice index there made FEC "recover" a fragment no receiver takes on the wire."""
    import random

    from layercast.common.fec import FecPolicy, add_repair, recover

    big = random.Random(2).randbytes(1500)
    img = dataclasses_replace_layers(encoded_samples()[0].image, big)
    data = framing.packetize(img, mtu=222)
    sliced = [p for p in data if p.part_count > 1]
    assert sliced
    sliced[0].part_index = sliced[0].part_count + 3  # out of range for its part_count
    out = add_repair(data, FecPolicy(semantic=1.0))
    lost = sliced[0].fragment_index
    survivors = [p for p in out if p.fragment_index != lost]
    with pytest.raises(LimitError, match="slice"):
        recover(survivors)
    asm = Assembler()
    events = [e for p in survivors for e in asm.receive(framing.encode_packet(p), 0.0)]
    assert asm.stats["internal_errors"] == 0
    assert "LimitError" in [e.error for e in events if isinstance(e, PacketRejected)]


def dataclasses_replace_layers(img: EncodedImage, unit: bytes) -> EncodedImage:
    """`img` with a semantic layer of one large unit (sliced at small MTUs)."""
    import dataclasses

    from layercast.common.types import EncodedLayer, LayerKind

    desc = pb.LayerDescriptor(codec=pb.CODEC_ID_PROMPT_UTF8, unit_count=1, prompt=pb.PromptParams())
    return dataclasses.replace(img, layers=[EncodedLayer(LayerKind.SEMANTIC, desc, [unit])])
