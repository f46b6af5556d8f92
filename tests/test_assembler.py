"""The sans-I/O assembler: any order, duplicates, FEC recovery, partial layers, timeouts, and rejects."""

from __future__ import annotations

import functools
import json
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercast.common.codecs.colormap import ColormapCodec
from layercast.common.codecs.pose import PoseCodec
from layercast.common.codecs.prompt import Utf8PromptCodec
from layercast.common.fec import FecPolicy, protect
from layercast.common.registry import EDGES_CTX, get_codec
from layercast.common.replay import KeyRing
from layercast.common.transport.lossy import LinkModel, LinkSimulator
from layercast.common.types import Colormap, EdgeMap, EncodedImage, LayerKind, PoseLayer, Prompt
from layercast.proto import pb
from layercast.proto.framing import encode_packet, encode_varint, packetize
from layercast.receiver.assembler import Assembler
from layercast.receiver.events import (
    Event,
    ImageReady,
    LayerComplete,
    LayerPartial,
    LayerSetChanged,
    PacketRejected,
    event_record,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@functools.lru_cache(maxsize=64)
def encoded(image_id: int = 0, stream_id: int = 1, people: int = 4, seed: int = 0) -> EncodedImage:
    """A real three-layer image: UTF-8 prompt (+negative), pose keypoints (one unit per person), colormap."""
    rng = np.random.default_rng(seed + 1000 * image_id)
    prompt = Utf8PromptCodec().compress(Prompt(f"a harbour at dawn, image {image_id}", "blurry"))
    persons = [
        np.concatenate([rng.uniform(0, 600, (18, 2)), np.ones((18, 1))], axis=1).astype(np.float32)
        for _ in range(people)
    ]
    pose = PoseCodec().compress(PoseLayer(people=persons, width=640, height=480))
    texture = ColormapCodec().compress(Colormap(cells=rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)))
    header = pb.ImageHeader(width=640, height=480, seed=1234 + image_id)
    return EncodedImage(header=header, layers=[prompt, pose, texture], stream_id=stream_id, image_id=image_id)


def packets(
    img: EncodedImage,
    mtu: int | None = 130,
    policy: FecPolicy | None = None,
    key: bytes | None = None,
    seq: int = 1,
) -> list[pb.Packet]:
    out = packetize(img, mtu=mtu, header_every_layer=True, keyed=key is not None)
    out = protect(out, policy or FecPolicy.none())
    for i, p in enumerate(out):
        p.sequence = seq + i
    return out


def wire(pkts: list[pb.Packet], key: bytes | None = None) -> list[bytes]:
    return [encode_packet(p, key=key) for p in pkts]


def feed(asm: Assembler, data: list[bytes], now: float = 0.0) -> list[Event]:
    events: list[Event] = []
    for d in data:
        events += asm.receive(d, now)
    return events


