"""Bundled packets: several whole layers of one image in one packet (framing, validation, assembler,
sender planning). Bundles carry the same layers as per-layer packets, so every reader must see the
same image either way."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from layercast.common import limits
from layercast.common.errors import BitstreamError, LimitError, TruncatedError, UnknownCodecError
from layercast.common.fec import FecPolicy
from layercast.common.types import LayerKind
from layercast.proto import framing, pb
from layercast.receiver.assembler import Assembler
from layercast.receiver.events import ImageReady, LayerComplete, LayerSetChanged, PacketRejected
from layercast.sender.link import get_profile
from layercast.sender.session import SendSession, plan_packets
from tests.test_assembler import assert_same_values, encoded, feed, of

ALL = ("semantic", "structure", "texture")


def _layers(img: framing.EncodedImage) -> list[tuple[int, bytes, list[bytes]]]:
    return [(int(x.kind), x.descriptor.SerializeToString(), x.units) for x in img.layers]


def test_one_packet_per_image_and_the_same_image_back() -> None:
    img = encoded(4)
    (packet,) = framing.packetize(img, mtu=1200, header_every_layer=True, bundle=ALL)
    assert len(packet.bundle) == 3 and not packet.HasField("layer") and packet.kind == 0
    assert packet.header.layer_count == 0  # a bundle of every layer says so by itself
    wire = framing.encode_packet(packet)
    assert len(wire) <= 1200
    back = framing.packets_to_images([framing.decode_packet(wire)])
    assert _layers(back[0]) == _layers(img)
    assert back[0].header.layer_count == 3 and back[0].header.seed == img.header.seed
    # smaller than the per-layer packets it replaces
    per_layer = framing.packetize(img, mtu=1200, header_every_layer=True)
    assert len(wire) < sum(len(framing.encode_packet(p)) for p in per_layer) - 40


def test_container_round_trip_with_bundles() -> None:
    imgs = [encoded(i) for i in range(3)]
    data = framing.images_to_container(imgs)  # files bundle by default
    assert data == framing.images_to_container(imgs, bundle=True)
    per_layer = framing.images_to_container(imgs, bundle=False)
    assert len(data) < len(per_layer) and len(list(framing.iter_container(per_layer))) == 9
    assert len(list(framing.iter_container(data))) == 3
    back = framing.container_to_images(data)
    assert [_layers(b) for b in back] == [_layers(i) for i in imgs]


def test_a_layer_too_big_for_the_mtu_is_fragmented_and_the_rest_still_bundle() -> None:
    img = encoded(5, people=40)  # a pose layer of ~40 units, far over 300 bytes
    pkts = framing.packetize(img, mtu=300, header_every_layer=True, bundle=ALL)
    kinds = [(len(p.bundle), p.kind) for p in pkts]
    assert kinds[0] == (1, 0)  # the prompt alone: the pose layer does not fit beside it
    assert kinds[-1] == (1, 0)  # the texture, bundled alone after the pose fragments
    assert all(k == (0, pb.LAYER_KIND_STRUCTURE_POSE) for k in kinds[1:-1]) and len(kinds) > 3
    wires = [framing.encode_packet(p) for p in pkts]
    assert max(map(len, wires)) <= 300
    assert pkts[-1].header.layer_count == 3  # header_every_layer: a partial bundle names the count
    back = framing.packets_to_images(framing.decode_packet(w) for w in wires)
    assert _layers(back[0]) == _layers(img)


def test_only_the_named_families_bundle() -> None:
    pkts = framing.packetize(encoded(1), mtu=1200, bundle=("structure", "texture"))
    assert [(p.kind, len(p.bundle)) for p in pkts] == [(pb.LAYER_KIND_SEMANTIC, 0), (0, 2)]
    assert pkts[1].priority == 1


def test_plan_packets_keeps_fec_protected_layers_out_of_bundles() -> None:
    img = encoded(2)
    webrtc = get_profile("webrtc")  # repairs for texture only
    wps = plan_packets(img, mtu=webrtc.mtu, fec=webrtc.fec, bundle=True)
    assert wps[0].family == "semantic" and [s[0] for s in wps[0].shares] == [
        LayerKind.SEMANTIC,
        LayerKind.STRUCTURE_POSE,
    ]
    assert {w.kind for w in wps[1:]} == {LayerKind.TEXTURE} and any(w.repair for w in wps[1:])
    # the shares of a bundle add up to its wire bytes and to the layers' unit bytes (varint prefixes aside)
    assert sum(s[2] for s in wps[0].shares) == len(wps[0].data)
    mqtt = get_profile("mqtt")
    (only,) = plan_packets(img, mtu=mqtt.mtu, fec=mqtt.fec, bundle=mqtt.bundle)
    assert len(only.shares) == 3 and only.family == "semantic"


def test_assembler_takes_a_bundle_as_its_layers() -> None:
    img = encoded(9)
    (packet,) = framing.packetize(img, mtu=1200, header_every_layer=True, bundle=ALL)
    wire = framing.encode_packet(packet)
    asm = Assembler()
    events = asm.receive(wire, 0.0)
    assert [e.family for e in of(events, LayerComplete)] == ["semantic", "structure", "texture"]
    assert sum(e.wire_bytes for e in of(events, LayerComplete)) == len(wire)
    (ready,) = of(events, ImageReady)
    assert ready.complete
    assert_same_values(ready, img)
    assert of(events, LayerSetChanged)[-1].layers.texture is not None
    # the same bundle again is late, not a second image
    assert asm.receive(wire, 0.1) == [] and asm.stats["late"] == 1


def test_bundles_and_per_layer_packets_mix_in_any_order() -> None:
    rnd = random.Random(3)
    imgs = [encoded(i, stream_id=2) for i in range(6)]
    wires = []
    for i, img in enumerate(imgs):
        bundle = ALL if i % 2 else ()
        wires += [
            framing.encode_packet(p) for p in framing.packetize(img, mtu=400, header_every_layer=True, bundle=bundle)
        ]
    rnd.shuffle(wires)
    asm = Assembler()
    events = feed(asm, wires)
    ready = {e.image_id: e for e in of(events, ImageReady)}
    assert sorted(ready) == list(range(6)) and not of(events, PacketRejected)
    for img in imgs:
        assert ready[img.image_id].complete
        assert_same_values(ready[img.image_id], img)


def _bundle_packet() -> pb.Packet:
    (p,) = framing.packetize(encoded(3), mtu=None, header_every_layer=True, bundle=ALL)
    return p


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda p: setattr(p, "fragment_count", 1), BitstreamError, "fragment fields"),
        (lambda p: setattr(p, "kind", pb.LAYER_KIND_SEMANTIC), BitstreamError, "fragment fields"),
        (lambda p: p.bundle[2].CopyFrom(p.bundle[0]), BitstreamError, "twice"),
        (lambda p: setattr(p.bundle[1], "codec", 99), UnknownCodecError, "codec id 99"),
        (lambda p: setattr(p.bundle[1], "kind", pb.LAYER_KIND_TEXTURE), BitstreamError, "cannot carry"),
        (lambda p: setattr(p.bundle[1], "units", b"\x7f"), TruncatedError, "ends first"),
        (
            lambda p: p.bundle.extend([pb.LayerDescriptor()] * limits.MAX_BUNDLED_LAYERS),
            LimitError,
            "more than",
        ),
    ],
)
def test_malformed_bundles_are_rejected_with_a_reason(mutate: object, error: type, match: str) -> None:
    p = _bundle_packet()
    mutate(p)  # type: ignore[operator]
    wire = framing.encode_packet(p)
    with pytest.raises(error, match=match):
        framing.decode_packet(wire)
    (rej,) = Assembler().receive(wire, 0.0)
    assert isinstance(rej, PacketRejected) and rej.error == error.__name__


def test_bundle_only_fields_are_refused_on_a_fragment() -> None:
    (p, *_) = framing.packetize(encoded(3), mtu=None)
    p.layer.units = b"smuggled"
    with pytest.raises(BitstreamError, match="bundle-only"):
        framing.decode_packet(framing.encode_packet(p))


def test_a_keyed_bundle_is_authenticated_and_sequenced() -> None:
    img = encoded(6)
    seq = iter(range(100, 200))
    (wp,) = plan_packets(
        img, mtu=1200, fec=FecPolicy.none(), key=b"k" * 32, next_sequence=lambda: next(seq), bundle=True
    )
    asm = Assembler(key=b"k" * 32)
    assert of(asm.receive(wp.data, 0.0), ImageReady)[0].complete
    forged = bytearray(wp.data)
    forged[10] ^= 1
    (rej,) = Assembler(key=b"k" * 32).receive(framing.encode_packet(framing.decode_packet(wp.data)), 0.0)
    assert isinstance(rej, PacketRejected) and rej.error == "AuthError"  # re-encoded without the key
    (rej,) = Assembler(key=b"k" * 32).receive(bytes(forged), 0.0)
    assert isinstance(rej, PacketRejected)


def test_a_session_bundles_only_onto_a_class_that_loses_nothing() -> None:
    from layercast.common.transport.lossy import LinkModel
    from layercast.common.transport.memory import memory_pair

    a, _ = memory_pair()
    assert SendSession(a, profile="mqtt").bundle
    assert not SendSession(a, profile="mqtt", bundle=False).bundle
    assert SendSession(a, profile="webrtc", bundle=True).bundle
    lossy = LinkModel(loss=0.2)
    assert not SendSession(a, profile="mqtt", link_model=lossy).bundle  # a lost bundle would lose the image
    assert SendSession(a, profile="mqtt", link_model=lossy, reliable_families=["semantic"]).bundle
    assert SendSession(a, profile="mqtt", link_model=LinkModel(delay_s=0.3)).bundle


async def test_send_paths_codes_one_stripe_only_where_the_structure_travels_whole(tmp_path: Path) -> None:
    """An image whose structure layer rides in one packet (one bundle, or one fragment of its own) is coded
    with one edge stripe; one too big for the MTU keeps its stripes (its structure travels in fragments that
    can be lost alone), and so does a file (it may be sent on later); --stripe-rows overrides."""
    from PIL import Image

    from layercast.cli import build_parser
    from layercast.cli_options import encoder_from_args
    from layercast.common.transport.memory import memory_pair
    from tests.imaging import busy

    path = tmp_path / "busy.png"
    Image.fromarray(busy(seed=5)).save(path)

    async def structure_units(*flags: str, profile: str = "webrtc-bundle") -> tuple[int, int]:
        args = build_parser().parse_args(["encode", "x", "-o", "x", "--resize", "512", *flags])
        a, _ = memory_pair()
        async with SendSession(a, profile=profile) as tx:
            (report,) = await tx.send_paths([path], encoder_from_args(args), progress=False)
        units = {x.family: x.units for x in report.layers}
        return units["structure"], report.packets

    assert await structure_units() == (1, 1)  # 655 B at 0.02 bpp: one 1200-byte bundle
    units, packets = await structure_units("--max-bytes", "4000")
    assert units > 1 and packets > 1  # too big for one bundle: the structure travels in stripes
    assert (await structure_units("--stripe-rows", "32"))[0] > 1
    assert await structure_units(profile="webrtc") == (1, 4)  # a packet per layer, the structure in one
    assert (await structure_units("--max-bytes", "4000", profile="webrtc"))[0] > 1  # in fragments: stripes
    assert (await structure_units(profile="sbd"))[0] > 1  # 340-byte messages: the structure in fragments
    assert (await structure_units(profile="file"))[0] > 1  # a file keeps its stripes
