"""A1111-style prompts for the SD decoder: attention weights, BREAK, prompts longer than 77 CLIP tokens.

Prompts from AUTOMATIC1111's stable-diffusion-webui (and the many tools that copy its syntax) carry markup
that plain CLIP would read as literal text, and they often run past CLIP's 77-token window:

- ``(word)`` multiplies the attention of ``word`` by 1.1, ``((word))`` by 1.21, ``[word]`` divides it by 1.1,
  ``(word:1.5)`` multiplies it by 1.5; groups nest and multiply; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are
  literal characters;
- ``BREAK`` (upper case, a whole word) ends the current 75-token chunk;
- ``<lora:name:0.8>``, ``<lyco:...>``, ``<hypernet:...>`` name extra networks this decoder does not load:
  they are removed, with a note.

The syntax and its semantics are AUTOMATIC1111's (documented in the stable-diffusion-webui wiki, "Features":
"Attention/emphasis", "BREAK" and "Infinite prompt length"); this is an independent implementation of that
documented behaviour. Deliberate differences: a weight that is not a number (``(a:1.2.3)``, ``(a:abc)``) is
read as literal text instead of failing; a BREAK inside brackets still breaks (it is never weighted); weights
are clamped to +-MAX_WEIGHT; a weighted chunk keeps its own mean (A1111 keeps the mean of the whole batch's
chunk, so prompts of one batch would change each other); prompts are cut at `max_chunks` chunks.

Encoding (:func:`encode_prompt`): the weighted text is tokenized segment by segment, split into chunks of 75
tokens (at a comma among a chunk's last 20 tokens when there is one, and at every BREAK), each chunk is framed
BOS + tokens + EOS + padding = 77 tokens and encoded by CLIP on its own; each chunk's hidden states are
multiplied by its token weights and rescaled to keep the chunk's mean, and the chunks are concatenated along
the sequence axis: (batch, 77 * n_chunks, hidden), which the UNet's cross-attention takes at any length.
A plain prompt of at most 75 tokens gives exactly the embeddings of diffusers' own ``encode_prompt``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import torch

ROUND_FACTOR: Final = 1.1
"""Attention multiplier of one level of round brackets ``( )``."""
SQUARE_FACTOR: Final = 1 / 1.1
"""Attention multiplier of one level of square brackets ``[ ]``."""
MAX_WEIGHT: Final = 1000.0
"""Weights are clamped to [-MAX_WEIGHT, MAX_WEIGHT] (keeps them finite; real prompts stay within +-10)."""
BREAK: Final[tuple[str, float]] = ("BREAK", math.inf)
"""The chunk separator in :func:`parse_prompt_attention`'s output (weights are always finite otherwise)."""
COMMA_BACKTRACK: Final = 20
"""A full chunk is cut after its last comma when that comma is among its last this-many tokens."""
MAX_CHUNKS: Final = 20
"""Default cap on chunks per prompt (1500 tokens): a hostile 8 KiB prompt must not blow up cross-attention."""

