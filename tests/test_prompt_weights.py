"""A1111 prompt syntax for the SD decoder: the attention parser, extra-network tags, weighted long-prompt CLIP
embeddings (with the tiny tokenizer/text encoder of tests.tiny_models), and one tiny pipeline run on them."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from layercast.receiver.prompt_weights import (
    BREAK,
    MAX_WEIGHT,
    apply_token_weights,
    encode_prompt,
    is_break,
    parse_prompt_attention,
    prompt_chunks,
    strip_extra_networks,
)

R = 1.1  # one level of ( )

# -- parser ----------------------------------------------------------------------------------------------


def approx_segments(segments: list[tuple[str, float]]) -> list[tuple[str, Any]]:
    return [(s, w if math.isinf(w) else pytest.approx(w, rel=1e-12)) for s, w in segments]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("(word)", [("word", R)]),
        ("((word))", [("word", R * R)]),
        ("(((word)))", [("word", R**3)]),
        ("[word]", [("word", 1 / R)]),
        ("[[word]]", [("word", 1 / R / R)]),
        ("(word:1.5)", [("word", 1.5)]),
        ("( word : 0.25 )", [(" word ", 0.25)]),
        ("(word:-1)", [("word", -1.0)]),
        ("(word:.5)", [("word", 0.5)]),
        ("((word:2))", [("word", 2 * R)]),
        ("[(word:2)]", [("word", 2 / R)]),
        ("(a (b) c)", [("a ", R), ("b", R * R), (" c", R)]),
        ("a (b:1.5) [c]", [("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", 1 / R)]),
        ("(a)(b)", [("ab", R)]),  # equal neighbours merge
        ("([a:1.5)]", [("a", 1.5 / R)]),  # ( and [ are separate stacks: ":1.5)" closes the "("
        # unbalanced
        ("(a", [("a", R)]),
        ("[a", [("a", 1 / R)]),
        ("a (b", [("a ", 1.0), ("b", R)]),
        ("a)b]c", [("a)b]c", 1.0)]),
        ("(a]", [("a]", R)]),
        ("a:1.2)", [("a:1.2)", 1.0)]),
        # escapes
        (r"\(a\)", [("(a)", 1.0)]),
        (r"\[a\]", [("[a]", 1.0)]),
        (r"(\(a\):1.3)", [("(a)", 1.3)]),
        ("a\\\\(b)", [("a\\", 1.0), ("b", R)]),
        ("a\\b", [("a\\b", 1.0)]),
        ("a\\", [("a\\", 1.0)]),
        # weights that are not numbers: literal text, the bracket still counts
        ("(a:abc)", [("a:abc", R)]),
        ("(a:1.2.3)", [("a:1.2.3", R)]),
        ("(a:.)", [("a:.", R)]),
        ("(a:1e5)", [("a:1e5", R)]),
        ("(a:)", [("a:", R)]),
        ("(a:99999)", [("a", MAX_WEIGHT)]),
        ("(a:" + "9" * 400 + ")", [("a:" + "9" * 400, R)]),  # float() says inf: not a weight
        # BREAK
        ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
        ("a\nBREAK\nb", [("a", 1.0), BREAK, ("b", 1.0)]),
        ("BREAK", [BREAK]),
        ("a, BREAK, b", [("a,", 1.0), BREAK, (", b", 1.0)]),
        ("(a BREAK b)", [("a", R), BREAK, ("b", R)]),
        ("aBREAK b", [("aBREAK b", 1.0)]),
        ("a break b", [("a break b", 1.0)]),
        ("a BREAKING b", [("a BREAKING b", 1.0)]),
        # nothing
        ("", [("", 1.0)]),
        ("()", [("", 1.0)]),
        ("[]", [("", 1.0)]),
    ],
)
def test_parse_prompt_attention(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_attention(text) == approx_segments(expected)


def test_parser_is_linear_on_hostile_nesting() -> None:
    """Weights are products along the bracket trees, not rescans: deep nesting of an 8 KiB prompt is cheap."""
    text = "(" * 2000 + "a[b]" * 1000 + ")" * 2000
    start = time.perf_counter()
    segments = parse_prompt_attention(text)
    assert time.perf_counter() - start < 1.0  # ~0.04 s; rescanning the open groups at each ")" took 6 s
    assert segments[:2] == [("a", MAX_WEIGHT), ("b", pytest.approx(MAX_WEIGHT / R))]
    assert parse_prompt_attention("[" * 8000 + "a")[0][1] >= 0.0  # 1.1**-8000 underflows to 0, no error


def test_break_marker_is_recognised() -> None:
    assert [is_break(s) for s in parse_prompt_attention("a BREAK (b:-1)")] == [False, True, False]


# A generated prompt with, for every character it stands for, the character and its expected weight;
# None stands for a BREAK. Plain text has no whitespace (BREAK eats the whitespace next to it).
Expected = list[tuple[str | None, float]]
_plain = st.text(alphabet="abxyz,.!-é", min_size=1, max_size=5).map(lambda s: (s, [(c, 1.0) for c in s]))
_escaped = st.sampled_from("()[]\\").map(lambda c: ("\\" + c, [(c, 1.0)]))
_break = st.just((" BREAK ", [(None, 1.0)]))
_weights = st.sampled_from(["0", "0.5", "1.5", "2", "-1", ".25", "3.", "1.05"])


def _concat(parts: list[tuple[str, Expected]]) -> tuple[str, Expected]:
    return "".join(p for p, _ in parts), [e for _, exp in parts for e in exp]


def _times(exp: Expected, f: float) -> Expected:
    return [(c, w if c is None else w * f) for c, w in exp]


def _groups(children: st.SearchStrategy[tuple[str, Expected]]) -> st.SearchStrategy[tuple[str, Expected]]:
    seq = st.lists(children, min_size=1, max_size=4).map(_concat)
    return st.one_of(
        seq,
        seq.map(lambda p: (f"({p[0]})", _times(p[1], R))),
        seq.map(lambda p: (f"[{p[0]}]", _times(p[1], 1 / R))),
        st.tuples(seq, _weights).map(lambda t: (f"({t[0][0]}:{t[1]})", _times(t[0][1], float(t[1])))),
    )


_prompts = st.recursive(st.one_of(_plain, _escaped, _break), _groups, max_leaves=24)


@settings(max_examples=300, deadline=None)
@given(_prompts)
def test_parser_against_generated_prompts(case: tuple[str, Expected]) -> None:
    """Well-formed prompts built with known weights: every character comes out with its weight."""
    text, expected = case
    got: Expected = []
    for s, w in parse_prompt_attention(text):
        got += [(None, 1.0)] if math.isinf(w) else [(c, w) for c in s]
    assert [c for c, _ in got] == [c for c, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-9, abs=1e-12)


def _is_subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(c in it for c in small)


_syntax_soup = st.lists(
    st.sampled_from([*"ab ()[]\\:,.-+1", "0.5", ":1.5)", "BREAK", " BREAK ", "\n", "é", "<", ">"]), max_size=40
).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_syntax_soup, st.text(max_size=60)))
@example("(((a:1.5)]]]\\")
@example("\\(BREAK\\)")
def test_parser_never_raises_and_only_removes_syntax(text: str) -> None:
    segments = parse_prompt_attention(text)
    assert segments
    words = [s for s, w in segments if not math.isinf(w)]
    assert all(math.isfinite(w) and abs(w) <= MAX_WEIGHT for s, w in segments if not is_break((s, w)))
    assert all(s == "BREAK" for s, w in segments if is_break((s, w)))
    out = "".join(words)
    # Only brackets, weights, escapes' backslashes and BREAK (with the whitespace around it) are removed ...
    assert _is_subsequence(out, text)
    # ... so every letter except those of the BREAK keywords comes through, in order.
    assert [c for c in out if c.isalpha()] == [c for c in re.sub(r"\bBREAK\b", "", text) if c.isalpha()]


# -- extra networks -----------------------------------------------------------------------------------------


def test_strip_extra_networks() -> None:
    text, notes = strip_extra_networks("a cat, <lora:add_detail:0.5> <hypernet:anime> (b) <lyco:ly:0.3:0.2> <3 <x:y>")
    assert text == "a cat,   (b)  <3 <x:y>"
    assert notes == [
        "LoRA 'add_detail' (0.5) not applied: LoRA weights are not loaded by this decoder",
        "hypernetwork 'anime' (1.0) not applied: hypernetworks are not loaded by this decoder",
        "LyCORIS 'ly' (0.3) not applied: LyCORIS weights are not loaded by this decoder",
    ]
    assert strip_extra_networks("no tags (here:1.2)") == ("no tags (here:1.2)", [])


# -- embeddings -----------------------------------------------------------------------------------------------

WIN = 77
LONG = "cat dog red " * 50  # 150 tokens with the tiny tokenizer ("cat", "dog", "red" are one token each)


@pytest.fixture(scope="module")
def torch() -> Iterator[Any]:
    """torch with one thread (tiny models are overhead-bound)."""
    pytest.importorskip("diffusers")
    mod = pytest.importorskip("torch")
    threads = mod.get_num_threads()
    mod.set_num_threads(1)
    yield mod
    mod.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe(torch: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny StableDiffusionPipeline (random weights, in memory), the reference for diffusers' encode_prompt."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from tests import tiny_models

    tok_dir = tiny_models.write_clip_tokenizer(Path(tmp_path_factory.mktemp("tok")))
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    p: Any = StableDiffusionPipeline(
        vae=tiny_models.tiny_vae(),
        text_encoder=tiny_models.tiny_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        unet=tiny_models.tiny_unet(),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    p.set_progress_bar_config(disable=True)
    # A fresh LayerNorm (weight 1, bias 0) makes every token's output mean exactly 0, so the chunk mean that
    # weighting keeps would be rounding noise; a trained CLIP's final norm has a bias. Give the tiny one one.
    with torch.no_grad():
        p.text_encoder.final_layer_norm.bias.copy_(torch.linspace(-0.5, 1.0, 32))
    return p


def ours(pipe: Any, prompts: list[str], negatives: list[str] | None = None, **kw: Any) -> Any:
    return encode_prompt(pipe.tokenizer, pipe.text_encoder, prompts, negatives, "cpu", **kw)


def reference(pipe: Any, prompts: list[str], negatives: list[str] | None = None, **kw: Any) -> tuple[Any, Any]:
    """diffusers' own embeddings (77 tokens, truncated)."""
    pos, neg = pipe.encode_prompt(prompts, "cpu", 1, True, negatives, **kw)
    return pos, neg


