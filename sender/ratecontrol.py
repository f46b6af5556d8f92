"""Rate control (pure, no I/O): choose structure and texture parameters so the whole stream fits a budget.

The budget counts every byte of the `.lcs` container (magic, length prefixes, packet framing, CRCs).
The semantic layer is coded losslessly; it comes in already fitted (sender.prompt_fit cuts the prompt, in a
documented order, when it does not fit beside the minimum layers, `floors`). The structure layer is the big
one: a ladder of (working long side, Canny threshold scale, minimum edge length) rungs, richest first, is
searched for the richest rung that fits; if none fits, texture quality is lowered, then structure, then
texture are dropped. What the chosen rung leaves goes to colour (`fill`: a finer colormap quality).

The minimum structure and texture, which a prompt is cut to make room for: the poorest rung of the ladder
(the `min_long_side` working side, default 32 px, at the coarsest threshold knob, 2.0 x Canny thresholds and
edges of at least 12 px; the pose layer itself for pose structure) and the lowest colormap quality tried
(10, or the fixed `--texture-quality`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from layercast.common.types import EncodedLayer

LONG_SIDES: tuple[int, ...] = (256, 224, 192, 176, 160, 144, 128, 112, 96, 80, 64, 48, 32)
KNOBS: tuple[tuple[float, int], ...] = ((1.0, 0), (1.4, 6), (2.0, 12))


@dataclass(frozen=True)
class Rung:
    """One structure setting: working long side, threshold scale, minimum edge component length."""

    long_side: int
    threshold_scale: float
    min_length: int


def ladder(max_long_side: int = 256, min_long_side: int = 32) -> list[Rung]:
    """Structure rungs, richest (most bytes) first."""
    return [Rung(ls, ts, ml) for ls in LONG_SIDES if min_long_side <= ls <= max_long_side for ts, ml in KNOBS]


TEXTURE_QUALITIES: tuple[int, ...] = (50, 35, 20, 10)

FILL_QUALITIES: tuple[int, ...] = (65, 80, 95)
"""Colormap qualities above TEXTURE_QUALITIES' best that `fill` walks up, once the structure rung is chosen:
the ladder's steps leave ~50 bytes of a 655-byte budget unused on average, and these spend them on finer
colour (Oklab steps 1/2 to 1/7 of quality 50's)."""


def floors(
    rungs: Sequence[Rung], texture_qualities: Sequence[int], *, with_structure: bool = True, with_texture: bool = True
) -> list[tuple[Rung | None, int | None]]:
    """The layer floors, in the order they give way: the minimum structure and texture (the last, poorest
    rung; the last, lowest quality), then without structure, then without texture. A layer not wanted is
    absent from every floor (and floors that become equal are listed once); the last floor has no layer."""
    structure = rungs[-1] if with_structure and rungs else None
    texture = texture_qualities[-1] if with_texture and texture_qualities else None
    out: list[tuple[Rung | None, int | None]] = []
    for floor in ((structure, texture), (None, texture), (None, None)):
        if floor not in out:
            out.append(floor)
    return out


@dataclass
class Choice:
    """What rate control picked; `rung` None = structure dropped, `texture_quality` None = texture dropped."""

    rung: Rung | None
    texture_quality: int | None
    total_bytes: int
    fits: bool
    tries: int


def choose(
    budget: int,
    rungs: Sequence[Rung],
    size_of: Callable[[Rung | None, int | None], int],
    *,
    texture_qualities: Sequence[int] = TEXTURE_QUALITIES,
    with_structure: bool = True,
    with_texture: bool = True,
    estimate: Callable[[Rung, int | None], int] | None = None,
) -> Choice:
    """Search settings so that `size_of(rung, texture_quality)` (whole-stream bytes) is <= `budget`.

    For each texture quality, best first: with a cheap `estimate` of the stream size, rungs are ranked by
    it, the richest estimated to fit is measured, and the search walks richer or poorer from there (usually
    two or three real encodes); without one, binary search over `rungs` (sizes roughly decreasing along the
    ladder). Then structure is dropped, then texture. Returns the smallest setting tried with fits=False
    when nothing fits (the semantic layer alone is over budget).
    """
    tries = 0
    qualities: list[int | None] = list(texture_qualities) if with_texture else [None]
    for q in qualities:
        if not with_structure:
            break
        if estimate is None:
            best, n = _bisect(budget, list(rungs), q, size_of)
        else:
            ranked = sorted(rungs, key=lambda r, q=q: -estimate(r, q))  # type: ignore[misc]
            best, n = _guided(budget, ranked, q, size_of, estimate)
        tries += n
        if best is not None:
            return Choice(best[0], q, best[1], True, tries)
    fallbacks: list[tuple[Rung | None, int | None]] = []
    if with_texture:
        fallbacks.append((None, texture_qualities[-1]))
    fallbacks.append((None, None))
    size = 0
    for rung, q in fallbacks:
        size = size_of(rung, q)
        tries += 1
        if size <= budget:
            return Choice(rung, q, size, True, tries)
    return Choice(None, None, size, False, tries)


SizeFn = Callable[[Rung | None, int | None], int]


def fill(budget: int, choice: Choice, size_of: SizeFn, qualities: Sequence[int] = FILL_QUALITIES) -> Choice:
    """`choice` with its texture quality raised along `qualities` (ascending; those above its own) while the
    stream still fits beside its rung: the last that fits before one does not (a finer quality costs more
    bytes, so one try settles it when nothing is left). `choice` itself (tries counted) when none fits, and
    unchanged when it has no texture or does not fit."""
    if not choice.fits or choice.texture_quality is None:
        return choice
    quality, total, tries = choice.texture_quality, choice.total_bytes, choice.tries
    for q in qualities:
        if q <= choice.texture_quality:
            continue
        size = size_of(choice.rung, q)
        tries += 1
        if size > budget:
            break
        quality, total = q, size
    return Choice(choice.rung, quality, total, True, tries)


def _bisect(budget: int, rungs: list[Rung], q: int | None, size_of: SizeFn) -> tuple[tuple[Rung, int] | None, int]:
    lo, hi, tries = 0, len(rungs) - 1, 0
    best: tuple[Rung, int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        size = size_of(rungs[mid], q)
        tries += 1
        if size <= budget:
            best = (rungs[mid], size)
            hi = mid - 1
        else:
            lo = mid + 1
    return best, tries


RICHER_CHECKS = 1
"""Rungs richer than the guided search's pick that are measured as well, while they fit."""


def _guided(
    budget: int, ranked: list[Rung], q: int | None, size_of: SizeFn, estimate: Callable[[Rung, int | None], int]
) -> tuple[tuple[Rung, int] | None, int]:
    """Secant-style search: measure the richest rung estimated to fit, rescale the estimates by what the
    measurement showed, and repeat (at most four encodes); bisect the rest if nothing measured fits."""
    est = [estimate(r, q) for r in ranked]
    scale = 1.0
    best: tuple[int, int] | None = None  # (index in ranked, size)
    measured: dict[int, int] = {}
    for _ in range(4):
        fits = [i for i, e in enumerate(est) if e * scale <= budget and (best is None or i < best[0])]
        i = next((k for k in fits if k not in measured), None)
        if i is None:
            break
        measured[i] = size_of(ranked[i], q)
        if measured[i] <= budget:
            best = (i, measured[i])
        scale = max(scale * measured[i] / max(est[i] * scale, 1), 0.25)
        if best is not None and best[0] == 0:
            break
    if best is not None:
        # the estimates are off by different factors on different rungs: check the richer neighbours too
        k, extra = best[0] - 1, 0
        while k >= 0 and extra < RICHER_CHECKS:
            if k not in measured:
                measured[k] = size_of(ranked[k], q)
                extra += 1
            if measured[k] > budget:
                break
            best = (k, measured[k])
            k -= 1
        return (ranked[best[0]], best[1]), len(measured)
    rest = [r for k, r in enumerate(ranked) if k > max(measured, default=-1)]
    found, n = _bisect(budget, rest, q, size_of)
    return found, len(measured) + n


PREVIEW_TEXTURES: tuple[tuple[int, int], ...] = ((24, 40), (24, 50), (28, 30), (28, 40), (32, 40), (36, 20))
"""(cells on the long side, colormap quality) tried by the preview target (`--target preview`). Each gets
the richest edge rung that fits beside it (none when it leaves no room), then `fill` raises its quality
where bytes are left; the preview decoder, run on each,
picks the one that scores best (`preview_score`). These six were picked greedily, by that score, from 32
(grids 20-40, qualities 20-50, with and without edges) on 23 shared AIGIs: colour alone never won (the
colormap codec spends ~1.5 bits a cell, so a grid big enough to show detail leaves nothing for edges)."""
PREVIEW_PSNR_WEIGHT = 0.01
"""`preview_score` = SSIM + this x PSNR (dB): mostly structure (SSIM), with PSNR as the tie-break that
keeps colours right. Against squared error alone, over those 23 images: SSIM 0.633 -> 0.642 for 20.83 ->
20.75 dB."""


def preview_score(rgb: np.ndarray, out: np.ndarray) -> float:
    """How well a preview decode `out` shows `rgb` (same shape, uint8): SSIM + `PREVIEW_PSNR_WEIGHT` x PSNR."""
    from layercast.common.metrics import psnr, ssim

    return ssim(rgb, out) + PREVIEW_PSNR_WEIGHT * min(psnr(rgb, out), 100.0)


def choose_preview(
    candidates: Sequence[tuple[int, int]],
    search: Callable[[int, int], Choice],
    decode: Callable[[Choice, int], np.ndarray],
    rgb: np.ndarray,
) -> tuple[Choice, int] | None:
    """The preview target's search: for each (cells, quality) candidate, `search(cells, quality)` fits the
    structure beside that texture and `decode(choice, cells)` renders what the preview decoder would show;
    the candidate with the best `preview_score` against `rgb` wins (the first on ties). Candidates whose
    texture does not fit (rate control dropped it) are skipped. Returns (choice, cells), or None when no
    candidate's texture fits."""
    import cv2

    best: tuple[float, Choice, int] | None = None
    reference: np.ndarray | None = None
    for cells, q in candidates:
        choice = search(cells, q)
        if not choice.fits or choice.texture_quality is None:
            continue
        out = decode(choice, cells)
        if reference is None:
            reference = rgb
            if rgb.shape != out.shape:  # the decoder renders at most limits.MAX_RENDER_PIXELS
                reference = np.asarray(cv2.resize(rgb, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_AREA))
        score = preview_score(reference, out)
        if best is None or score > best[0]:
            best = (score, choice, cells)
    return None if best is None else (best[1], best[2])


def total_layer_bytes(layers: Sequence[EncodedLayer]) -> int:
    """Sum of payload bytes of layers (framing excluded)."""
    return sum(layer.nbytes for layer in layers)
