"""Budgets hold: a prompt too large for the budget is reduced in a documented order (sender.prompt_fit)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from layercast.common.codecs.prompt import compress_prompt
from layercast.common.types import EncodedImage, Prompt
from layercast.proto import framing
from layercast.receiver.layers import layerset_from_image
from layercast.sender.encode import EncodeOptions, encode_image, make_header
from layercast.sender.extract_prompt import PROMPT_SEPARATOR, semantic_layer
from layercast.sender.image_io import load_image
from layercast.sender.prompt_fit import (
    FLOOR_TOKENS,
    STEPS,
    WINDOW_TOKENS,
    PromptCut,
    count_tokens,
    fit_prompt,
    repeats,
    split_prompts,
    token_prefix,
)
from tests.conftest import SHARED, aigi_manifest, shared_data
from tests.imaging import busy, scene

# --- token counting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("a red bird", 3),
        ("it's", 2),  # CLIP's contractions: "it", "'s"
        ("masterpiece, (best quality:1.2)", 10),  # masterpiece , ( best quality : 1 . 2 )
        ("8k uhd", 3),  # a digit is a token of its own
        ("rock&amp;roll", 3),  # HTML unescaped first, as CLIP's basic_clean does
        ("<|endoftext|>", 1),
        ("café\tau  lait", 3),
        ("don\u2019t", 1),  # a curly quote is deleted: the count errs low (CLIP: "don", "\u2019", "t")
    ],
)
def test_count_tokens(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


def _clip_pre_tokens() -> Any:
    """CLIP's normaliser and pre-tokenizer as Hugging Face's CLIPTokenizer builds them (tokenizers library)."""
    tokenizers = pytest.importorskip("tokenizers")
    norm = tokenizers.normalizers.Sequence(
        [
            tokenizers.normalizers.NFC(),
            tokenizers.normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
            tokenizers.normalizers.Lowercase(),
        ]
    )
    pattern = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    pre = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="removed", invert=True)
    return lambda text: len(pre.pre_tokenize_str(norm.normalize_str(text)))


_TRICKY = [
    *"aZ 'sStT,.;:!?()[]{}<>|_-&#0123456789\n\t\x00\x1b\x1c\x7f\x85\xa0",
    *["é", "e\u0301", "\u2019", "！", "１", "½", "²", "Ã", "©", "ſ", "İ", "\u200b", "\ufeff", "😀", "中", "，"],
    *["&amp;", "&lt;", "&#39;", "<|endoftext|>", "<|StartOfText|>", "\u0308", "ﬁ", "\x1b[31m", "'ll", "'RE"],
    *["\u2028", "\u3000", "ǅ", "ʰ", "Ⅻ", "٣", "\U0001d7d8"],
]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), st.lists(st.sampled_from(_TRICKY), max_size=20).map("".join)))
def test_count_is_a_lower_bound_on_clip_pre_tokens(text: str) -> None:
    """Every CLIP pre-token is at least one BPE token: counting at most as many pre-tokens as CLIP splits
    keeps the count a lower bound on the tokens Stable Diffusion's text encoder sees."""
    real = _clip_pre_tokens()
    try:
        expected = real(text)
    except Exception:  # lone surrogates: the Rust tokenizer refuses them
        return
    assert count_tokens(text) <= expected


def test_count_is_exact_on_plain_prompts() -> None:
    real = _clip_pre_tokens()
    prompts = [
        "masterpiece, best quality, 1girl, (detailed eyes:1.2), <lora:add_detail:0.5> standing in a field",
        "A photo of an astronaut riding a horse on Mars, 8k, trending on ArtStation -- it's what we'd want",
        "oil painting of a cat wearing a top hat; by Greg Rutkowski & Alphonse Mucha!!!",
    ]
    folder = SHARED / "prompts"
    if folder.is_dir():
        for path in sorted(folder.glob("*.txt")):
            prompts += path.read_text(encoding="utf-8").splitlines()[:300]
    ascii_prompts = [p for p in prompts if p.isascii() and "&" not in p]
    assert all(count_tokens(p) == real(p) for p in ascii_prompts)
    assert all(count_tokens(p) <= real(p) for p in prompts)


