"""Prompt codecs: prompt model 2 ("mix") round trips (compiled and plain Python alike), the never-grow
escape, fair stream counting, corruption and model-version errors, model 1 streams still decoding, and
the size targets (leave-one-corpus-out and held-out; skip where the shared data set is absent)."""

from __future__ import annotations

import random
import statistics
import time
import zlib
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercast.common import limits
from layercast.common.codecs import prompt_mix
from layercast.common.codecs.prompt import (
    CTX_VERSION,
    CtxPromptCodec,
    Utf8PromptCodec,
    compress_prompt,
    decompress_prompt,
    prompt_model,
    stream_bytes,
)
from layercast.common.codecs.prompt_corpus import (
    build_texts,
    dedupe_key,
    full_prompt,
    is_held_out,
    load_prompts,
    split,
)
from layercast.common.codecs.prompt_ctx import parse_model, serialize_model, shipped_model
from layercast.common.codecs.prompt_kernel import jitted
from layercast.common.codecs.prompt_mix import MODEL_VERSION, shipped_mix_model
from layercast.common.codecs.rangecoder import RangeDecoder, RangeEncoder
from layercast.common.errors import CodecError, InputError, ModelError, UnknownCodecError
from layercast.common.registry import PROMPT_CTX, PROMPT_UTF8
from layercast.common.types import EncodedImage, EncodedLayer, LayerKind, Prompt
from layercast.proto import framing, pb
from tests.conftest import non_negative_index, shared_data

CTX = CtxPromptCodec()
UTF8 = Utf8PromptCodec()
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
    "x" * 300,
]
NEEDS_NUMBA = pytest.mark.skipif(jitted() is None, reason="numba (layercast[fast]) is not installed")


def ctx_roundtrip(p: Prompt, version: int = MODEL_VERSION) -> Prompt:
    layer = CTX.compress(p, model_version=version)
    assert layer.descriptor.codec == PROMPT_CTX
    assert layer.descriptor.WhichOneof("params") == "prompt"
    assert layer.descriptor.prompt.model_version == version
    assert layer.descriptor.unit_count == len(layer.units) == (2 if p.negative else 1)
    assert layer.kind == LayerKind.SEMANTIC
    return CTX.decompress(layer.descriptor, list(layer.units))


# --- model 2: round trips and the escape ----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_any_unicode_roundtrips_and_never_costs_more_than_raw(text: str, negative: str) -> None:
    p = Prompt(text, negative)
    assert ctx_roundtrip(p) == p
    layer = compress_prompt(p)
    assert decompress_prompt(layer.descriptor, layer.units) == p
    raw = UTF8.compress(p)
    assert stream_bytes(layer) <= stream_bytes(raw)  # the escape: never worse than the raw UTF-8 layer
    assert layer.nbytes <= raw.nbytes <= raw.nbytes + 2


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=60))
def test_plain_python_and_compiled_give_the_same_units(text: str) -> None:
    model = shipped_mix_model()
    raw = text.encode("utf-8", "surrogatepass")
    unit = model.encode(raw, compiled=True)
    assert model.encode(raw, compiled=False) == unit
    assert model.decode(unit, compiled=False) == raw