def of(events: list[Event], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def reference(img: EncodedImage) -> dict[str, Any]:
    codecs = {LayerKind.SEMANTIC: Utf8PromptCodec(), LayerKind.STRUCTURE_POSE: PoseCodec(),
              LayerKind.TEXTURE: ColormapCodec()}  # fmt: skip
    return {layer.kind.family: codecs[layer.kind].decompress(layer.descriptor, layer.units) for layer in img.layers}


def assert_same_values(ready: ImageReady, img: EncodedImage) -> None:
    ref = reference(img)
    assert ready.layers.prompt == ref["semantic"]
    assert isinstance(ready.layers.structure, PoseLayer) and ready.layers.texture is not None
    assert len(ready.layers.structure.people) == len(ref["structure"].people)
    for a, b in zip(ready.layers.structure.people, ref["structure"].people, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ready.layers.texture.cells, ref["texture"].cells)
    assert (ready.layers.width, ready.layers.height, ready.layers.seed) == (640, 480, img.header.seed)


# --- whole images -------------------------------------------------------------------------------------


def test_in_order_delivery_gives_a_preview_first_and_one_complete_image() -> None:
    img = encoded(7)
    data = wire(packets(img))
    asm = Assembler()
    first = asm.receive(data[0], 0.0)
    changed = of(first, LayerSetChanged)
    assert [e.reason for e in changed] == ["semantic complete"]
    assert changed[0].layers.prompt == Prompt("a harbour at dawn, image 7", "blurry")
    assert changed[0].layers.structure is None and changed[0].layers.texture is None
    events = first + feed(asm, data[1:], 0.5)
    complete = of(events, LayerComplete)
    assert [e.family for e in complete] == ["semantic", "structure", "texture"]
    assert [e.nbytes for e in complete] == [layer.nbytes for layer in img.layers]
    assert sum(e.wire_bytes for e in complete) == sum(map(len, data))
    (ready,) = of(events, ImageReady)
    assert ready.complete and ready.partial_families == () and ready.missing_families == ()
    assert isinstance(events[-1], ImageReady)
    assert_same_values(ready, img)
    assert asm.images_in_flight == 0 and asm.next_timer() is None
    assert not of(events, PacketRejected)
    for e in events:
        json.dumps(event_record(e))


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 5))
def test_any_order_with_duplicates_gives_the_same_image(rnd: random.Random, dups: int) -> None:
    imgs = [encoded(i, stream_id=1 + i % 2) for i in range(3)]
    data = [d for img in imgs for d in wire(packets(img, policy=FecPolicy()))]
    data += rnd.sample(data, min(dups, len(data)))
    rnd.shuffle(data)
    asm = Assembler()
    events = feed(asm, data)
    ready = {(e.stream_id, e.image_id): e for e in of(events, ImageReady)}
    assert len(of(events, ImageReady)) == 3
    for img in imgs:
        r = ready[(img.stream_id, img.image_id)]
        assert r.complete
        assert_same_values(r, img)
    assert not of(events, PacketRejected)
    assert sum(asm.stats[k] for k in ("duplicate", "redundant", "accepted", "late")) == len(data)


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.floats(0.0, 0.6))
def test_random_drops_with_fec_every_image_finishes_exactly_once(rnd: random.Random, loss: float) -> None:
    img = encoded(3, people=6)
    pkts = packets(img, policy=FecPolicy(semantic=1.0, structure=0.5, texture=1.0, semantic_min=1))
    kept = [p for p in pkts if rnd.random() >= loss]
    rnd.shuffle(kept)
    asm = Assembler(image_timeout=2.0)
    events = feed(asm, wire(kept), 1.0)
    while (t := asm.next_timer()) is not None:
        assert t <= 3.0
        events += asm.handle_timer(t)
    assert asm.images_in_flight == 0
    if not kept:
        assert events == []
        return
    (ready,) = of(events, ImageReady)
    by_kind: dict[int, set[int]] = {}
    for p in kept:
        by_kind.setdefault(p.kind, set()).add(p.fragment_index)
    k: dict[int, int] = {p.kind: p.fragment_count for p in pkts}
    recoverable = {LayerKind(kind).family for kind, got in by_kind.items() if len(got) >= k[kind]}
    assert {e.family for e in of(events, LayerComplete)} == recoverable
    assert ready.complete == (recoverable == {"semantic", "structure", "texture"})
    assert set(ready.partial_families) == {LayerKind(kind).family for kind in by_kind} - recoverable
    assert (ready.layers.prompt is not None) == ("semantic" in recoverable)
    assert not of(events, PacketRejected)


def test_timeout_emits_partial_layers_and_an_incomplete_image() -> None:
    img = encoded(1, people=5)
    pkts = packets(img)
    pose_frags = [p for p in pkts if p.kind == LayerKind.STRUCTURE_POSE]
    assert len(pose_frags) >= 3
    lost = pose_frags[1]
    kept = [p for p in pkts if p.kind != LayerKind.TEXTURE and p is not lost]
    asm = Assembler(image_timeout=10.0, partial_interval=0.0)
    events = feed(asm, wire(kept), 2.0)
    assert not of(events, ImageReady)
    partials = of(events, LayerPartial)
    assert partials and all(e.family == "structure" and e.value is not None for e in partials)
    assert asm.next_timer() == 12.0
    assert asm.handle_timer(11.9) == []
    done = asm.handle_timer(12.0)
    (ready,) = of(done, ImageReady)
    assert not ready.complete
    assert ready.partial_families == ("structure",) and ready.missing_families == ("texture",)
    assert ready.layers.prompt is not None and ready.layers.texture is None
    missing = partials[-1].missing_units
    assert missing and len(ready.layers.structure.people) == 5 - len(missing)
    assert asm.handle_timer(100.0) == [] and asm.images_in_flight == 0
    assert feed(asm, wire(pkts)) == [] and asm.stats["late"] == len(pkts)


