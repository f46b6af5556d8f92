"""Pure framing: packets, fragments, the .lcs container, and every kind of bad bytes."""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercast.common import limits
from layercast.common.codecs.prompt import Utf8PromptCodec
from layercast.common.errors import (
    AuthError,
    BitstreamError,
    ChecksumError,
    InputError,
    LimitError,
    TruncatedError,
    UnknownCodecError,
    VersionError,
)
from layercast.common.types import EncodedImage, EncodedLayer, LayerKind, Prompt
from layercast.proto import framing, pb

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("LAYERCAST_REGEN_GOLDEN") == "1"


def _edge_layer(units: list[bytes], height: int = 64, stripe: int = 16) -> EncodedLayer:
    desc = pb.LayerDescriptor(
        codec=pb.CODEC_ID_EDGES_CTX,
        unit_count=len(units),
        edges=pb.EdgeParams(width=64, height=height, stripe_rows=stripe),
    )
    return EncodedLayer(LayerKind.STRUCTURE_EDGES, desc, units)


def _image(prompt: str = "a red bird on a branch", units: list[bytes] | None = None) -> EncodedImage:
    layers = [Utf8PromptCodec().compress(Prompt(prompt))]
    if units is not None:
        layers.insert(0, _edge_layer(units, height=16 * len(units)))
    return EncodedImage(header=pb.ImageHeader(width=512, height=512, seed=7), layers=layers, image_id=3)


def test_crc32c_check_value() -> None:
    assert framing.crc32c(b"123456789") == 0xE3069283
    assert framing.crc32c(b"") == 0


@given(st.integers(min_value=0, max_value=2**63))
def test_varint_round_trip(n: int) -> None:
    data = framing.encode_varint(n)
    assert framing.decode_varint(data, 0) == (n, len(data))


def test_packetize_orders_semantic_first_and_order_is_a_parameter() -> None:
    img = _image(units=[b"ab", b"cd"])
    kinds = [p.kind for p in framing.packetize(img)]
    assert kinds == [pb.LAYER_KIND_SEMANTIC, pb.LAYER_KIND_STRUCTURE_EDGES]
    kinds = [p.kind for p in framing.packetize(img, order=("structure", "texture", "semantic"))]
    assert kinds == [pb.LAYER_KIND_STRUCTURE_EDGES, pb.LAYER_KIND_SEMANTIC]
    assert [p.priority for p in framing.packetize(img)] == [0, 1]


def test_unit_just_over_the_room_is_sliced_in_two() -> None:
    # regression: a unit that fits a fragment only without its length prefix was "sliced" into one part,
    # which the receiver then read as whole varint-prefixed units
    units = [b""] * 7 + [b"\x00\n" + b"\x00" * 9]
    for mtu in range(100, 140):
        ps = framing.packetize(_image(units=units), mtu=mtu, keyed=True)
        back = [framing.decode_packet(framing.encode_packet(p, key=b"k")) for p in ps]
        edge = [p for p in back if p.kind == pb.LAYER_KIND_STRUCTURE_EDGES]
        assert all(p.part_count != 1 for p in edge)
        assert framing.collect_units(len(units), edge) == units


def test_tiny_mtu_is_an_input_error() -> None:
    with pytest.raises(InputError, match="MTU 40 is too small"):
        framing.packetize(_image(units=[b"a"]), mtu=40)


def test_header_rides_first_layer_or_every_layer() -> None:
    img = _image(units=[b"x" * 30] * 4)
    ps = framing.packetize(img, mtu=80)
    assert [p.HasField("header") for p in ps].count(True) == 1
    ps = framing.packetize(img, mtu=80, header_every_layer=True)
    with_header = {p.kind for p in ps if p.HasField("header")}
    assert with_header == {pb.LAYER_KIND_SEMANTIC, pb.LAYER_KIND_STRUCTURE_EDGES}


@settings(max_examples=60, deadline=None)
@given(
    units=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=12),
    mtu=st.integers(min_value=110, max_value=600),
    keyed=st.booleans(),
)
def test_fragments_respect_mtu_and_rebuild_units(units: list[bytes], mtu: int, keyed: bool) -> None:
    img = _image(units=units)
    key = b"k" * 16 if keyed else None
    ps = framing.packetize(img, mtu=mtu, keyed=keyed)
    wires = [framing.encode_packet(p, key=key) for p in ps]
    assert all(len(w) <= mtu for w in wires)
    back = [framing.decode_packet(w, key=key) for w in wires]
    edge = [p for p in back if p.kind == pb.LAYER_KIND_STRUCTURE_EDGES]
    assert framing.collect_units(len(units), edge) == units