def test_token_prefix_cuts_on_a_boundary_just_after_n_tokens() -> None:
    text = "masterpiece, best quality, a lone lighthouse keeper on a rocky cliff, it's stormy at dusk"
    for n in range(1, count_tokens(text) + 1):
        cut = token_prefix(text, n)
        assert text.startswith(cut) and cut == cut.rstrip() and count_tokens(cut) >= n
        assert count_tokens(cut[:-1]) < n or count_tokens(cut[:-1]) == count_tokens(cut)  # within the last piece
    assert token_prefix(text, 0) == "" and token_prefix(text, 500) == text
    assert token_prefix("a red bird", 2) == "a red"


def test_cut_text_still_fills_a_clip_tokenizers_77_token_window(tmp_path: Path) -> None:
    """With a real CLIPTokenizer (a tiny BPE vocabulary written by the test): the text cut after 75 counted
    tokens still yields at least 77 ids with BOS and EOS, so the decoder reads a full window."""
    pytest.importorskip("transformers")
    from transformers import CLIPTokenizer

    from tests.tiny_models import write_clip_tokenizer

    tok = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path / "tok")), local_files_only=True)
    text = ", ".join(_words(40)) + ", a red cat and a dog, it's 8k &amp; uhd"
    cut = token_prefix(text, WINDOW_TOKENS)
    assert count_tokens(cut) >= WINDOW_TOKENS and len(cut) < len(text)
    assert len(tok(cut).input_ids) >= WINDOW_TOKENS + 2
    assert len(tok(text).input_ids) - 2 >= count_tokens(text)


# --- repeated prompts -------------------------------------------------------------------------------------


def test_repeats_are_lines_mostly_said_above() -> None:
    parts = split_prompts(
        "a castle on a hill, sunset, highly detailed\n"
        "(a castle on a hill:1.2), (sunset:0.8), highly detailed\n"  # re-weighted repeat
        "dramatic sky with storm clouds\n"  # a prompt of its own
        "A CASTLE ON A HILL\n"  # repeat, other case
        "\n"  # blank line: nothing to say
        "(:1.2)"
    )
    assert repeats(parts) == [1, 3, 4, 5]
    assert repeats(["a castle"]) == [] and split_prompts("") == []
    # prompts of their own that share the usual tags or small words are not repeats
    assert repeats(["a photo of a cat", "a photo of a dog"]) == []
    assert repeats(["masterpiece, best quality, 1girl, red dress, standing in a garden",
                    "masterpiece, best quality, 1girl, blue dress, sitting on a bench"]) == []  # fmt: skip


# --- the order of the cuts (a synthetic stream size: one byte per character) --------------------------------


def _words(n: int, start: int = 0) -> list[str]:
    syllables = ["ka", "lo", "mi", "nu", "re", "sa", "to", "vi"]
    return ["".join(w) for w in itertools.islice(itertools.product(syllables, repeat=3), start, start + n)]


MAIN = " ".join(_words(120))  # 120 tokens
OTHER = " ".join(_words(20, start=200))  # a prompt of its own
NEG = " ".join(_words(100, start=300))
FLOORS = (100, 40, 0)  # stream bytes of the minimum layers at each level; no header


def _size(p: Prompt, level: int) -> int:
    return len(p.text) + len(p.negative) + FLOORS[level]


def _fit(prompt: Prompt, budget: int) -> Any:
    fitted = fit_prompt(prompt, budget, _size, levels=len(FLOORS))
    assert not fitted.fits or _size(fitted.prompt, fitted.level) <= budget
    return fitted