def chunk(embeds: Any, k: int) -> Any:
    return embeds[:, k * WIN : (k + 1) * WIN]


def close(a: Any, b: Any) -> bool:
    """Equal up to float rounding (CPU kernels round differently for different batch sizes)."""
    import torch

    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_plain_prompts_match_diffusers_exactly(torch: Any, pipe: Any) -> None:
    prompts, negatives = ["red cat", "a dog, by the sea at dusk"], ["", "blurry, low quality"]
    got = ours(pipe, prompts, negatives)
    pos, neg = reference(pipe, prompts, negatives)
    assert got.prompt_embeds.shape == (2, WIN, 32) and got.chunks == 1 and got.notes == ()
    assert torch.equal(got.prompt_embeds, pos)
    assert torch.equal(got.negative_prompt_embeds, neg)
    # no negatives: diffusers' "" negative
    got = ours(pipe, ["red cat"])
    pos, neg = reference(pipe, ["red cat"])
    assert torch.equal(got.prompt_embeds, pos) and torch.equal(got.negative_prompt_embeds, neg)


def test_clip_skip_takes_an_earlier_layer(torch: Any, pipe: Any) -> None:
    """diffusers' clip_skip recipe (its own code reaches the norm through .text_model, gone in transformers 5)."""
    got = ours(pipe, ["red cat"], ["dog"], clip_skip=1)
    enc = pipe.text_encoder
    for text, embeds in (("red cat", got.prompt_embeds), ("dog", got.negative_prompt_embeds)):
        ids = pipe.tokenizer([text], padding="max_length", max_length=WIN, return_tensors="pt").input_ids
        with torch.no_grad():
            expected = enc.final_layer_norm(enc(ids, output_hidden_states=True).hidden_states[-2])
        assert torch.equal(embeds, expected)
    assert not close(got.prompt_embeds, ours(pipe, ["red cat"]).prompt_embeds)


