"""Prompt codecs: prompt-ctx round trips, never-grow selection, corruption and model-version errors,
and the size target on held-out AGIQA-3K prompts (skips where the shared data set is absent)."""

from __future__ import annotations

import random
import zlib
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercast.common import limits
from layercast.common.codecs.prompt import (
    CtxPromptCodec,
    Utf8PromptCodec,
    compress_prompt,
    decompress_prompt,
)
from layercast.common.codecs.prompt_corpus import full_prompt, is_held_out, load_prompts, split
from layercast.common.codecs.prompt_ctx import parse_model, serialize_model, shipped_model
from layercast.common.codecs.rangecoder import RangeDecoder, RangeEncoder
from layercast.common.errors import CodecError, InputError, ModelError, UnknownCodecError
from layercast.common.registry import PROMPT_CTX, PROMPT_UTF8
from layercast.common.types import LayerKind, Prompt
from layercast.proto import pb
from tests.conftest import shared_data

CTX = CtxPromptCodec()
EXAMPLES = [
    "",
    "a",
    "bird",
    "cat, 4k",
    "a grand stag in a fantasy forest, realistic style",
    "masterpiece, best quality, 1girl, (looking at viewer:1.2), <lora:foo:0.8>",
    "😀 emoji prompt ✓ with ünïcödé and 中文提示词",
    "line one\nline two\ttab\x00nul",
    "\U0010ffff" * 3,
]


def ctx_roundtrip(p: Prompt) -> Prompt:
    layer = CTX.compress(p)
    assert layer.descriptor.codec == PROMPT_CTX
    assert layer.descriptor.WhichOneof("params") == "prompt"
    assert layer.descriptor.prompt.model_version == shipped_model().version
    assert layer.descriptor.unit_count == len(layer.units) == (2 if p.negative else 1)
    assert layer.kind == LayerKind.SEMANTIC
    return CTX.decompress(layer.descriptor, list(layer.units))


@settings(max_examples=150, deadline=None)
@given(st.text(), st.text())
def test_ctx_roundtrip_any_text(text: str, negative: str) -> None:
    assert ctx_roundtrip(Prompt(text, negative)) == Prompt(text, negative)
    layer = compress_prompt(Prompt(text, negative))
    assert decompress_prompt(layer.descriptor, layer.units) == Prompt(text, negative)


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=30), st.text(max_size=30))
def test_compress_prompt_never_grows(text: str, negative: str) -> None:
    p = Prompt(text, negative)
    assert compress_prompt(p).nbytes <= Utf8PromptCodec().compress(p).nbytes


@pytest.mark.parametrize("text", EXAMPLES)
def test_fixed_examples_roundtrip_and_are_deterministic(text: str) -> None:
    p = Prompt(text, "blurry, lowres, bad anatomy")
    assert ctx_roundtrip(p) == p
    assert CTX.compress(p).units == CTX.compress(p).units
    layer = compress_prompt(p)
    assert decompress_prompt(layer.descriptor, layer.units) == p


def test_lone_surrogates_roundtrip_like_utf8_codec() -> None:
    for text in ("\udc80abc", "\ud83d\ude00 x", "x\ud800"):
        assert ctx_roundtrip(Prompt(text)) == Prompt(text)


@pytest.mark.parametrize("text", ["", "a", "bird", "cat, 4k", "House", "turtle"])
def test_short_prompts_never_grow(text: str) -> None:
    layer = compress_prompt(Prompt(text))
    assert layer.nbytes <= len(text.encode("utf-8"))
    assert decompress_prompt(layer.descriptor, layer.units) == Prompt(text)


def test_typical_prompts_pick_ctx_and_shrink() -> None:
    text = "a beautiful painting of a castle on a hill, close-up, hyper detail, HDR lighting, baroque style"
    layer = compress_prompt(Prompt(text))
    assert layer.descriptor.codec == PROMPT_CTX
    assert layer.nbytes < 0.4 * len(text)
    assert compress_prompt(Prompt("")).descriptor.codec == PROMPT_UTF8


def test_too_long_prompt_is_input_error() -> None:
    with pytest.raises(InputError, match="longer than"):
        CTX.compress(Prompt("x" * (limits.MAX_PROMPT_BYTES + 1)))


def _units() -> list[bytes]:
    texts = ["a crocodile in a new york sewer, baroque style", "bird", "中文 😀", ""]
    return [CTX.compress(Prompt(t)).units[0] for t in texts]


def _decode_unit(unit: bytes) -> Prompt:
    desc = CTX.compress(Prompt("x")).descriptor
    return CTX.decompress(desc, [unit])