def test_short_prompt_is_never_cut() -> None:
    p = Prompt("a red bird", "blurry")
    fitted = _fit(p, _size(p, 0))
    assert fitted.prompt == p and fitted.cuts == () and fitted.level == 0 and fitted.fits


def test_cuts_come_in_the_documented_order_each_only_when_needed() -> None:
    text = PROMPT_SEPARATOR.join([MAIN, MAIN.upper() + " extra", OTHER])  # the second line repeats the first
    prompt = Prompt(text, PROMPT_SEPARATOR.join([NEG, NEG]))
    seen: list[list[str]] = []
    for budget in range(_size(prompt, 0), -1, -13):
        fitted = _fit(prompt, budget)
        steps = [c.step for c in fitted.cuts]
        assert steps == [s for s in STEPS if s in steps]  # in order, each at most once
        assert not seen or steps[: len(seen[-1])] == seen[-1]  # a smaller budget only adds later steps
        seen.append(steps)
        assert fitted.fits
    assert seen[-1] == list(STEPS)
    assert {tuple(s) for s in seen} >= {tuple(STEPS[:k]) for k in range(len(STEPS) + 1)}  # every stage occurs


def test_each_cut_is_what_the_documentation_says() -> None:
    text = PROMPT_SEPARATOR.join([MAIN, MAIN.upper() + " extra", OTHER])
    prompt = Prompt(text, PROMPT_SEPARATOR.join([NEG, NEG]))
    # 1. repeats only, the negative's first
    fitted = _fit(prompt, _size(prompt, 0) - 1)
    assert fitted.prompt == Prompt(text, NEG)
    assert fitted.cuts == (PromptCut("duplicate_prompts", len(NEG) + 1, prompts=1),)
    fitted = _fit(prompt, _size(Prompt(text, NEG), 0) - 1)
    assert fitted.prompt == Prompt(MAIN + PROMPT_SEPARATOR + OTHER, NEG) and fitted.cuts[0].prompts == 2
    # 2, 3. the decoder's window: the negative's, then the text's, 75 tokens kept each
    fitted = _fit(prompt, _size(Prompt(MAIN + PROMPT_SEPARATOR + OTHER, NEG), 0) - 1)
    assert fitted.prompt.negative == " ".join(_words(WINDOW_TOKENS, start=300))
    assert fitted.cuts[-1] == PromptCut("truncate_negative", len(NEG) - len(fitted.prompt.negative), tokens=75)
    window = " ".join(_words(WINDOW_TOKENS))
    fitted = _fit(prompt, _size(Prompt(MAIN + PROMPT_SEPARATOR + OTHER, fitted.prompt.negative), 0) - 1)
    assert fitted.prompt.text == window and fitted.cuts[-1].tokens == WINDOW_TOKENS
    # 4. the negative prompt
    fitted = _fit(prompt, _size(Prompt(window, fitted.prompt.negative), 0) - 1)
    assert fitted.prompt == Prompt(window) and fitted.cuts[-1].step == "negative"
    # 5. below the window: the longest prefix that fits beside the minimum layers
    budget = _size(Prompt(window), 0) - 10
    fitted = _fit(prompt, budget)
    assert fitted.level == 0 and window.startswith(fitted.prompt.text)
    kept = count_tokens(fitted.prompt.text)
    assert _size(fitted.prompt, 0) <= budget < _size(Prompt(token_prefix(window, kept + 1)), 0)
    assert fitted.cuts[-1] == PromptCut("truncate_below_window", len(window) - len(fitted.prompt.text), tokens=kept)