@NEEDS_NUMBA
def test_the_coding_loop_never_indexes_below_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled loop indexes unsigned (no wraparound: a negative index would read outside the array); the
    plain loop, with every index checked, codes the examples and decodes garbage as the compiled one does."""
    from layercast.common.codecs import prompt_kernel

    monkeypatch.setattr(prompt_mix, "kernel", prompt_kernel.kernel_for(non_negative_index))
    model = shipped_mix_model()
    rng = random.Random(4)
    for text in [*EXAMPLES, "x" * 300, "".join(chr(rng.randrange(32, 0x3000)) for _ in range(80))]:
        raw = text.encode("utf-8", "surrogatepass")
        unit = model.encode(raw, compiled=False)
        assert unit == model.encode(raw, compiled=True)
        assert model.decode(unit, compiled=False) == raw
    for _ in range(20):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(3, 60)))
        outcomes: list[bytes | str] = []
        for compiled in (False, True):
            try:
                outcomes.append(model.decode(junk, compiled=compiled))
            except CodecError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1]


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


def test_typical_prompts_pick_the_model_and_shrink() -> None:
    text = "a beautiful painting of a castle on a hill, close-up, hyper detail, HDR lighting, baroque style"
    layer = compress_prompt(Prompt(text))
    assert layer.descriptor.codec == PROMPT_CTX and layer.descriptor.prompt.model_version == MODEL_VERSION
    assert layer.nbytes < 0.3 * len(text)
    assert compress_prompt(Prompt("")).descriptor.codec == PROMPT_UTF8


def test_model_2_descriptor_costs_no_version_bytes() -> None:
    """model_version 0 is not written: a model 2 layer has the same framing as a raw UTF-8 layer."""
    layer = CTX.compress(Prompt("a cat on a mat"))
    assert not layer.descriptor.prompt.ListFields()
    assert stream_bytes(layer) - layer.nbytes == stream_bytes(UTF8.compress(Prompt("x"))) - 1 == 11
    old = CTX.compress(Prompt("a cat on a mat"), model_version=CTX_VERSION)
    assert stream_bytes(old) - old.nbytes == 13


def test_stream_bytes_is_what_the_layer_adds_to_a_stream() -> None:
    """Fair counting: the bytes a semantic layer adds to a bundled packet, measured by framing."""
    colormap = pb.ColormapParams(grid_width=4, grid_height=4, quality=50)
    desc = pb.LayerDescriptor(codec=pb.CODEC_ID_COLORMAP_PRED, unit_count=1, colormap=colormap)
    texture = EncodedLayer(LayerKind.TEXTURE, desc, [b"\x01\x02\x03"])
    header = pb.ImageHeader(width=512, height=512)
    for p in (Prompt("a cat"), Prompt("a dog in a house, 4k", "blurry"), Prompt("😀" * 100)):
        for layer in (compress_prompt(p), UTF8.compress(p), CTX.compress(p, model_version=CTX_VERSION)):
            sizes = []
            for layers in ([layer, texture], [texture]):
                img = EncodedImage(header=header, layers=layers)
                (packet,) = framing.packetize(img, bundle=("semantic", "texture"))
                sizes.append(len(framing.encode_packet(packet)))
            assert sizes[0] - sizes[1] == stream_bytes(layer)


def test_too_long_prompt_is_input_error() -> None:
    with pytest.raises(InputError, match="longer than"):
        CTX.compress(Prompt("x" * (limits.MAX_PROMPT_BYTES + 1)))


def test_decode_speed_of_a_200_character_prompt() -> None:
    if jitted() is None:
        pytest.skip("numba (layercast[fast]) is not installed: the plain-Python coder is slower")
    model = shipped_mix_model()
    text = ("a beautiful painting of a castle on a hill at sunset, highly detailed, trending on artstation, " * 3)[:200]
    unit = model.encode(text.encode())
    model.decode(unit)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        model.decode(unit)
        times.append(time.perf_counter() - t0)
    # the fastest of 30: what a decode costs when the (shared) CPU is not taken by something else
    assert min(times) < 0.010, f"decode took {1e3 * min(times):.1f} ms (median {1e3 * statistics.median(times):.1f})"


# --- corruption ----------------------------------------------------------------------------------------


def _units(version: int) -> list[bytes]:
    texts = ["a crocodile in a new york sewer, baroque style", "bird", "中文 😀", ""]
    return [CTX.compress(Prompt(t), model_version=version).units[0] for t in texts]


def _decode_unit(unit: bytes, version: int) -> Prompt:
    desc = CTX.compress(Prompt("x"), model_version=version).descriptor
    return CTX.decompress(desc, [unit])


def test_model_1_every_single_bit_flip_is_a_codec_error() -> None:
    for unit in _units(CTX_VERSION):
        for i in range(len(unit) * 8):
            bad = bytearray(unit)
            bad[i // 8] ^= 1 << (i % 8)
            with pytest.raises(CodecError, match=r"corrupt|check"):
                _decode_unit(bytes(bad), CTX_VERSION)


def test_model_1_every_truncation_and_extension_is_a_codec_error() -> None:
    for unit in _units(CTX_VERSION):
        for n in range(len(unit)):
            with pytest.raises(CodecError):
                _decode_unit(unit[:n], CTX_VERSION)
        for tail in (b"\x00", b"\x01", b"\xff\xff"):
            with pytest.raises(CodecError):
                _decode_unit(unit + tail, CTX_VERSION)


@pytest.mark.parametrize("version", [MODEL_VERSION, CTX_VERSION])
def test_garbage_units_are_refused_quickly(version: int) -> None:
    """Junk is a CodecError (model 2: but for about 1 in 256 that pass its 1-byte check), and fast."""
    rng = random.Random(1234)
    t0 = time.perf_counter()
    passed = 0
    for _ in range(300):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        try:
            _decode_unit(junk, version)
            passed += 1
        except CodecError:
            pass
    assert passed <= (0 if version == CTX_VERSION else 6)
    assert time.perf_counter() - t0 < 20
    with pytest.raises(CodecError, match="exceeds"):
        _decode_unit(b"\x41" * (limits.MAX_PROMPT_BYTES + 1), version)


def _corruptions(unit: bytes) -> list[bytes]:
    flips = [unit[: i // 8] + bytes([unit[i // 8] ^ (1 << (i % 8))]) + unit[i // 8 + 1 :] for i in range(len(unit) * 8)]
    return flips + [unit[:n] for n in range(len(unit))] + [unit + t for t in (b"\x00", b"\x01", b"\xff\xff")]


def test_model_2_detects_corruption_at_its_check_rate() -> None:
    """Model 2's units are nearly bijective (almost any bytes are the canonical coding of some text), so a
    corrupted unit is caught by its 1-byte check: about 255 in 256 (after the packet's CRC-32C)."""
    model = shipped_mix_model()
    rng = random.Random(7)
    words = [
        "a",
        "photo",
        "of",
        "red",
        "blue",
        "cat",
        "dog",
        "castle",
        "painting",
        "highly",
        "detailed",
        "trending",
        "on",
        "artstation",
        "4k",
        "portrait",
    ]
    cases = passed = 0
    for _ in range(150):
        unit = model.encode(" ".join(rng.choice(words) for _ in range(rng.randrange(1, 12))).encode())
        for bad in _corruptions(unit):
            cases += 1
            try:
                model.decode(bad)
                passed += 1
            except CodecError:
                pass
    assert passed <= cases // 100, f"{passed} of {cases} corrupted units decoded"


@pytest.mark.parametrize("version", [MODEL_VERSION, CTX_VERSION])
def test_decoded_length_is_capped(version: int) -> None:
    model = prompt_model(version)
    unit = model.encode(b"hyper detail, " * 50)
    assert model.decode(unit) == b"hyper detail, " * 50
    with pytest.raises(CodecError, match="more than 100 bytes"):
        model.decode(unit, max_bytes=100)


def test_unknown_model_version_is_a_codec_error() -> None:
    layer = CTX.compress(Prompt("a cat"))
    desc = pb.LayerDescriptor()
    desc.CopyFrom(layer.descriptor)
    desc.prompt.model_version = 7
    with pytest.raises(CodecError, match=r"model version 7, this build has versions 0 \(mix\), 1 \(ctx\)"):
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


# --- backward compatibility: model 1 streams -------------------------------------------------------------


def test_model_1_layers_still_decode() -> None:
    """Layers written before model 2 (model_version 1) decode; their units are unchanged bytes."""
    for text in ("a cat", "a grand stag in a fantasy forest, realistic style", "中文 😀", ""):
        p = Prompt(text, "lowres")
        assert ctx_roundtrip(p, CTX_VERSION) == p
    desc = pb.LayerDescriptor(codec=PROMPT_CTX, unit_count=1, prompt=pb.PromptParams(model_version=1))
    for text, hexunit in V1_GOLDEN_UNITS.items():
        assert CTX.decompress(desc, [bytes.fromhex(hexunit)]) == Prompt(text)
        assert shipped_model().encode(text.encode()).hex() == hexunit


V1_GOLDEN_UNITS = {  # model 1 units as layercast wrote them before model 2
    "a cat": "0e20649c",
    "a grand stag in a fantasy forest, realistic style": "19fa9885b1002559c6f9372f",
}


# --- range coder (model 1) and model files ---------------------------------------------------------------


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


def test_model_1_file_is_versioned_and_checked() -> None:
    data = resources.files("layercast.common").joinpath("models/prompt_model.bin").read_bytes()
    assert len(data) < 300_000
    model = parse_model(data)
    assert model.version == shipped_model().version == CTX_VERSION
    with pytest.raises(ModelError, match="CRC"):
        parse_model(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    with pytest.raises(ModelError, match="not an LCPM"):
        parse_model(b"nope" + data[4:])
    with pytest.raises(ModelError, match="NUL"):
        serialize_model(1, 5, 2, 1, ["a\x00b"])
    tiny = parse_model(serialize_model(7, 2, 2, 1, ["red cat", "red car"]))
    assert tiny.decode(tiny.encode(b"red cab")) == b"red cab"


def test_model_2_file_is_versioned_checked_and_small() -> None:
    data = resources.files("layercast.common").joinpath(prompt_mix.MODEL_FILE).read_bytes()
    assert len(data) < 2_000_000
    model = prompt_mix.parse(data)
    assert model.version == MODEL_VERSION == 0 and model.spec == prompt_mix.SHIPPED_SPEC
    with pytest.raises(ModelError, match="CRC"):
        prompt_mix.parse(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    with pytest.raises(ModelError, match="not an LCPX"):
        prompt_mix.parse(b"nope" + data[4:])
    with pytest.raises(ModelError):
        prompt_mix.parse(data[:100])


@NEEDS_NUMBA
@pytest.mark.slow
def test_model_2_build_is_deterministic_and_file_roundtrips() -> None:
    prompts = ["a red cat on a mat", "a blue dog in a house", "a photo of a cat", "portrait, highly detailed, 4k"] * 3
    data = prompt_mix.build(prompts)
    assert prompt_mix.build(list(prompts)) == data
    model = prompt_mix.parse(data)
    assert prompt_mix.parse(prompt_mix.serialize(0, model.spec, model.tables)).tables.cnts.tolist() == (
        model.tables.cnts.tolist()
    )
    for text in (b"", b"a red dog in a house", "中文".encode(), b"\xff\x00"):
        assert model.decode(model.encode(text)) == text
        assert model.encode(text, compiled=False) == model.encode(text)


# --- corpora and size targets ----------------------------------------------------------------------------


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


def test_build_texts_dedupes_and_leaves_a_corpus_out() -> None:
    corpora = {"b": ["A  Cat", "a dog", "shared"], "a": ["a cat", "x"], "c": ["SHARED", "y"]}
    assert dedupe_key("A  Cat ") == "a cat"
    assert build_texts(corpora) == ["a cat", "x", "a dog", "shared", "y"]
    assert build_texts(corpora, leave_out="c") == ["a cat", "x", "a dog"]  # "shared" is in c: out too
    with pytest.raises(InputError, match="no corpus"):
        build_texts(corpora, leave_out="d")


def test_model_1_held_out_prompts_beat_brotli() -> None:
    brotli = pytest.importorskip("brotli", reason="brotli (layercast[bench]) is not installed")
    csv_path = shared_data() / "prompts" / "agiqa3k.csv"
    if not csv_path.exists():
        pytest.skip(f"prompt corpus {csv_path} is absent")
    build, held = split(load_prompts(csv_path))
    assert len(held) >= 40
    assert set(shipped_model().texts) == {p.encode() for p in build}, "model 1 is not built from the build split"
    ours = sum(len(shipped_model().encode(p.encode())) for p in held)
    ref = sum(len(brotli.compress(p.encode(), quality=11)) for p in held)
    assert ours < 0.7 * ref, f"prompt model 1: {ours} B vs brotli-11 {ref} B on {len(held)} held-out prompts"


@NEEDS_NUMBA
@pytest.mark.slow
def test_leave_one_corpus_out_beats_the_goal_on_drawbench(tmp_path: Path) -> None:
    """A model built (shipped recipe) without DrawBench codes DrawBench at <= 0.6x brotli-11, fairly counted."""
    pytest.importorskip("brotli", reason="brotli (layercast[bench]) is not installed")
    from layercast.bench import prompts as bench

    folder = shared_data() / "prompts"
    corpora = bench.load_corpora(folder)
    if "drawbench" not in corpora:
        pytest.skip("drawbench.txt is absent")
    model, cached = bench.loco_model(corpora, "drawbench", tmp_path)
    assert not cached
    m = bench.measure(corpora["drawbench"], model)
    assert m["ratio_brotli11"] <= bench.GOAL, m
    assert m["worst_over_raw"] <= 0
    assert bench.loco_model(corpora, "drawbench", tmp_path)[1]  # the second time from the cache