def test_attention_mask_encoders_match_diffusers(torch: Any, pipe: Any) -> None:
    pipe.text_encoder.config.use_attention_mask = True
    try:
        got = ours(pipe, ["red cat"], ["dog"])
        pos, neg = reference(pipe, ["red cat"], ["dog"])
    finally:
        del pipe.text_encoder.config.use_attention_mask
    assert torch.equal(got.prompt_embeds, pos) and torch.equal(got.negative_prompt_embeds, neg)


def per_position_scale(weighted: Any, plain: Any) -> Any:
    """Least-squares factor s[t] with weighted[t] ~ s[t] * plain[t], for each token position t."""
    return (weighted * plain).sum(-1) / (plain * plain).sum(-1)


def test_weight_reaches_exactly_its_tokens(torch: Any, pipe: Any) -> None:
    chunks, _ = prompt_chunks(pipe.tokenizer, "(red:1.5) bird")
    assert chunks[0].weights[:7] == [1.0, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0]  # BOS, red, b i r d, EOS
    plain = ours(pipe, ["red bird"]).prompt_embeds[0]
    weighted = ours(pipe, ["(red:1.5) bird"]).prompt_embeds[0]
    assert torch.equal(torch.tensor(chunks[0].ids), torch.tensor(prompt_chunks(pipe.tokenizer, "red bird")[0][0].ids))
    scale = per_position_scale(weighted, plain)
    rescale = scale[0]  # the mean-keeping factor, the same for every position
    assert scale[1] / rescale == pytest.approx(1.5, rel=1e-5)  # "red" only
    others = torch.cat([scale[:1], scale[2:]])
    assert torch.allclose(others, rescale.expand_as(others), rtol=1e-5)
    assert rescale != pytest.approx(1.0, abs=1e-6)  # the rescale happened ...
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)  # ... and kept the mean
    # the negative is untouched
    negatives = [ours(pipe, [text]).negative_prompt_embeds for text in ("(red:1.5) bird", "red bird")]
    assert torch.equal(*negatives)