@settings(max_examples=40, deadline=None)
@given(units=st.lists(st.binary(min_size=1, max_size=120), min_size=2, max_size=10), data=st.data())
def test_a_lost_fragment_costs_only_its_units(units: list[bytes], data: st.DataObject) -> None:
    ps = [p for p in framing.packetize(_image(units=units), mtu=160) if p.kind == pb.LAYER_KIND_STRUCTURE_EDGES]
    lost = data.draw(st.integers(min_value=0, max_value=len(ps) - 1))
    got = framing.collect_units(len(units), [p for i, p in enumerate(ps) if i != lost])
    for i, u in enumerate(got):
        assert u is None or u == units[i]
    assert sum(u is None for u in got) >= 1
    assert sum(u is not None for u in got) >= len(units) - len(_units_in(ps[lost], len(units)))


def _units_in(p: pb.Packet, count: int) -> list[int]:
    if p.part_count > 1:
        return [p.unit_first]
    return [i for i, u in enumerate(framing.collect_units(count, [p])) if u is not None]


@settings(max_examples=40, deadline=None)
@given(prompt=st.text(max_size=200), seed=st.integers(min_value=0, max_value=2**64 - 1))
def test_container_round_trip(prompt: str, seed: int) -> None:
    img = _image(prompt)
    img.header.seed = seed
    img2 = _image("second")
    img2.image_id = 4
    back = framing.container_to_images(framing.images_to_container([img, img2]))
    assert [b.image_id for b in back] == [3, 4]
    assert back[0].header.seed == seed
    assert back[0].layers[0].units == img.layers[0].units


# --- bad input ------------------------------------------------------------------------------------------


def _wire(**overrides: object) -> bytes:
    p = framing.packetize(_image())[0]
    for k, v in overrides.items():
        setattr(p, k, v)
    return framing.encode_packet(p)


def test_bitflip_is_a_checksum_error() -> None:
    w = bytearray(_wire())
    w[5] ^= 0x10
    with pytest.raises(ChecksumError, match="CRC-32C mismatch"):
        framing.decode_packet(bytes(w))


@pytest.mark.parametrize("cut", [1, 3, 6, 20])
def test_truncated_packet(cut: int) -> None:
    with pytest.raises((TruncatedError, ChecksumError)):
        framing.decode_packet(_wire()[:-cut])


def test_wrong_version() -> None:
    with pytest.raises(VersionError, match="format version 9"):
        framing.decode_packet(_wire(version=9))


def test_unknown_codec_id() -> None:
    p = framing.packetize(_image())[0]
    p.layer.codec = 77  # type: ignore[assignment]  # an id no build knows
    with pytest.raises(UnknownCodecError, match="codec id 77"):
        framing.decode_packet(framing.encode_packet(p))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("fragment_count", 0, "fragment count 0"),
        ("fragment_count", 100000, "fragment count 100000"),
        ("fragment_index", 5, "fragment index 5"),
        ("repair_count", 10**6, "repair fragment count"),
    ],
)
def test_absurd_fragment_fields(field: str, value: int, match: str) -> None:
    with pytest.raises(LimitError, match=match):
        framing.decode_packet(_wire(**{field: value}))


@pytest.mark.parametrize(("w", "h"), [(0, 512), (512, 0), (10**6, 512), (512, 2**31)])
def test_absurd_image_size(w: int, h: int) -> None:
    p = framing.packetize(_image())[0]
    p.header.width, p.header.height = w, h
    with pytest.raises(LimitError, match=r"outside 1\.\.16384"):
        framing.decode_packet(framing.encode_packet(p))


def test_edge_descriptor_short_forms() -> None:
    """height 0 = the width, stripe_rows 0 = 32 rows: the unit count is checked against the resolved values."""
    p = framing.packetize(_image(units=[b"a"] * 4))[1]
    p.layer.edges.width, p.layer.edges.height, p.layer.edges.stripe_rows = 100, 0, 0
    p.layer.unit_count = 4  # 100 rows in stripes of 32
    assert framing.decode_packet(framing.encode_packet(p)).layer.edges.height == 0
    assert framing.edge_geometry(p.layer.edges) == (100, 100, 32)
    p.layer.unit_count = 5
    with pytest.raises(LimitError, match="height 100 in stripes of 32 rows cannot have 5 units"):
        framing.decode_packet(framing.encode_packet(p))


def test_absurd_edge_descriptor() -> None:
    p = framing.packetize(_image(units=[b"a"]))[1]
    assert p.kind == pb.LAYER_KIND_STRUCTURE_EDGES
    p.layer.edges.width = 100000
    with pytest.raises(LimitError, match="edge map"):
        framing.decode_packet(framing.encode_packet(p))
    p.layer.edges.width = 64
    p.layer.unit_count = 3
    with pytest.raises(LimitError, match="cannot have 3 units"):
        framing.decode_packet(framing.encode_packet(p))


def test_mismatched_params_and_kind() -> None:
    p = framing.packetize(_image())[0]
    p.layer.colormap.grid_width = 8  # switches the oneof away from prompt params
    with pytest.raises(BitstreamError, match="needs 'prompt' parameters"):
        framing.decode_packet(framing.encode_packet(p))