def test_tiny_budgets_floor_then_layers_give_way_then_the_budget_wins() -> None:
    prompt = Prompt(MAIN)
    floor = token_prefix(MAIN, FLOOR_TOKENS)
    # the floor fits beside the minimum layers: they stay
    fitted = _fit(prompt, _size(Prompt(floor), 0))
    assert (fitted.prompt.text, fitted.level) == (floor, 0)
    # one byte less: the structure gives way and the text takes the room up to the longest prefix that fits
    fitted = _fit(prompt, _size(Prompt(floor), 0) - 1)
    assert fitted.level == 1 and count_tokens(fitted.prompt.text) > FLOOR_TOKENS
    # no room for the floor beside any layer: the budget wins, down to nothing
    fitted = _fit(prompt, len(floor) - 1)
    assert fitted.level == 2 and count_tokens(fitted.prompt.text) < FLOOR_TOKENS and fitted.fits
    fitted = _fit(prompt, 0)
    assert fitted.prompt == Prompt("") and fitted.fits and fitted.cuts[-1].tokens == 0


def test_a_budget_no_stream_can_meet_gives_the_smallest_stream_and_fits_false() -> None:
    fitted = fit_prompt(Prompt(MAIN, NEG), 5, lambda p, level: 10 + _size(p, level), levels=len(FLOORS))
    assert not fitted.fits and fitted.prompt == Prompt("") and fitted.level == 2
    assert [c.step for c in fitted.cuts] == ["truncate_negative", "truncate", "negative", "truncate_below_window"]


# --- the encoder: real coder, real images --------------------------------------------------------------------

LIGHTHOUSE = (
    "masterpiece, best quality, ultra-detailed, 8k uhd, photorealistic, a lone lighthouse keeper standing on a "
    "rocky cliff above a stormy sea at dusk, dramatic clouds, crashing waves, sea spray, warm lantern light "
    "glowing from the lighthouse windows, cinematic lighting, volumetric fog, golden hour rim light, intricate "
    "details, sharp focus, depth of field, wide angle lens, 35mm, film grain, weathered oilskin coat, "
    "wind-swept grey beard, holding a brass telescope, seagulls circling overhead, moody atmosphere, teal and "
    "orange color grading, by greg rutkowski and alphonse mucha, trending on artstation, award winning photograph"
)
LIGHTHOUSE_AREA = (  # the same scene again for an area-conditioning pass, re-weighted: a repeat
    "(masterpiece:1.2), (best quality:1.2), ultra-detailed, photorealistic, a lone lighthouse keeper standing "
    "on a rocky cliff above a stormy sea at dusk, dramatic clouds, crashing waves, sea spray, warm lantern "
    "light glowing from the lighthouse windows, cinematic lighting, volumetric fog, intricate details, sharp "
    "focus, weathered oilskin coat, wind-swept grey beard, holding a brass telescope, seagulls circling "
    "overhead, moody atmosphere, (teal and orange color grading:1.1), trending on artstation"
)
STYLE = (
    "oil painting style, thick impasto brush strokes, visible canvas texture, romanticism, turner inspired "
    "seascape, luminous sky, swirling storm clouds, muted palette with bursts of amber and cobalt, dramatic "
    "chiaroscuro, museum quality, classical composition, rule of thirds, glazed umber underpainting, "
    "scumbled highlights on the wave crests, palette knife foam, craquelure varnish, gilt baroque frame, "
    "hudson river school meets ivan aivazovsky, 19th century maritime archive, salt-stained logbook pages "
    "pinned at the corners, copper engraving cross-hatching in the shadows, sepia ink annotations, compass "
    "rose inset, hand-lettered cartouche reading 'Kettle Rock Light 1873', foxing spots, deckled paper edges, "
    "marginalia of tide tables (HW 04:17, LW 10:32), barometer sketch at 28.9 inHg, Beaufort 9 gale noted in "
    "red crayon, pressed sea-lavender between pages, a keeper's thumbprint in lamp soot, verdigris on the "
    "brass fittings, Fresnel lens prisms catching a last green flash, kelp-draped rocks, puffins on a ledge"
)
NEGATIVE = (
    "(worst quality, low quality:1.4), lowres, bad anatomy, bad hands, text, error, missing fingers, extra "
    "digit, fewer digits, cropped, jpeg artifacts, signature, watermark, username, blurry, deformed, "
    "disfigured, mutated, extra limbs, ugly, duplicate, morbid, mutilated, out of frame, poorly drawn face, "
    "poorly drawn hands, cartoon, 3d render, anime, oversaturated, overexposed, underexposed, grainy, noisy, "
    "tiling, bad proportions, cloned face, gross proportions, malformed limbs, long neck, extra arms, extra "
    "legs, fused fingers, too many fingers, bad composition, amateur, distorted horizon, tilted"
)
COMFY_MULTI: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": LIGHTHOUSE, "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": LIGHTHOUSE_AREA, "clip": ["4", 1]}},
    "8": {"class_type": "ConditioningSetArea",
          "inputs": {"conditioning": ["7", 0], "width": 512, "height": 256, "x": 0, "y": 256, "strength": 1.0}},
    "9": {"class_type": "CLIPTextEncode", "inputs": {"text": STYLE, "clip": ["4", 1]}},
    "10": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["8", 0]}},
    "11": {"class_type": "ConditioningConcat",
           "inputs": {"conditioning_to": ["10", 0], "conditioning_from": ["9", 0]}},
    "12": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "3": {"class_type": "KSampler",
          "inputs": {"seed": 4242, "steps": 30, "cfg": 7.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
                     "denoise": 1.0, "model": ["4", 0], "positive": ["11", 0], "negative": ["12", 0],
                     "latent_image": ["5", 0]}},
}  # fmt: skip
"""A ComfyUI graph with several long prompts (main, a re-weighted repeat for an area pass, a style prompt
concatenated after them) and a long negative: its prompt alone codes to a ~820-byte stream, over the budget."""