_ESCAPABLE = "()[]\\"
_WEIGHT = re.compile(r":\s*([+-]?[0-9.]+)\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_EXTRA_NETWORK = re.compile(r"<(lora|lyco|hypernet):([^>]*)>")
_NETWORK_NAMES = {
    "lora": ("LoRA", "LoRA weights are"),
    "lyco": ("LyCORIS", "LyCORIS weights are"),
    "hypernet": ("hypernetwork", "hypernetworks are"),
}


def is_break(segment: tuple[str, float]) -> bool:
    """Whether a segment of :func:`parse_prompt_attention` is the BREAK marker."""
    return math.isinf(segment[1])


def _weight(text: str) -> float | None:
    try:
        w = float(text)
    except ValueError:
        return None
    return w if math.isfinite(w) else None


def _clamp(weight: float) -> float:
    return max(-MAX_WEIGHT, min(MAX_WEIGHT, weight))


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split an A1111 prompt into (text, weight) segments; BREAK markers (:data:`BREAK`) between them.

    Never raises: unbalanced ``)`` / ``]`` and malformed weights are literal text, brackets left open at the
    end apply to the rest of the prompt. Adjacent segments of equal weight are merged; an empty prompt gives
    ``[("", 1.0)]``. Example: ``"a (b:1.5) [c]"`` -> ``[("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", 1/1.1)]``.
    """
    # Bracket groups form two trees (round and square brackets nest separately, as in A1111): a group's
    # parent is the group of its kind that was open when it opened. A piece of text is weighted by the product
    # of the factors of the groups open when it was read, i.e. of its innermost groups' ancestor chains, which
    # are only known at the end (")" vs ":1.5)"; an unclosed group counts as closed at the end).
    parents: list[int] = []  # -1: no enclosing group
    factors: list[float] = []
    rounds: list[int] = []  # open groups
    squares: list[int] = []
    pieces: list[tuple[str, int, int] | None] = []  # text, innermost round and square group; None: BREAK
    buf: list[str] = []

    def flush() -> None:
        if buf:
            for k, part in enumerate(_BREAK.split("".join(buf))):
                if k:
                    pieces.append(None)
                if part:
                    pieces.append((part, rounds[-1] if rounds else -1, squares[-1] if squares else -1))
            buf.clear()

    def open_group(stack: list[int], factor: float) -> None:
        flush()
        parents.append(stack[-1] if stack else -1)
        factors.append(factor)
        stack.append(len(factors) - 1)

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
            buf.append(text[i + 1])
            i += 2
            continue
        if c == ":" and rounds and (m := _WEIGHT.match(text, i)) and (w := _weight(m[1])) is not None:
            flush()
            factors[rounds.pop()] = w
            i = m.end()
            continue
        if c == "(":
            open_group(rounds, ROUND_FACTOR)
        elif c == "[":
            open_group(squares, SQUARE_FACTOR)
        elif c == ")" and rounds:
            flush()
            rounds.pop()
        elif c == "]" and squares:
            flush()
            squares.pop()
        else:
            buf.append(c)
        i += 1
    flush()

    total: list[float] = []  # product of a group's and its ancestors' factors (parents come first)
    for parent, factor in zip(parents, factors, strict=True):
        total.append(_clamp(factor * (total[parent] if parent >= 0 else 1.0)))

    def weight(group: int) -> float:
        return total[group] if group >= 0 else 1.0

    segments = [BREAK if p is None else (p[0], _clamp(weight(p[1]) * weight(p[2]))) for p in pieces]

    merged: list[tuple[str, float]] = []
    for seg in segments:
        if merged and merged[-1][1] == seg[1] and not is_break(seg):
            merged[-1] = (merged[-1][0] + seg[0], seg[1])
        else:
            merged.append(seg)
    return merged or [("", 1.0)]


def strip_extra_networks(text: str) -> tuple[str, list[str]]:
    """Remove ``<lora:...>``, ``<lyco:...>`` and ``<hypernet:...>`` tags; return the text and one note a tag.

    The text is otherwise left as it was (A1111 also just cuts the tag out before encoding the prompt).
    """
    notes: list[str] = []

    def note(m: re.Match[str]) -> str:
        kind, what = _NETWORK_NAMES[m[1]]
        params = m[2].split(":")
        multiplier = params[1].strip() if len(params) > 1 else "1.0"
        notes.append(f"{kind} '{params[0].strip()}' ({multiplier}) not applied: {what} not loaded by this decoder")
        return ""

    return _EXTRA_NETWORK.sub(note, text), notes


@dataclass(frozen=True)
class Chunk:
    """One CLIP window: BOS + up to 75 tokens + EOS, padded to the tokenizer's 77."""

    ids: list[int]
    weights: list[float]
    """Per-token attention weights (1.0 on BOS, EOS and padding)."""
    length: int
    """Tokens up to and including EOS (the attention mask of encoders that use one)."""


