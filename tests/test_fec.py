"""Unequal error protection with zfec: any k of n fragments restore every data fragment exactly."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercast.common.errors import BitstreamError, InputError
from layercast.common.fec import FEC_ZFEC, FecPolicy, add_repair, overhead, protect, recover
from layercast.common.types import EncodedImage, EncodedLayer, LayerKind
from layercast.proto import pb
from layercast.proto.framing import collect_units, decode_packet, encode_packet, packetize
from layercast.sender.link import PROFILES, get_profile

KEY = bytes(range(32))


def image(units: list[bytes], kind: LayerKind = LayerKind.SEMANTIC) -> EncodedImage:
    """An image with one layer of arbitrary units (prompt descriptor: framing accepts any unit bytes)."""
    desc = pb.LayerDescriptor(codec=pb.CODEC_ID_PROMPT_UTF8, unit_count=len(units), prompt=pb.PromptParams())
    if kind == LayerKind.TEXTURE:
        desc = pb.LayerDescriptor(
            codec=pb.CODEC_ID_COLORMAP_PRED,
            unit_count=len(units),
            colormap=pb.ColormapParams(grid_width=8, grid_height=6, quality=50),
        )
    header = pb.ImageHeader(width=768, height=512, seed=42)
    return EncodedImage(header=header, layers=[EncodedLayer(kind, desc, units)], stream_id=3, image_id=9)


def fields(p: pb.Packet) -> tuple[object, ...]:
    return (
        p.header.SerializeToString(),
        p.fragment_index,
        p.unit_first,
        p.part_index,
        p.part_count,
        p.payload,
        p.layer.SerializeToString(),
    )


def test_policy_defaults_protect_semantic_most() -> None:
    pol = FecPolicy()
    assert pol.repairs("semantic", 1) == 3  # the minimum
    assert pol.repairs("semantic", 2) == 6
    assert pol.repairs("structure", 8) == 2
    assert pol.repairs("structure", 1) == 1
    assert pol.repairs("texture", 3) == 2
    assert pol.repairs("texture", 256) == 0  # no room left in zfec's 256 blocks
    assert pol.repairs("structure", 250) == 6  # capped at 256 in total
    assert FecPolicy.none().repairs("semantic", 1) == 0
    assert FecPolicy(semantic=0.0).repairs("semantic", 4) == 0


def test_policy_parse() -> None:
    assert FecPolicy.parse("off") == FecPolicy.none()
    assert FecPolicy.parse("default") == FecPolicy()
    p = FecPolicy.parse("semantic=4,texture=1x,semantic_min=5")
    assert (p.semantic, p.structure, p.texture, p.semantic_min) == (4.0, 0.25, 1.0, 5)
    for bad in ("semantic", "colour=1", "texture=lots", "structure=-1"):
        with pytest.raises(InputError):
            FecPolicy.parse(bad)
    with pytest.raises(InputError, match="unknown layer family"):
        FecPolicy().ratio("audio")


def test_repair_packets_carry_descriptor_not_header_and_fit_the_mtu() -> None:
    rng = random.Random(1)
    units = [rng.randbytes(rng.randrange(1, 500)) for _ in range(12)]
    data = packetize(image(units, LayerKind.TEXTURE), mtu=222, header_every_layer=True, keyed=True)
    out = add_repair(data, FecPolicy())
    k = len(data)
    r = FecPolicy().repairs("texture", k)
    assert len(out) == k + r
    for i, p in enumerate(out):
        assert (p.fragment_index, p.fragment_count, p.repair_count, p.fec_scheme) == (i, k, r, FEC_ZFEC)
        assert p.HasField("layer")
        p.sequence = 2**40  # a long sequence number, as a busy stream has
        assert len(encode_packet(p, key=KEY)) <= 222
        back = decode_packet(encode_packet(p, key=KEY), key=KEY)
        back.ClearField("auth_tag")
        back.ClearField("crc32c")
        assert back == p
    assert out[0].HasField("header")
    assert not any(p.HasField("header") for p in out[k:])
    assert not any(p.repair_count or p.fec_scheme for p in data)  # the inputs are not modified


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=700), min_size=1, max_size=25),
    st.sampled_from([120, 222, 340, 1200]),
    st.floats(min_value=0.1, max_value=3.0),
    st.randoms(use_true_random=False),
)
def test_any_k_of_n_restores_every_data_fragment(
    units: list[bytes], mtu: int, ratio: float, rnd: random.Random
) -> None:
    data = packetize(image(units, LayerKind.TEXTURE), mtu=mtu)
    out = add_repair(data, FecPolicy(texture=ratio))
    k, n = len(data), len(out)
    assert n > k
    subset = rnd.sample(out, k)
    rnd.shuffle(subset)
    got = recover(subset + rnd.sample(subset, min(2, k)))  # duplicates are harmless
    assert [fields(p) for p in got] == [fields(p) for p in data]
    assert collect_units(len(units), got) == units


def test_sliced_units_recover_their_slice_fields() -> None:
    big = bytes(random.Random(2).randbytes(3000))
    data = packetize(image([b"head", big, b"tail"]), mtu=222)
    assert any(p.part_count > 1 for p in data)
    out = add_repair(data, FecPolicy(semantic=0.5))
    k = len(data)
    survivors = out[k // 2 :]  # the first half of the data fragments is lost
    assert len(survivors) >= k
    got = recover(survivors)
    assert [fields(p) for p in got] == [fields(p) for p in data]
    assert collect_units(3, got) == [b"head", big, b"tail"]
    assert got[0].header == data[0].header  # restored from the FEC block
    assert data[0].HasField("header") and not any(p.HasField("header") for p in out[k:])


def test_fewer_than_k_returns_only_the_data_that_arrived() -> None:
    data = packetize(image([bytes([i]) * 150 for i in range(6)]), mtu=222)
    out = add_repair(data, FecPolicy(semantic=0.5, semantic_min=0))
    k = len(data)
    r = len(out) - k
    kept = out[r + 1 :]  # k - 1 fragments: not enough
    got = recover(kept)
    assert [p.fragment_index for p in got] == [p.fragment_index for p in kept if p.fragment_index < k]
    assert recover([]) == []


def test_single_fragment_semantic_layer_survives_any_one_copy() -> None:
    data = packetize(image([b"a lighthouse at dusk, oil painting"]), mtu=222)
    out = add_repair(data, FecPolicy())
    assert len(out) == 4
    for p in out:
        assert [fields(x) for x in recover([p])] == [fields(x) for x in data]


def test_no_fec_policy_returns_copies_unchanged() -> None:
    data = packetize(image([b"x" * 300, b"y"]), mtu=222)
    out = add_repair(data, FecPolicy.none())
    assert out == data and out[0] is not data[0]
    assert recover(out) == out


def test_inconsistent_or_damaged_fragments_are_rejected() -> None:
    data = packetize(image([bytes([i]) * 100 for i in range(4)]), mtu=222)
    out = add_repair(data, FecPolicy(semantic=1.0))
    k = len(data)
    bad = pb.Packet()
    bad.CopyFrom(out[k])
    bad.payload = bad.payload[:-1]
    with pytest.raises(BitstreamError, match="differ in size"):
        recover([*out[1:k], bad, out[k + 1]])
    other = pb.Packet()
    other.CopyFrom(out[k])
    other.image_id += 1
    with pytest.raises(BitstreamError, match="disagree"):
        recover([out[0], other])
    with pytest.raises(InputError, match="exactly one layer"):
        add_repair(data[1:], FecPolicy())


def test_overhead_accounting() -> None:
    units = [bytes(random.Random(5).randbytes(4000))]
    img = image(units)
    plain = [encode_packet(p) for p in packetize(img, mtu=1200)]
    ov = overhead(plain, img.layers[0].nbytes)
    assert 0 < ov < 0.08  # framing alone at a 1200-byte MTU
    protected = [encode_packet(p) for p in add_repair(packetize(img, mtu=1200), FecPolicy(semantic=0.25))]
    assert overhead(protected, img.layers[0].nbytes) > ov + 0.25
    with pytest.raises(InputError):
        overhead(plain, 0)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_packets_and_repairs_fit_its_mtu(name: str) -> None:
    profile = get_profile(name)
    rng = random.Random(name)
    img = image([rng.randbytes(rng.randrange(10, 900)) for _ in range(20)], LayerKind.TEXTURE)
    img.header.hints.model_name = "sd_xl_base_1.0"
    out = protect(
        packetize(img, mtu=profile.mtu, header_every_layer=profile.header_every_layer, keyed=True), profile.fec
    )
    for i, p in enumerate(out):
        p.sequence = 2**41 + i
    sizes = [len(encode_packet(p, key=KEY)) for p in out]
    if profile.mtu is None:
        assert len(out) == 1
    else:
        assert max(sizes) <= profile.mtu
    assert any(p.fragment_index >= p.fragment_count for p in out) == (profile.fec != FecPolicy.none())


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match="known: lora, sbd, webrtc, webrtc-bundle, mqtt, file"):
        get_profile("carrier-pigeon")
    assert get_profile(" LoRa ").mtu == 222