def _rgb512() -> np.ndarray:
    """A shared AIGI image at 512x512 (the paper's evaluation size), or a synthetic scene without the data."""
    import cv2

    if not (SHARED / "aigi" / "manifest.csv").exists():
        return scene()
    rgb = load_image(SHARED / "aigi" / aigi_manifest()[45]["file"]).rgb
    return cv2.resize(rgb, (512, 512), interpolation=cv2.INTER_AREA)


def _assert_layers(res: Any) -> None:
    assert res.image.layer("structure") is not None and res.image.layer("texture") is not None
    assert res.rung is not None and res.texture_quality is not None


def test_comfyui_multi_prompt_file_fits_655_bytes_with_structure_and_texture(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(COMFY_MULTI))
    path = tmp_path / "comfy.png"
    Image.fromarray(_rgb512()).save(path, pnginfo=info)
    loaded = load_image(path)
    prompt, gen = semantic_layer(loaded)
    assert gen is not None and prompt.text == PROMPT_SEPARATOR.join([LIGHTHOUSE, LIGHTHOUSE_AREA, STYLE])
    header = make_header(512, 512, gen.seed, gen.hints())  # as the CLI does: the hints travel too
    alone = EncodedImage(header=header, layers=[compress_prompt(prompt)], stream_id=0, image_id=0)
    uncut = len(framing.images_to_container([alone]))
    assert uncut > 800, uncut  # "never cut" overflowed with no other layer

    res = encode_image(loaded.rgb, prompt, header=header)
    assert res.budget == 655 and res.fits and res.total_bytes <= 655
    _assert_layers(res)
    sent = layerset_from_image(framing.container_to_images(res.data)[0]).prompt
    assert sent == res.prompt_sent and sent is not None
    assert [c.as_dict() for c in res.prompt_cuts] == [
        {"step": "duplicate_prompts", "chars_removed": len(LIGHTHOUSE_AREA) + 1, "prompts_removed": 1},
        {"step": "truncate_negative", "chars_removed": len(NEGATIVE) - len(sent.negative), "tokens_kept": 75},
        {"step": "truncate", "chars_removed": len(LIGHTHOUSE) + len(STYLE) + 1 - len(sent.text), "tokens_kept": 75},
    ]
    assert LIGHTHOUSE.startswith(sent.text) and NEGATIVE.startswith(sent.negative)  # the main prompt's start
    assert count_tokens(sent.text) >= WINDOW_TOKENS and count_tokens(sent.negative) >= WINDOW_TOKENS
    assert not res.negative_dropped and res.prompt_chars == len(prompt.text) + len(prompt.negative)
    assert res.prompt_chars_sent == len(sent.text) + len(sent.negative)
    assert res.warnings == []  # the decoder reads all it read before: a routine cut, in prompt_cuts only