def test_partial_decodes_are_rate_limited_and_finished_by_the_timer() -> None:
    img = encoded(2, people=6)
    pose = [p for p in packets(img) if p.kind == LayerKind.STRUCTURE_POSE]
    assert len(pose) >= 4
    asm = Assembler(partial_interval=0.25)
    first = feed(asm, wire(pose[:1]), 0.0)
    assert len(of(first, LayerPartial)) == 1
    assert of(feed(asm, wire(pose[1:3]), 0.1), LayerPartial) == []
    assert asm.next_timer() == pytest.approx(0.25)
    later = asm.handle_timer(0.25)
    (partial,) = of(later, LayerPartial)
    assert len(partial.missing_units) < len(of(first, LayerPartial)[0].missing_units)
    assert [e.reason for e in of(later, LayerSetChanged)] == ["structure partial"]


def test_image_timeout_is_idle_time_with_an_age_cap() -> None:
    data = wire(packets(encoded(4)))
    asm = Assembler(image_timeout=1.0, max_image_age=2.5)
    asm.receive(data[0], 0.0)
    asm.receive(data[1], 0.8)
    assert asm.next_timer() == pytest.approx(1.8)
    asm.receive(data[2], 1.7)
    assert asm.next_timer() == pytest.approx(2.5)
    assert of(asm.handle_timer(2.5), ImageReady)


def test_new_timers_are_reported_once_and_earliest_first() -> None:
    """take_new_timer (the receiver's O(1) wake check per packet): a new image's deadline and a partial
    decode falling due are reported, the earliest of them, once; packets of an open image set none."""
    pose = [p for p in packets(encoded(2, people=6)) if p.kind == LayerKind.STRUCTURE_POSE]
    asm = Assembler(image_timeout=1.0, partial_interval=0.25)
    assert asm.take_new_timer() is None
    feed(asm, wire(pose[:1]), 0.0)
    assert asm.take_new_timer() == pytest.approx(1.0)  # the new image's deadline
    assert asm.take_new_timer() is None
    feed(asm, wire(pose[1:2]), 0.1)  # rate-limited partial: due at 0.25
    assert asm.take_new_timer() == pytest.approx(0.25) == asm.next_timer()
    data = wire(packets(encoded(4)))
    feed(asm, data[:1], 0.2)
    feed(asm, data[1:2], 0.3)
    assert asm.take_new_timer() == pytest.approx(1.2)  # image 4's deadline; its later packets set none


def test_fec_restores_the_header_of_lost_fragments() -> None:
    img = encoded(5)
    pkts = packets(img, policy=FecPolicy())
    no_header = [p for p in pkts if not p.HasField("header")]
    assert len(no_header) < len(pkts)
    (ready,) = of(feed(Assembler(), wire(no_header)), ImageReady)
    assert ready.complete
    assert (ready.layers.width, ready.layers.height, ready.layers.seed) == (640, 480, img.header.seed)


def test_missing_header_uses_the_descriptor_aspect_then_the_real_one() -> None:
    pkts = packets(encoded(6))
    no_header = [p for p in pkts if not p.HasField("header")]
    asm = Assembler(partial_interval=0.0)
    events = feed(asm, wire(no_header)) + asm.finish_all(1.0)
    (ready,) = of(events, ImageReady)
    assert not ready.complete and ready.layers.structure is not None
    # no header arrived: the pose frame's 640x480 aspect at a 512-pixel long side, seed 0
    assert (ready.layers.width, ready.layers.height, ready.layers.seed) == (512, 384, 0)
    asm2 = Assembler()
    sem = next(p for p in pkts if p.kind == LayerKind.SEMANTIC)
    sem.ClearField("header")
    changed = of(asm2.receive(encode_packet(sem), 0.0), LayerSetChanged)
    assert (changed[-1].layers.width, changed[-1].layers.height) == (512, 512)  # nothing to go by
    header_pkt = next(p for p in pkts if p.HasField("header") and p.kind == LayerKind.TEXTURE)
    late = of(asm2.receive(encode_packet(header_pkt), 0.1), LayerSetChanged)
    assert late[0].reason == "header" and (late[0].layers.width, late[0].layers.height) == (640, 480)


def test_too_many_images_in_flight_finishes_the_oldest() -> None:
    asm = Assembler(max_images=2)
    firsts = [wire(packets(encoded(i)))[0] for i in range(3)]
    assert not of(feed(asm, firsts[:2]), ImageReady)
    (ready,) = of(asm.receive(firsts[2], 0.0), ImageReady)
    assert ready.image_id == 0 and not ready.complete and ready.missing_families == ("structure", "texture")
    assert asm.images_in_flight == 2
    assert len(of(asm.finish_all(1.0), ImageReady)) == 2