def test_oversized_packet_rejected_before_parsing() -> None:
    with pytest.raises(LimitError, match="exceeds"):
        framing.decode_packet(b"\x00" * (limits.MAX_PACKET_BYTES + 1))


def test_garbage_with_valid_crc_is_a_bitstream_error() -> None:
    body = b"\xff\xff\xff\xff"
    data = body + framing.CRC_FIELD + struct.pack("<I", framing.crc32c(body))
    with pytest.raises(BitstreamError, match="not a valid protobuf"):
        framing.decode_packet(data)


def test_auth_required_and_checked() -> None:
    p = framing.packetize(_image())[0]
    signed = framing.encode_packet(p, key=b"sender-key")
    assert framing.decode_packet(signed, key=b"sender-key").image_id == 3
    with pytest.raises(AuthError, match="does not match"):
        framing.decode_packet(signed, key=b"other-key")
    with pytest.raises(AuthError, match="no authentication tag"):
        framing.decode_packet(framing.encode_packet(p), key=b"sender-key")


def test_two_images_with_one_id_are_refused() -> None:
    data = framing.images_to_container([_image("one"), _image("two")])
    with pytest.raises(BitstreamError, match="share an id"):
        framing.container_to_images(data)


def test_container_errors() -> None:
    good = framing.images_to_container([_image()])
    with pytest.raises(BitstreamError, match="LCS magic"):
        framing.container_to_images(b"\x89PNG\r\n\x1a\n....")
    with pytest.raises(VersionError, match="container version 2"):
        framing.container_to_images(b"LCS\x02" + good[4:])
    with pytest.raises(TruncatedError, match="ends inside a packet"):
        framing.container_to_images(good[:-3])
    with pytest.raises(LimitError, match="packet length"):
        framing.container_to_images(framing.MAGIC + framing.encode_varint(10**9))
    with pytest.raises(TruncatedError, match="missing units"):
        ps = framing.packetize(_image(units=[b"a" * 50, b"b" * 50, b"c" * 50]), mtu=120)
        framing.container_to_images(framing.write_container(framing.encode_packet(p) for p in ps[:-1]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    for fn in (framing.decode_packet, framing.container_to_images):
        with contextlib.suppress(BitstreamError):
            fn(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_packets_raise_typed_errors(data: st.DataObject) -> None:
    w = bytearray(_wire())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(w) - 1))
        w[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(BitstreamError):
        framing.decode_packet(bytes(w))


# --- golden fixtures: exact bytes, regenerated only with LAYERCAST_REGEN_GOLDEN=1 --------------------------


def _golden_cases() -> dict[str, bytes]:
    img = _image(units=[b"\x01\x02", b"", b"\x03"])
    valid = framing.images_to_container([img], bundle=False)  # one packet per layer
    p = framing.packetize(_image())[0]
    return {
        "valid_stream.lcs": valid,
        "valid_bundled.lcs": framing.images_to_container([img]),  # as files are written: one packet per image
        "valid_packet_keyed.bin": framing.encode_packet(p, key=b"golden-key"),
        "invalid_crc.bin": _wire()[:-1] + bytes([_wire()[-1] ^ 0xFF]),
        "invalid_version.bin": _wire(version=2),
        "invalid_truncated.lcs": valid[:-7],
        "invalid_fragments.bin": _wire(fragment_count=0),
    }


@pytest.mark.parametrize("name", sorted(_golden_cases()))
def test_golden_bytes(name: str) -> None:
    path = GOLDEN / name
    data = _golden_cases()[name]
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(data)
    assert path.read_bytes() == data, f"{name} changed: the wire format moved (regenerate only on purpose)"


def test_golden_files_decode_as_documented() -> None:
    imgs = framing.container_to_images((GOLDEN / "valid_stream.lcs").read_bytes())
    assert imgs[0].header.width == 512 and [layer.kind.family for layer in imgs[0].layers] == [
        "semantic",
        "structure",
    ]
    bundled = (GOLDEN / "valid_bundled.lcs").read_bytes()
    assert len(list(framing.iter_container(bundled))) == 1 and framing.container_to_images(bundled) == imgs
    assert framing.decode_packet((GOLDEN / "valid_packet_keyed.bin").read_bytes(), key=b"golden-key").image_id == 3
    with pytest.raises(ChecksumError):
        framing.decode_packet((GOLDEN / "invalid_crc.bin").read_bytes())
    with pytest.raises(VersionError):
        framing.decode_packet((GOLDEN / "invalid_version.bin").read_bytes())
    with pytest.raises(TruncatedError):
        framing.container_to_images((GOLDEN / "invalid_truncated.lcs").read_bytes())
    with pytest.raises(LimitError):
        framing.decode_packet((GOLDEN / "invalid_fragments.bin").read_bytes())