VERY_LONG = ", ".join(f"{a} {b}" for a, b in itertools.product(_words(30), _words(30, start=40)))[:6000]


@pytest.mark.parametrize("budget", [655, 400, 250])
def test_very_long_prompt_fits_every_budget_with_the_minimum_layers(budget: int) -> None:
    res = encode_image(busy(seed=3), Prompt(VERY_LONG, NEGATIVE), options=EncodeOptions(max_bytes=budget))
    assert res.fits and res.total_bytes <= budget
    _assert_layers(res)
    steps = [c.step for c in res.prompt_cuts]
    assert steps == [s for s in STEPS if s in steps] and "truncate" in steps
    sent = res.prompt_sent
    assert sent is not None and VERY_LONG.startswith(sent.text)
    if "truncate_below_window" not in steps:
        assert count_tokens(sent.text) >= WINDOW_TOKENS


def test_shared_images_with_a_very_long_prompt_fit_0_02_bpp() -> None:
    import cv2

    rows = aigi_manifest()
    folder = shared_data() / "aigi"
    for row in rows[::8]:
        rgb = cv2.resize(load_image(folder / row["file"]).rgb, (512, 512), interpolation=cv2.INTER_AREA)
        res = encode_image(rgb, Prompt(row["prompt"] + ", " + VERY_LONG, NEGATIVE))
        assert res.fits and res.total_bytes <= 655, row["file"]
        _assert_layers(res)
        assert res.prompt_sent is not None and res.prompt_sent.text.startswith(row["prompt"])


@pytest.mark.parametrize("budget", [163, 120, 100, 60])
def test_tiny_budgets_cut_the_prompt_below_the_window(budget: int) -> None:
    res = encode_image(scene(), Prompt(VERY_LONG), options=EncodeOptions(max_bytes=budget))
    assert res.fits and res.total_bytes <= budget
    assert [c.step for c in res.prompt_cuts] == ["truncate", "truncate_below_window"]
    sent = res.prompt_sent
    assert sent is not None and VERY_LONG.startswith(sent.text)
    assert res.prompt_cuts[-1].tokens == count_tokens(sent.text) < WINDOW_TOKENS
    assert "below what Stable Diffusion 1.5 reads" in res.warnings[0]  # the decoder loses words: warned
    if res.image.layer("structure") is None:  # the minimum layers gave way to the floor's tokens, then the budget
        assert count_tokens(sent.text) >= FLOOR_TOKENS or [x.kind.family for x in res.image.layers] == ["semantic"]


def test_impossible_budget_sends_the_smallest_stream_with_fits_false() -> None:
    res = encode_image(scene(64, 64), Prompt("a red house", "blurry"))  # 0.02 bpp at 64x64: 10 bytes
    assert res.budget == 10 and not res.fits and res.total_bytes > 10
    assert [layer.kind.family for layer in res.image.layers] == ["semantic"]
    assert res.prompt_sent == Prompt("") and res.prompt_chars_sent == 0
    assert any("cannot hold even the image header" in w for w in res.warnings)
    at_least = encode_image(scene(64, 64), Prompt("a red house"), options=EncodeOptions(max_bytes=res.total_bytes))
    assert at_least.fits and at_least.total_bytes <= res.total_bytes
