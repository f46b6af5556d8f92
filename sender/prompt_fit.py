"""Fit the semantic layer into a byte budget: what is cut from a prompt, and in which order (pure, no I/O).

A stream never exceeds its byte budget. The prompt ranks above a *richer* structure or texture layer, but not
above their minimum (:func:`layercast.sender.ratecontrol.floors`: the poorest edge rung and the lowest colormap
quality). When the prompt and the minimum layers do not fit together, the prompt is reduced in this order,
each step taken only while the stream still does not fit (`STEPS`, the tags of :class:`PromptCut`):

1. ``duplicate_prompts``: repeated prompts of a multi-prompt graph. extract_prompt joins the several prompts
   of a graph one per line (PROMPT_SEPARATOR); a line whose words are mostly (REPEAT_SHARE) found in the lines
   above it is a repeat. The negative prompt's repeats go first, then the text's, the last line first, only
   as many as needed.
2. ``truncate_negative``: the negative prompt after the decoder's window, then
3. ``truncate``: the text after the decoder's window, each cut at a token boundary. Stable Diffusion 1.5's
   CLIP text encoder reads 77 tokens, BOS and EOS included: WINDOW_TOKENS = 75 content tokens of the prompt
   and as many of the negative prompt, nothing after them. The cut keeps at least those 75 (see
   `count_tokens`), so the decoder reads what it read before, and the bytes freed go to structure and texture.
   These cuts come before the negative prompt's: nothing the decoder reads is dropped while text it never
   reads is still carried.
4. ``negative``: the negative prompt (what is left of it).
5. ``truncate_below_window``, tiny budgets only (the budget wins over the decoder's window): the text is cut
   to the longest token prefix that fits with the minimum structure and texture, but not below FLOOR_TOKENS
   (a prompt's subject is in its first words). When even that does not fit, the minimum layers give way in
   rate control's order (structure first, then texture) and the text keeps the longest prefix of at least
   FLOOR_TOKENS that fits beside what is left; with no layer left, it is cut to what fits, down to nothing.

When even an empty prompt with no structure and no texture exceeds the budget (the image header alone is
larger: a tiny image at a low bpp), no stream can fit: the smallest one is built and `Fitted.fits` is False.

Token counting. No CLIP vocabulary ships with the project, so tokens are counted with CLIP's own pre-tokenizer
pattern, which BPE then splits further: every pre-token is at least one BPE token, so the count is a lower
bound on CLIP tokens and a cut after 75 counted tokens keeps at least 75 real ones. The text is first put
through a conservative version of CLIP's normalisation, one that can only merge pre-tokens, never split them.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from layercast.common.types import Prompt
from layercast.sender.extract_prompt import PROMPT_SEPARATOR

WINDOW_TOKENS = 75
"""Content tokens Stable Diffusion 1.5 reads: CLIP's 77-token context less BOS and EOS."""
FLOOR_TOKENS = 8
"""Tokens of the text kept before the minimum structure and texture give way (tiny budgets, step 5)."""
REPEAT_SHARE = 0.8
"""A prompt line whose distinct words (STOPWORDS and one-character words aside) are at least this share found
in the lines above it is a repeat: a re-weighted or lightly edited copy, not a prompt of its own that shares
the usual quality tags ("masterpiece, best quality, 1girl, red dress" / "..., blue dress, sitting" is not)."""
STOPWORDS = frozenset({
    "a", "an", "the", "of", "on", "in", "at", "by", "to", "for", "from", "with", "and", "or", "is", "are", "it",
    "its", "as", "into", "over", "under", "near", "this", "that",
})  # fmt: skip
"""Small words the repeat test leaves out (a share of them says nothing about two prompts being the same)."""
STEPS = ("duplicate_prompts", "truncate_negative", "truncate", "negative", "truncate_below_window")
"""PromptCut.step values, in the order the steps are taken."""


# --- token counting (a lower bound on CLIP BPE tokens) ----------------------------------------------------

# CLIP's pre-tokenizer pattern, from OpenAI CLIP's simple_tokenizer.py (openai/CLIP, MIT licence), also what
# Hugging Face's CLIPTokenizer splits with:
#   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+  (IGNORECASE)
# in Python's `re`: a letter run is [^\W\d_]+ (word characters less digits and "_"), a number \d, and the
# rest a run of non-space characters that are neither (including "_"). On text `_conservative` left, those
# classes are exactly \p{L}, \p{N} and the rest.
_PIECE = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE
)
_ANSI = re.compile(r"\x1b\[[\d;]*[A-Za-z]")  # terminal escapes: ftfy (CLIP's text fixer) removes them
_SPECIAL = re.compile(r"<\|startoftext\|>|<\|endoftext\|>", re.IGNORECASE)
_ASCII_SPACE = frozenset("\t\n\x0b\x0c\r ")


def _kept(c: str) -> bool:
    """Characters the count keeps: ASCII printables and whitespace, non-ASCII letters, digits and spaces."""
    if c < "\x80":
        return c in _ASCII_SPACE or " " <= c < "\x7f"
    return c.isalpha() or c.isdecimal() or c.isspace()