# --- rejects ------------------------------------------------------------------------------------------


def rejected(events: list[Event]) -> PacketRejected:
    (r,) = of(events, PacketRejected)
    return r


def test_forged_unsigned_replayed_and_stale_packets_are_rejected_with_reasons() -> None:
    pkts = packets(encoded(0), key=KEY, seq=1)
    good = wire(pkts, key=KEY)
    asm = Assembler(key=KEY)
    assert not of(asm.receive(good[0], 0.0), PacketRejected)

    forged = rejected(asm.receive(wire(pkts[1:2], key=OTHER_KEY)[0], 0.0))
    assert (forged.error, forged.stream_id) == ("AuthError", None)
    assert "does not match" in forged.reason
    unsigned = rejected(asm.receive(wire(pkts[1:2])[0], 0.0))
    assert unsigned.error == "AuthError" and "no authentication tag" in unsigned.reason

    replay = rejected(asm.receive(good[0], 0.0))
    assert (replay.error, replay.stream_id, replay.image_id) == ("AuthError", 1, 0)
    assert "already received" in replay.reason

    far = packets(encoded(1), key=KEY, seq=1000)
    assert not of(asm.receive(wire(far, key=KEY)[0], 0.0), PacketRejected)
    stale = rejected(asm.receive(good[1], 0.0))
    assert "too old" in stale.reason

    zero = packets(encoded(2), key=KEY, seq=0)[:1]
    assert "no sequence number" in rejected(asm.receive(wire(zero, key=KEY)[0], 0.0)).reason
    assert asm.stats["rejected"] == 5


def test_per_stream_keys() -> None:
    asm = Assembler(key=KeyRing(streams={1: KEY, 2: OTHER_KEY}))
    assert not of(asm.receive(wire(packets(encoded(0, stream_id=2)), key=OTHER_KEY)[0], 0.0), PacketRejected)
    wrong = rejected(asm.receive(wire(packets(encoded(0, stream_id=1)), key=OTHER_KEY)[0], 0.0))
    assert wrong.error == "AuthError"
    unknown = rejected(asm.receive(wire(packets(encoded(0, stream_id=3)), key=KEY)[0], 0.0))
    assert "no key is configured for stream 3" in unknown.reason


def test_oversized_corrupted_and_garbage_packets_are_rejected() -> None:
    asm = Assembler(max_bytes_per_image=200)
    big = rejected(asm.receive(b"\x08\x01" * 40000, 0.0))
    assert big.error == "LimitError" and "65536" in big.reason
    data = wire(packets(encoded(0)))
    flipped = bytearray(data[0])
    flipped[5] ^= 0x40
    assert rejected(asm.receive(bytes(flipped), 0.0)).error == "ChecksumError"
    assert rejected(asm.receive(b"hello", 0.0)).error == "TruncatedError"
    events = feed(asm, data)
    limit = of(events, PacketRejected)
    assert limit and all(r.error == "LimitError" and "200-byte limit" in r.reason for r in limit)
    assert all(r.image_id == 0 for r in limit)


def test_fragments_that_disagree_with_their_layer_are_rejected() -> None:
    pkts = packets(encoded(0), policy=FecPolicy())
    asm = Assembler()
    asm.receive(encode_packet(pkts[0]), 0.0)
    liar = pb.Packet()
    liar.CopyFrom(next(p for p in pkts if p.kind == LayerKind.STRUCTURE_POSE))
    asm.receive(encode_packet(liar), 0.0)
    liar.fragment_count += 1
    liar.fragment_index = 0
    r = rejected(asm.receive(encode_packet(liar), 0.0))
    assert r.error == "BitstreamError" and "fragments" in r.reason
    other_header = pb.Packet()
    other_header.CopyFrom(next(p for p in pkts if p.kind == LayerKind.TEXTURE and p.HasField("header")))
    other_header.header.width = 1000
    assert "header differs" in rejected(asm.receive(encode_packet(other_header), 0.0)).reason


def test_a_rejected_first_packet_opens_no_image() -> None:
    pkt = packets(encoded(0))[0]
    pkt.ClearField("layer")
    asm = Assembler()
    r = rejected(asm.receive(encode_packet(pkt), 0.0))
    assert "no layer descriptor" in r.reason
    assert asm.images_in_flight == 0 and asm.next_timer() is None