@pytest.mark.parametrize(("text", "weight"), [("[red] bird", 1 / R), ("((red)) bird", R * R), ("(red:0.5) bird", 0.5)])
def test_bracket_multipliers_reach_the_embeddings(torch: Any, pipe: Any, text: str, weight: float) -> None:
    assert prompt_chunks(pipe.tokenizer, text)[0][0].weights[1] == pytest.approx(weight)
    scale = per_position_scale(ours(pipe, [text]).prompt_embeds[0], ours(pipe, ["red bird"]).prompt_embeds[0])
    assert scale[1] / scale[0] == pytest.approx(weight, rel=1e-5)


def test_apply_token_weights_edge_cases(torch: Any) -> None:
    hidden = torch.randn(3, WIN, 8, dtype=torch.float16)
    ones = torch.ones(3, WIN)
    assert torch.equal(apply_token_weights(hidden, ones), hidden)
    out = apply_token_weights(hidden, torch.zeros(3, WIN))  # mean 0 after weighting: no division by zero
    assert out.dtype == torch.float16 and torch.isfinite(out).all() and not out.any()


def test_long_prompt_is_chunked_and_its_tail_reaches_the_encoder(torch: Any, pipe: Any) -> None:
    got = ours(pipe, [LONG])
    assert got.prompt_embeds.shape == (1, 2 * WIN, 32) and got.chunks == 2
    assert got.negative_prompt_embeds.shape == got.prompt_embeds.shape
    assert ours(pipe, [LONG + "cat"]).prompt_embeds.shape == (1, 3 * WIN, 32)
    # chunk 1 is what diffusers sees (it cuts the rest)
    truncated, _ = reference(pipe, [LONG])
    assert close(chunk(got.prompt_embeds, 0), truncated)
    # the last word changes chunk 2, not chunk 1
    changed = ours(pipe, [LONG.rstrip().rsplit(" ", 1)[0] + " dog"]).prompt_embeds
    assert torch.equal(chunk(changed, 0), chunk(got.prompt_embeds, 0))
    assert not torch.allclose(chunk(changed, 1), chunk(got.prompt_embeds, 1))
    # chunk 2 is the tail encoded on its own, BOS and EOS included
    tail, _ = reference(pipe, ["cat dog red " * 25])
    assert close(chunk(got.prompt_embeds, 1), tail)


def test_chunks_break_at_a_late_comma(torch: Any, pipe: Any) -> None:
    chunks, _ = prompt_chunks(pipe.tokenizer, "cat " * 70 + ", " + "dog " * 10)
    assert [c.length - 2 for c in chunks] == [71, 10]  # 70 cats and the comma | 10 dogs
    assert all(len(c.ids) == len(c.weights) == WIN for c in chunks)
    chunks, _ = prompt_chunks(pipe.tokenizer, "cat " * 50 + ", " + "dog " * 40)  # comma too early: cut at 75
    assert [c.length - 2 for c in chunks] == [75, 16]