def _conservative(text: str) -> str:
    """CLIP's normalisation, erring towards fewer pre-tokens: HTML unescaped twice (CLIP's basic_clean), ANSI
    escapes removed (ftfy), NFC (both tokenizers), the special tokens made one letter; then every character
    a normaliser might drop, join or repair (controls, marks, non-ASCII symbols and punctuation, ftfy's
    mojibake and width fixes) is deleted. Deleting a character, or making a span one letter, can only merge
    pre-tokens, so the count stays a lower bound. Lower-casing is left out: it never merges pre-tokens (the
    pattern is matched ignoring case)."""
    text = unicodedata.normalize("NFC", _ANSI.sub("", html.unescape(html.unescape(text))))
    text = _SPECIAL.sub("x", text)  # one token, and a deletion next to it cannot break it into three
    return "".join(c for c in text if _kept(c))


def count_tokens(text: str) -> int:
    """A lower bound on the CLIP BPE tokens of `text` (BOS and EOS not counted); exact pre-token count on
    plain ASCII text, where most words of a prompt are one BPE token each."""
    return len(_PIECE.findall(_conservative(text)))


def piece_ends(text: str) -> list[int]:
    """Offsets in `text` where a pre-token ends: the token boundaries a cut may use."""
    return [m.end() for m in _PIECE.finditer(text)]


def token_prefix(text: str, tokens: int) -> str:
    """The shortest prefix of `text` ending on a token boundary that counts at least `tokens` tokens
    (`text` itself when it counts fewer)."""
    ends = piece_ends(text)
    if tokens <= 0:
        return ""
    if count_tokens(text) <= tokens or not ends:
        return text
    lo, hi = 0, len(ends) - 1  # invariant: text[:ends[hi]] counts >= tokens
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(text[: ends[mid]]) >= tokens:
            hi = mid
        else:
            lo = mid + 1
    return text[: ends[hi]]


# --- repeated prompts --------------------------------------------------------------------------------------


def split_prompts(text: str) -> list[str]:
    """The prompts (lines) of a text as extract_prompt joined them."""
    return text.split(PROMPT_SEPARATOR) if text else []


def _words(text: str) -> set[str]:
    words = (w.lower() for w in _PIECE.findall(_conservative(text)) if w[0].isalpha() and len(w) > 1)
    return {w for w in words if w not in STOPWORDS}


def repeats(parts: Sequence[str]) -> list[int]:
    """Indices of the parts (never the first) whose distinct words are at least REPEAT_SHARE found in the
    parts above them; a part with no such word at all (blank, punctuation, weights) is a repeat too."""
    seen: set[str] = set()
    found = []
    for i, part in enumerate(parts):
        words = _words(part)
        if i and (not words or len(words & seen) >= REPEAT_SHARE * len(words)):
            found.append(i)
        seen |= words
    return found