def test_every_single_bit_flip_is_a_codec_error() -> None:
    for unit in _units():
        for i in range(len(unit) * 8):
            bad = bytearray(unit)
            bad[i // 8] ^= 1 << (i % 8)
            with pytest.raises(CodecError, match=r"corrupt|check"):
                _decode_unit(bytes(bad))


def test_every_truncation_and_extension_is_a_codec_error() -> None:
    for unit in _units():
        for n in range(len(unit)):
            with pytest.raises(CodecError):
                _decode_unit(unit[:n])
        for tail in (b"\x00", b"\x01", b"\xff\xff"):
            with pytest.raises(CodecError):
                _decode_unit(unit + tail)


def test_garbage_units_are_codec_errors_quickly() -> None:
    rng = random.Random(1234)
    for _ in range(150):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        with pytest.raises(CodecError):
            _decode_unit(junk)
    with pytest.raises(CodecError, match="exceeds"):
        _decode_unit(b"\x41" * (limits.MAX_PROMPT_BYTES + 1))


def test_decoded_length_is_capped() -> None:
    model = shipped_model()
    unit = model.encode(b"hyper detail, " * 50)
    assert model.decode(unit) == b"hyper detail, " * 50
    with pytest.raises(CodecError, match="more than 100 bytes"):
        model.decode(unit, max_bytes=100)


def test_wrong_model_version_is_a_codec_error() -> None:
    layer = CTX.compress(Prompt("a cat"))
    desc = pb.LayerDescriptor()
    desc.CopyFrom(layer.descriptor)
    desc.prompt.model_version = shipped_model().version + 1
    with pytest.raises(CodecError, match=r"model version \d+, this build has version"):
        CTX.decompress(desc, layer.units)


def test_unit_count_and_missing_units() -> None:
    layer = CTX.compress(Prompt("a cat", "dog"))
    with pytest.raises(CodecError, match="declares 2"):
        CTX.decompress(layer.descriptor, layer.units[:1])
    assert CTX.decompress(layer.descriptor, [layer.units[0], None]) == Prompt("a cat")
    with pytest.raises(CodecError, match="missing"):
        CTX.decompress(layer.descriptor, [None, layer.units[1]])
    with pytest.raises(UnknownCodecError):
        decompress_prompt(pb.LayerDescriptor(codec=pb.CODEC_ID_EDGES_CTX), layer.units)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 1 << 36), st.integers(0, 1 << 36)), max_size=60))
def test_range_coder_roundtrip(spec: list[tuple[int, int]]) -> None:
    symbols = [(total, c % total) for total, c in spec]  # symbol c % total of a uniform alphabet
    enc = RangeEncoder()
    for total, s in symbols:
        enc.encode(s, 1, total)
    data = enc.finish()
    assert not data.endswith(b"\x00")
    dec = RangeDecoder(data)
    for total, s in symbols:
        assert dec.target(total) == s
        dec.consume(s, 1)


def test_model_file_is_versioned_and_checked() -> None:
    data = resources.files("layercast.common").joinpath("models/prompt_model.bin").read_bytes()
    assert len(data) < 300_000
    model = parse_model(data)
    assert model.version == shipped_model().version >= 1
    with pytest.raises(ModelError, match="CRC"):
        parse_model(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    with pytest.raises(ModelError, match="not an LCPM"):
        parse_model(b"nope" + data[4:])
    with pytest.raises(ModelError, match="NUL"):
        serialize_model(1, 5, 2, 1, ["a\x00b"])
    tiny = parse_model(serialize_model(7, 2, 2, 1, ["red cat", "red car"]))
    assert tiny.decode(tiny.encode(b"red cab")) == b"red cab"


def test_full_prompt_and_split_rule() -> None:
    row = {"prompt": "a stag, top view, anime style", "adj1": "top view", "adj2": "", "style": "anime style"}
    assert full_prompt(row) == "a stag, top view, anime style"
    assert full_prompt({"prompt": "a stag", "adj1": "", "adj2": "HDR lighting", "style": "anime style"}) == (
        "a stag, HDR lighting, anime style"
    )
    assert is_held_out("x") == (zlib.crc32(b"x") % 5 == 0)
    build, held = split(["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"])
    assert sorted(build + held) == ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"]
    assert all(is_held_out(p) for p in held) and not any(is_held_out(p) for p in build)


def test_held_out_prompts_are_not_in_the_model_and_beat_brotli() -> None:
    brotli = pytest.importorskip("brotli", reason="brotli (layercast[bench]) is not installed")
    csv_path = shared_data() / "prompts" / "agiqa3k.csv"
    if not csv_path.exists():
        pytest.skip(f"prompt corpus {csv_path} is absent")
    prompts = load_prompts(csv_path)
    build, held = split(prompts)
    assert len(held) >= 40
    corpus = set(shipped_model().texts)
    assert corpus == {p.encode() for p in build}, "the shipped model is not built from the build split"
    ours = sum(compress_prompt(Prompt(p)).nbytes for p in held)
    ref = sum(len(brotli.compress(p.encode(), quality=11)) for p in held)
    assert ours < 0.7 * ref, f"prompt coder {ours} B vs brotli-11 {ref} B on {len(held)} held-out prompts"