# --- the acceptance number ----------------------------------------------------------------------------


def semantic_survival(policy: FecPolicy, loss: float, n: int = 500, seed: int = 17) -> float:
    """Fraction of `n` images whose prompt arrives over a LinkSimulator with `loss` random loss."""
    sim = LinkSimulator(LinkModel(loss=loss, seed=seed))
    asm = Assembler(image_timeout=5.0)
    events: list[Event] = []
    now = 0.0
    base = encoded(0, people=2)
    for i in range(n):
        prompt = Utf8PromptCodec().compress(Prompt(f"a lighthouse in a storm, number {i}", "lowres"))
        img = EncodedImage(header=base.header, layers=[prompt, *base.layers[1:]], stream_id=1, image_id=i)
        for t, d in sim.run((now + j * 0.01, w) for j, w in enumerate(wire(packets(img, mtu=222, policy=policy)))):
            events += asm.receive(d, t)
        events += asm.handle_timer(now)
        now += 1.0
    events += asm.finish_all(now + 10.0)
    ready = of(events, ImageReady)
    assert len(ready) == len({e.image_id for e in ready}) >= 0.97 * n  # once each (a few lost every packet)
    return sum(e.layers.prompt is not None for e in ready) / n


def test_semantic_layer_survives_20_percent_loss_in_99_percent_of_images() -> None:
    with_fec = semantic_survival(FecPolicy(), 0.2)
    without = semantic_survival(FecPolicy.none(), 0.2)
    assert with_fec >= 0.99
    assert without < 0.9  # the protection is what makes the difference


def test_lost_edge_stripes_are_masked_not_read_as_blank() -> None:
    rng = np.random.default_rng(3)
    edges = rng.random((64, 96)) < 0.1
    layer = get_codec(EDGES_CTX).compress(
        EdgeMap(edges=edges, source=pb.EDGE_SOURCE_CANNY), stripe_rows=16, source=pb.EDGE_SOURCE_CANNY
    )
    assert layer.descriptor.unit_count == 4
    prompt = Utf8PromptCodec().compress(Prompt("a quiet street"))
    img = EncodedImage(header=pb.ImageHeader(width=384, height=256), layers=[prompt, layer], stream_id=1, image_id=1)
    pkts = packetize(img, mtu=None)
    (structure,) = [p for p in pkts if p.kind == LayerKind.STRUCTURE_EDGES]
    # re-cut the structure layer one stripe per fragment, then lose stripe 1
    frags = []
    for i, unit in enumerate(layer.units):
        f = pb.Packet()
        f.CopyFrom(structure)
        f.fragment_index, f.fragment_count, f.unit_first = i, len(layer.units), i
        f.payload = encode_varint(len(unit)) + unit
        frags.append(f)
    kept = [p for p in pkts if p.kind == LayerKind.SEMANTIC] + [f for f in frags if f.unit_first != 1]
    asm = Assembler(expected_families=("semantic", "structure"), partial_interval=0.0)
    events = feed(asm, wire(kept)) + asm.finish_all(1.0)
    partial = of(events, LayerPartial)[-1]
    assert partial.family == "structure" and partial.missing_units == (1,)
    value = partial.value
    assert isinstance(value, EdgeMap) and value.known is not None
    assert not value.known[16:32].any() and value.known[:16].all() and value.known[32:].all()
    np.testing.assert_array_equal(value.edges[value.known], edges[value.known])
    (ready,) = of(events, ImageReady)
    assert not ready.complete and ready.partial_families == ("structure",)
    assert ready.layers.structure is value
    reasons = [e.reason for e in of(events, LayerSetChanged)]
    # partial_interval=0: every stripe that lands refreshes the partial structure (3 of 4 arrived)
    assert reasons[0] == "semantic complete" and set(reasons[1:]) == {"structure partial"} and len(reasons) <= 4


# --- layers decoded by the caller (defer_decode) ------------------------------------------------------


def _comparable(events: list[Event]) -> list[str]:
    """Events as JSON records, layer values included (by their decoded content)."""
    out = []
    for e in events:
        rec = event_record(e)
        layers = getattr(e, "layers", None)
        if layers is not None:
            rec["values"] = repr((layers.prompt, layers.structure, getattr(layers.texture, "cells", None)))
        if isinstance(e, LayerComplete):
            rec["value"] = repr(e.value)
        out.append(json.dumps(rec, sort_keys=True, default=str))
    return out