# --- the reduction -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptCut:
    """One reduction step taken: `step` (one of STEPS), `chars` characters removed (text and negative),
    `prompts` prompt lines dropped (duplicate_prompts), `tokens` counted tokens kept (the truncate steps: of
    the negative prompt for truncate_negative, else of the text; a lower bound on the CLIP tokens read)."""

    step: str
    chars: int
    prompts: int | None = None
    tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form: {"step", "chars_removed"} plus "prompts_removed" / "tokens_kept" where they apply."""
        out: dict[str, Any] = {"step": self.step, "chars_removed": self.chars}
        if self.prompts is not None:
            out["prompts_removed"] = self.prompts
        if self.tokens is not None:
            out["tokens_kept"] = self.tokens
        return out

    def describe(self) -> str:
        """One human-readable phrase."""
        if self.step == "duplicate_prompts":
            return f"{self.prompts} repeated prompt(s) dropped ({self.chars} characters)"
        if self.step == "negative":
            return f"negative prompt dropped ({self.chars} characters)"
        if self.step in ("truncate", "truncate_negative"):
            what = "text" if self.step == "truncate" else "negative prompt"
            return (
                f"{what} cut after {self.tokens} CLIP tokens, all Stable Diffusion 1.5 reads ({self.chars} characters)"
            )
        return (
            f"text cut to {self.tokens} CLIP tokens, below what Stable Diffusion 1.5 reads, as the budget is tiny"
            f" ({self.chars} characters)"
        )


@dataclass(frozen=True)
class Fitted:
    """What the semantic layer carries: `prompt`, the `cuts` taken (in order), `level` the index of the layer
    floor it fits beside (0 = the minimum structure and texture; higher = they gave way), and `fits` (False
    only when no stream can fit the budget)."""

    prompt: Prompt
    cuts: tuple[PromptCut, ...]
    level: int = 0
    fits: bool = True


SizeFn = Callable[[Prompt, int], int]
"""(prompt, level) -> whole-stream bytes with that prompt and layer floor `level` (0 = the minimum layers)."""


def _chars(p: Prompt) -> int:
    return len(p.text) + len(p.negative)


def _last(ok: Callable[[int], bool], candidates: Sequence[int]) -> int | None:
    """The last candidate `ok` accepts, assuming it accepts a prefix of them (binary search); None if none."""
    if not candidates or not ok(candidates[0]):
        return None
    lo, hi = 0, len(candidates) - 1  # ok(candidates[lo]) holds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(candidates[mid]):
            lo = mid
        else:
            hi = mid - 1
    return candidates[lo]


def fit_prompt(
    prompt: Prompt,
    budget: int,
    size_of: SizeFn,
    *,
    levels: int = 1,
    window: int = WINDOW_TOKENS,
    floor: int = FLOOR_TOKENS,
) -> Fitted:
    """Reduce `prompt` in the module's documented order until `size_of(prompt, level) <= budget`.

    `size_of` measures the whole stream (it codes the prompt: coded bytes are not characters); `levels` is
    how many layer floors the encoder offers (0 = minimum structure and texture, then structure dropped, ...,
    the last one no layer at all). Only the semantic layer is re-coded while searching: a few codings per
    step, a binary search where a cut point is chosen.
    """

    def fits(p: Prompt, level: int = 0) -> bool:
        return size_of(p, level) <= budget

    if fits(prompt):
        return Fitted(prompt, ())
    cuts: list[PromptCut] = []
    text, negative = prompt.text, prompt.negative

    # 1. repeated prompts, the negative's first, the last line first, as few as fit
    tparts, nparts = split_prompts(text), split_prompts(negative)
    drops = [(1, i) for i in reversed(repeats(nparts))] + [(0, i) for i in reversed(repeats(tparts))]
    if drops:

        def without(k: int) -> Prompt:
            gone = set(drops[:k])
            keep_t = [p for i, p in enumerate(tparts) if (0, i) not in gone]
            keep_n = [p for i, p in enumerate(nparts) if (1, i) not in gone]
            return Prompt(PROMPT_SEPARATOR.join(keep_t), PROMPT_SEPARATOR.join(keep_n))

        k = _first(lambda k: fits(without(k)), len(drops)) or len(drops)
        reduced = without(k)
        cuts.append(PromptCut("duplicate_prompts", _chars(Prompt(text, negative)) - _chars(reduced), prompts=k))
        text, negative = reduced.text, reduced.negative
        if fits(reduced):
            return Fitted(reduced, tuple(cuts))

    # 2, 3. what the decoder never reads: the negative prompt's tokens after its window, then the text's
    current = Prompt(text, negative)
    for step, field in (("truncate_negative", "negative"), ("truncate", "text")):
        value: str = getattr(current, field)
        if count_tokens(value) > window:
            cut = token_prefix(value, window)
            cuts.append(PromptCut(step, len(value) - len(cut), tokens=count_tokens(cut)))
            current = replace(current, **{field: cut})
            if fits(current):
                return Fitted(current, tuple(cuts))
    text, negative = current.text, current.negative

    # 4. the negative prompt
    if negative:
        cuts.append(PromptCut("negative", len(negative)))
        negative = ""
        if fits(Prompt(text)):
            return Fitted(Prompt(text), tuple(cuts))

    # 5. tiny budgets: the budget wins over the window, the floor over the minimum layers, then the budget
    ends = [e for e in piece_ends(text) if e < len(text)] + [len(text)]  # cut points, shortest first
    floor_end = len(token_prefix(text, min(floor, count_tokens(text))))

    def longest(level: int, candidates: list[int]) -> int | None:
        return _last(lambda e: fits(Prompt(text[:e]), level), candidates)

    for level in range(levels):
        end = longest(level, [e for e in ends if e >= floor_end])
        if end is not None:
            return Fitted(Prompt(text[:end]), _below(cuts, text, end), level)
    end = longest(levels - 1, [0] + [e for e in ends if e < floor_end])
    if end is not None:
        return Fitted(Prompt(text[:end]), _below(cuts, text, end), levels - 1)
    return Fitted(Prompt(""), _below(cuts, text, 0), levels - 1, fits=False)


def _below(cuts: list[PromptCut], text: str, end: int) -> tuple[PromptCut, ...]:
    """`cuts` plus a truncate_below_window cut when text[:end] is shorter than `text`."""
    if end >= len(text):
        return tuple(cuts)
    return (*cuts, PromptCut("truncate_below_window", len(text) - end, tokens=count_tokens(text[:end])))


def _first(ok: Callable[[int], bool], n: int) -> int | None:
    """The smallest k in 1..n that `ok` accepts, assuming it accepts a suffix of 1..n (binary search)."""
    if not ok(n):
        return None
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def summary(cuts: Sequence[PromptCut], budget: int) -> str:
    """One warning line for the cuts taken ("" when none)."""
    if not cuts:
        return ""
    return f"prompt reduced to fit the {budget}-byte budget: " + "; ".join(c.describe() for c in cuts)