def _frame(tokenizer: Any, tokens: Sequence[tuple[int, float]]) -> Chunk:
    window = int(tokenizer.model_max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n = len(tokens) + 2
    ids = [tokenizer.bos_token_id, *(t for t, _ in tokens), tokenizer.eos_token_id, *[pad] * (window - n)]
    weights = [1.0, *(w for _, w in tokens), *[1.0] * (window - n + 1)]
    return Chunk(ids=ids, weights=weights, length=n)


def _split(tokens: list[tuple[int, float]], size: int, comma: int | None) -> list[list[tuple[int, float]]]:
    """Cut one BREAK-free run of tokens into chunks of at most `size` (at a late comma where there is one)."""
    chunks = []
    while len(tokens) > size:
        cut = size
        if comma is not None:
            late = [k for k in range(max(0, size - COMMA_BACKTRACK), size) if tokens[k][0] == comma]
            cut = late[-1] + 1 if late else size
        chunks.append(tokens[:cut])
        tokens = tokens[cut:]
    chunks.append(tokens)
    return chunks


def prompt_chunks(tokenizer: Any, text: str, *, max_chunks: int = MAX_CHUNKS) -> tuple[list[Chunk], list[str]]:
    """Tokenize an A1111 prompt into weighted 77-token chunks (at least one); return them and notes."""
    if max_chunks < 1:
        raise ValueError(f"max_chunks must be >= 1, not {max_chunks}")
    text, notes = strip_extra_networks(text)
    segments = parse_prompt_attention(text)
    texts = [s for s, w in segments if not math.isinf(w)]
    ids = iter(tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids if texts else [])
    runs: list[list[tuple[int, float]]] = [[]]  # token runs between BREAKs
    for seg in segments:
        if is_break(seg):
            runs.append([])
        else:
            runs[-1].extend((t, seg[1]) for t in next(ids))
    if len(runs) > 1 and not runs[-1]:
        runs.pop()  # a trailing BREAK opens no chunk
    size = int(tokenizer.model_max_length) - 2
    comma = tokenizer.get_vocab().get(",</w>")
    pieces = [chunk for run in runs for chunk in _split(run, size, comma)]
    if len(pieces) > max_chunks:
        kept = sum(len(p) for p in pieces[:max_chunks])
        notes.append(
            f"prompt cut to its first {kept} of {sum(len(p) for p in pieces)} tokens ({max_chunks} chunks of {size})"
        )
        pieces = pieces[:max_chunks]
    return [_frame(tokenizer, p) for p in pieces], notes


def apply_token_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weight CLIP hidden states per token the A1111 way: multiply, then rescale each chunk to its old mean.

    `hidden` (chunks, tokens, width), `weights` (chunks, tokens). Chunks whose weights are all 1 come back
    bit-identical; a rescale that would divide by zero is skipped. Computed in float32, returned in
    `hidden`'s dtype.
    """
    import torch

    z = hidden.float()
    w = weights.to(device=z.device, dtype=torch.float32)
    scaled = z * w[..., None]
    old = z.mean(dim=(1, 2), keepdim=True)
    new = scaled.mean(dim=(1, 2), keepdim=True)
    ratio = old / new
    ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
    weighted = (w != 1.0).any(dim=1)[:, None, None]
    return torch.where(weighted, scaled * ratio, z).to(hidden.dtype)


@dataclass(frozen=True)
class PromptEmbeds:
    """Embeddings for diffusers' Stable Diffusion pipelines, in place of `prompt` / `negative_prompt`."""

    prompt_embeds: torch.Tensor
    """(batch, 77 * chunks, hidden)."""
    negative_prompt_embeds: torch.Tensor
    """Same shape as `prompt_embeds` (diffusers requires it)."""
    chunks: int
    """CLIP windows (of 77 tokens) per prompt."""
    notes: tuple[str, ...] = ()
    """What was not honoured (extra-network tags, a prompt cut at `max_chunks`), each once."""

    def pipeline_kwargs(self) -> dict[str, Any]:
        """``pipe(**kwargs)`` arguments: prompt_embeds and negative_prompt_embeds."""
        return {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}


def _encode(text_encoder: Any, texts: list[list[Chunk]], device: Any, clip_skip: int | None) -> torch.Tensor:
    """Weighted embeddings (len(texts), 77 * chunks, hidden) of texts with as many chunks each.

    CLIP is run on all the chunks as one batch, the way diffusers' StableDiffusionPipeline.encode_prompt runs
    it on its 77-token windows (same layer choice, attention mask and final layer norm for clip_skip; diffusers
    0.42 reaches that norm through `text_encoder.text_model`, which transformers 5's CLIPTextModel lacks).
    """
    import torch

    flat = [c for chunks in texts for c in chunks]
    ids = torch.tensor([c.ids for c in flat], dtype=torch.long, device=device)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        lengths = torch.tensor([c.length for c in flat], device=device)
        mask = (torch.arange(ids.shape[1], device=device)[None] < lengths[:, None]).long()
    with torch.no_grad():
        if clip_skip is None:
            hidden = text_encoder(ids, attention_mask=mask)[0]
        else:
            out = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
            model = getattr(text_encoder, "text_model", text_encoder)  # transformers 5 has no .text_model
            hidden = model.final_layer_norm(out.hidden_states[-(clip_skip + 1)])
        hidden = apply_token_weights(hidden, torch.tensor([c.weights for c in flat]))
    hidden = hidden.to(dtype=text_encoder.dtype, device=device)
    return hidden.reshape(len(texts), -1, hidden.shape[-1])


def encode_prompt(
    tokenizer: Any,
    text_encoder: Any,
    prompts: Sequence[str],
    negatives: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    *,
    clip_skip: int | None = None,
    max_chunks: int = MAX_CHUNKS,
) -> PromptEmbeds:
    """Encode a batch of A1111 prompts (and negative prompts, "" when None) with weights and unlimited length.

    Every prompt and negative is padded with empty-prompt chunks to the batch's largest chunk count, so
    prompt_embeds and negative_prompt_embeds have the same shape. `clip_skip` has diffusers' meaning (1 = the
    penultimate layer, A1111's "Clip skip: 2") and, unlike diffusers, applies to the negatives too (as in
    A1111). Returned on `device` (default: the text encoder's) in the text encoder's dtype.
    """
    negatives = [""] * len(prompts) if negatives is None else list(negatives)
    if len(negatives) != len(prompts) or not prompts:
        raise ValueError(f"{len(prompts)} prompts and {len(negatives)} negative prompts (need as many, >= 1)")
    device = text_encoder.device if device is None else device
    notes: list[str] = []
    per_text: list[list[Chunk]] = []
    for text in [*prompts, *negatives]:
        chunks, text_notes = prompt_chunks(tokenizer, text, max_chunks=max_chunks)
        per_text.append(chunks)
        notes += text_notes
    n = max(len(c) for c in per_text)
    empty = _frame(tokenizer, [])
    padded = [chunks + [empty] * (n - len(chunks)) for chunks in per_text]
    b = len(prompts)
    # positives and negatives in two batches, as diffusers does (CPU kernels' rounding depends on batch size)
    return PromptEmbeds(
        _encode(text_encoder, padded[:b], device, clip_skip),
        _encode(text_encoder, padded[b:], device, clip_skip),
        n,
        tuple(dict.fromkeys(notes)),
    )