@pytest.mark.parametrize(
    ("text", "lengths"),
    [
        ("cat BREAK dog", [1, 1]),
        ("cat BREAK", [1]),
        ("BREAK", [0]),
        ("BREAK cat", [0, 1]),
        ("cat BREAK BREAK dog", [1, 0, 1]),
        ("", [0]),
        ("cat " * 80 + "BREAK dog", [75, 5, 1]),
    ],
)
def test_break_starts_a_new_chunk(torch: Any, pipe: Any, text: str, lengths: list[int]) -> None:
    assert [c.length - 2 for c in prompt_chunks(pipe.tokenizer, text)[0]] == lengths


def test_break_chunks_are_encoded_separately(torch: Any, pipe: Any) -> None:
    got = ours(pipe, ["red cat BREAK dog"]).prompt_embeds
    assert got.shape == (1, 2 * WIN, 32)
    assert close(chunk(got, 0), reference(pipe, ["red cat"])[0])
    assert close(chunk(got, 1), reference(pipe, ["dog"])[0])


def test_extra_network_tags_are_stripped_with_a_note(torch: Any, pipe: Any) -> None:
    got = ours(pipe, ["<lora:add_detail:0.5>red cat"], ["<lora:add_detail:0.5>blurry"])
    plain = ours(pipe, ["red cat"], ["blurry"])
    assert torch.equal(got.prompt_embeds, plain.prompt_embeds)
    assert torch.equal(got.negative_prompt_embeds, plain.negative_prompt_embeds)
    assert got.notes == ("LoRA 'add_detail' (0.5) not applied: LoRA weights are not loaded by this decoder",)


def test_negatives_and_prompts_are_padded_to_the_same_chunks(torch: Any, pipe: Any) -> None:
    empty, _ = reference(pipe, [""])
    got = ours(pipe, [LONG], ["blurry"])
    assert got.negative_prompt_embeds.shape == got.prompt_embeds.shape == (1, 2 * WIN, 32)
    assert close(chunk(got.negative_prompt_embeds, 0), reference(pipe, ["blurry"])[0])
    assert close(chunk(got.negative_prompt_embeds, 1), empty)
    got = ours(pipe, ["red cat"], [LONG + LONG])  # a long negative pads the prompt
    assert got.prompt_embeds.shape == got.negative_prompt_embeds.shape == (1, 4 * WIN, 32)
    assert close(chunk(got.prompt_embeds, 0), reference(pipe, ["red cat"])[0])
    assert all(close(chunk(got.prompt_embeds, k), empty) for k in (1, 2, 3))
    got = ours(pipe, ["red cat", LONG], ["", ""])  # and a batch pads to its longest
    assert got.prompt_embeds.shape == (2, 2 * WIN, 32)
    assert close(chunk(got.prompt_embeds[:1], 1), empty)


def test_max_chunks_cuts_with_a_note(torch: Any, pipe: Any) -> None:
    got = ours(pipe, [LONG * 3], max_chunks=2)
    assert got.prompt_embeds.shape == (1, 2 * WIN, 32)
    assert got.notes == ("prompt cut to its first 150 of 450 tokens (2 chunks of 75)",)


def test_bad_arguments_are_refused(pipe: Any) -> None:
    with pytest.raises(ValueError, match="2 prompts and 1 negative"):
        encode_prompt(pipe.tokenizer, pipe.text_encoder, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="0 prompts"):
        encode_prompt(pipe.tokenizer, pipe.text_encoder, [], [])
    with pytest.raises(ValueError, match="max_chunks"):
        prompt_chunks(pipe.tokenizer, "a", max_chunks=0)


def test_pipeline_runs_on_long_weighted_embeddings(torch: Any, pipe: Any) -> None:
    embeds = ours(pipe, ["(red:1.3) cat BREAK " + LONG, "[dog]"], ["blurry", ""])
    assert embeds.chunks == 3
    out = pipe(
        **embeds.pipeline_kwargs(),
        num_inference_steps=2,
        guidance_scale=5.0,
        height=64,
        width=64,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (1, 2)],
        output_type="np",
    ).images
    assert out.shape == (2, 64, 64, 3)
    assert (out >= 0).all() and (out <= 1).all()