def deliver_all(asm: Assembler) -> list[Event]:
    events: list[Event] = []
    for job in asm.take_decode_jobs():
        value, error = job.run()
        events += asm.deliver(job, value, error, job.time)
    return events


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False))
def test_deferred_decodes_delivered_at_once_equal_in_place_decodes(rnd: random.Random) -> None:
    imgs = [encoded(i, stream_id=1 + i % 2) for i in range(3)]
    data = [d for img in imgs for d in wire(packets(img, policy=FecPolicy()))]
    rnd.shuffle(data)
    sync, deferred = Assembler(), Assembler(defer_decode=True)
    want: list[Event] = []
    got: list[Event] = []
    for i, d in enumerate(data):
        want += sync.receive(d, float(i))
        got += deferred.receive(d, float(i))
        got += deliver_all(deferred)
    assert _comparable(got) == _comparable(want)
    assert not sync.take_decode_jobs(), "an in-place assembler hands out no jobs"


def test_deferred_decodes_in_late_batches_give_the_same_images() -> None:
    imgs = [encoded(i) for i in range(4)]
    data = [d for img in imgs for d in wire(packets(img))]
    asm = Assembler(defer_decode=True)
    events = feed(asm, data, 1.0)
    assert not of(events, LayerComplete) and not of(events, ImageReady), "nothing is decoded inside receive"
    jobs = asm.take_decode_jobs()
    assert len(jobs) == 12 and asm.images_in_flight == 4
    assert all(asm.receive(d, 1.5) == [] for d in data), "a layer out for decoding takes no more fragments"
    events = []
    for job in reversed(jobs):  # any order of delivery: each image finishes once its last layer is back
        events += asm.deliver(job, *job.run(), job.time)
    ready = of(events, ImageReady)
    assert sorted(r.image_id for r in ready) == [0, 1, 2, 3] and all(r.time == 1.0 for r in ready)
    for r in ready:
        assert r.complete
        assert_same_values(r, imgs[r.image_id])
    assert len(of(events, LayerComplete)) == 12 and asm.images_in_flight == 0
    assert asm.deliver(jobs[0], *jobs[0].run(), 2.0) == [], "a job delivered twice is ignored"


@pytest.mark.parametrize("how", ["finish_all", "timeout", "evicted"])
def test_an_image_finished_while_its_layers_are_out_decodes_them_in_place(how: str) -> None:
    img = encoded(3)
    asm = Assembler(defer_decode=True, image_timeout=1.0, max_images=1)
    feed(asm, wire(packets(img)), 0.0)
    jobs = asm.take_decode_jobs()
    assert len(jobs) == 3
    if how == "finish_all":
        events = asm.finish_all(0.5)
    elif how == "timeout":
        events = asm.handle_timer(asm.next_timer() or 0.0)
    else:
        events = asm.receive(wire(packets(encoded(4)))[0], 0.5)
    (ready,) = of(events, ImageReady)
    assert ready.complete and ready.image_id == 3, "the final layer set misses no layer"
    assert_same_values(ready, img)
    assert [e.family for e in of(events, LayerComplete)] == ["semantic", "structure", "texture"]
    assert all(asm.deliver(job, *job.run(), 1.0) == [] for job in jobs), "late results are ignored"


def test_a_layer_that_fails_to_decode_is_a_typed_counted_reject() -> None:
    from layercast.common.errors import CodecError

    asm = Assembler(defer_decode=True, image_timeout=1.0)
    feed(asm, wire(packets(encoded(5))), 0.0)
    jobs = {job.kind: job for job in asm.take_decode_jobs()}
    bad = asm.deliver(jobs[LayerKind.STRUCTURE_POSE], None, CodecError("truncated pose"), 0.0)
    assert [(r.error, r.image_id) for r in of(bad, PacketRejected)] == [("CodecError", 5)]
    crash = asm.deliver(jobs[LayerKind.TEXTURE], None, RuntimeError("a bug"), 0.0)
    assert [r.error for r in of(crash, PacketRejected)] == ["InternalError"]
    assert asm.stats["rejected"] == 2 and asm.stats["internal_errors"] == 1
    events = asm.deliver(jobs[LayerKind.SEMANTIC], *jobs[LayerKind.SEMANTIC].run(), 0.0)
    assert of(events, LayerComplete) and not of(events, ImageReady), "failed layers leave the image open"
    (ready,) = of(asm.handle_timer(2.0), ImageReady)
    assert not ready.complete and ready.partial_families == ("structure", "texture")
