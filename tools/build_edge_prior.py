"""Build the edge coder's priors from the AIGI training split (never from held-out images).

    python tools/build_edge_prior.py [--aigi ../shared/data/aigi] [--out common/models/edge_prior_mix.bin]
    python tools/build_edge_prior.py --legacy [--out common/models/edge_prior.bin]

Default: `edge_prior_mix.bin`, the mixing coder's prior (model version 3): training counts of the counts
model's contexts and of the deep template's contexts, and the mixer's initial weights. `--legacy` rebuilds
`edge_prior.bin` (model version 2, the counts-only coder that earlier builds wrote; kept so their layers
still decode: it must not change).

Deterministic: the same images give the same file. Each training image (not `is_held_out`) is resized to
512x512, turned into thin Canny maps at several working resolutions and threshold scales, and each map is
counted in its 8 flips/rotations (edge statistics are near isotropic; this multiplies the data).

The mixer's initial weights are fitted by stacking, so that they learn how far to trust each model on
images the tables did not see: the training images are split in FOLDS folds; the maps of fold k are coded
with tables counted from the other folds, each pixel's three stretched predictions are recorded, and a
logistic regression per weight set (Newton's method, a little L2) over all folds gives the weights. The
shipped tables then count every training image.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from layercast.common.codecs import edges as codec
from layercast.common.codecs.edge_corpus import corpus_images
from layercast.sender.extract_edges import canny_edges

ROOT = Path(__file__).resolve().parents[1]
LONG_SIDES = (96, 128, 160, 192, 224, 256)
THRESHOLD_SCALES = (0.7, 1.0, 1.5)
PRIOR_VERSION = 2
"""The legacy file's version. v2: same counts as v1; the coder moved from constriction to the integer
range coder (new unit bytes)."""

FOLDS = 4
"""Folds of the training split for fitting the mixer's weights."""

FIT_SIDES = (128, 160, 192, 224, 256)
"""Working long sides of the maps the mixer's weights are fitted on (threshold scale 1, no flips)."""

FIT_STRIPE_ROWS = 32
"""Stripe height of the fitting maps (the encoder's default)."""

FIT_L2 = 1e-4
"""L2 penalty per fitted pixel on the weights (in stretch units)."""


def dihedral(e: np.ndarray) -> Iterator[np.ndarray]:
    """The 8 flips/rotations of a map."""
    for m in (e, e.T):
        for v in (m, m[:, ::-1], m[::-1], m[::-1, ::-1]):
            yield np.ascontiguousarray(v)


def count_map(e: np.ndarray, n: np.ndarray, n1: np.ndarray, stripe_rows: int = codec.DEFAULT_STRIPE_ROWS) -> None:
    """Add a map's counts-model context counts (all pixels, edge pixels) to n and n1.

    Template contexts count every pixel (their back-off levels need the all-zero template too); far
    contexts count the all-zero-template pixels they code.
    """
    coding, template = codec.context_indices(e, stripe_rows)
    far = coding >= codec.FAR_OFFSET
    idx = np.concatenate([template, coding[far]])
    bit = np.concatenate([e.ravel(), e.ravel()[far]]) != 0
    n += np.bincount(idx, minlength=codec.NIDX)
    n1 += np.bincount(idx[bit], minlength=codec.NIDX)


def count_deep(e: np.ndarray, n: np.ndarray, n1: np.ndarray, stripe_rows: int = codec.DEFAULT_STRIPE_ROWS) -> None:
    """Add a map's deep-template context counts (all pixels, edge pixels) to n and n1."""
    idx = codec.deep_indices(e, stripe_rows)
    n += np.bincount(idx, minlength=codec.NDEEP)
    n1 += np.bincount(idx[e.ravel() != 0], minlength=codec.NDEEP)


def training_maps(rgb: np.ndarray) -> Iterator[np.ndarray]:
    """The maps counted for one training image (before flips)."""
    for side in LONG_SIDES:
        for scale in THRESHOLD_SCALES:
            yield canny_edges(rgb, side, threshold_scale=scale).astype(np.uint8)


def fold_of(name: str) -> int:
    """The mixer-fitting fold of a training image (a fixed function of its name)."""
    return (zlib.crc32(name.encode()) >> 8) % FOLDS


def build_legacy(aigi_dir: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(non-edge counts, edge counts, number of maps) of the counts model over the training split."""
    n = np.zeros(codec.NIDX, np.int64)
    n1 = np.zeros(codec.NIDX, np.int64)
    maps = 0
    for _name, rgb in corpus_images(aigi_dir, held_out=False):
        for m in training_maps(rgb):
            for v in dihedral(m):
                count_map(v, n, n1)
                maps += 1
    if maps == 0:
        raise SystemExit(f"no training images (*.png, not held out) in {aigi_dir}")
    if int(n.max()) >= 1 << 32:
        raise SystemExit("context counts overflow uint32; use fewer training maps")
    return n - n1, n1, maps


class FoldCounts:
    """Counts of both templates per fold (all pixels and edge pixels)."""

    def __init__(self) -> None:
        self.n = np.zeros((FOLDS, codec.NIDX), np.int64)
        self.n1 = np.zeros((FOLDS, codec.NIDX), np.int64)
        self.d = np.zeros((FOLDS, codec.NDEEP), np.int64)
        self.d1 = np.zeros((FOLDS, codec.NDEEP), np.int64)
        self.maps = 0

    def add(self, fold: int, m: np.ndarray) -> None:
        for v in dihedral(m):
            count_map(v, self.n[fold], self.n1[fold])
            count_deep(v, self.d[fold], self.d1[fold])
            self.maps += 1

    def tables(self, version: int, w0: np.ndarray, without: int | None = None) -> codec.MixTables:
        """Tables from every fold's counts, or from every fold but `without`."""
        keep = [f for f in range(FOLDS) if f != without]
        n, n1 = self.n[keep].sum(0), self.n1[keep].sum(0)
        d, d1 = self.d[keep].sum(0), self.d1[keep].sum(0)
        if max(int(n.max()), int(d.max())) >= 1 << 32:
            raise SystemExit("context counts overflow uint32; use fewer training maps")
        return codec.mix_tables_from_counts(version, n - n1, n1, d - d1, d1, w0)

    def totals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n, n1, d, d1 = self.n.sum(0), self.n1.sum(0), self.d.sum(0), self.d1.sum(0)
        return n - n1, n1, d - d1, d1


def fit_weights(sel: np.ndarray, x: np.ndarray, y: np.ndarray, iters: int = 25) -> np.ndarray:
    """Logistic regression per weight set (Newton's method): weights (MIX_SETS, MIX_INPUTS) in 1/65536 such
    that P(edge) = squash(sum(w * stretch inputs)); sets without data pass the counts model through."""
    w_out = codec.default_weights()
    for s in range(codec.MIX_SETS):
        pick = sel == s
        xs, ys = x[pick], y[pick].astype(np.float64)
        if len(ys) < 100:
            continue
        w = np.zeros(codec.MIX_INPUTS)
        w[0] = 1.0
        lam = FIT_L2 * len(ys)
        for _ in range(iters):
            z = np.clip(xs @ w, -30, 30)
            p = 1 / (1 + np.exp(-z))
            g = xs.T @ (p - ys) + lam * (w - np.eye(codec.MIX_INPUTS)[0])
            h = (xs * (p * (1 - p))[:, None]).T @ xs + lam * np.eye(codec.MIX_INPUTS)
            step = np.linalg.solve(h, g)
            w -= step
            if np.abs(step).max() < 1e-7:
                break
        w_out[s] = np.clip(np.rint(w * codec.PROB_ONE), -codec.WEIGHT_MAX, codec.WEIGHT_MAX).astype(np.int64)
    return w_out


def fit_rows(tables: codec.MixTables, maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weight set, stretched inputs / 256 with the bias, bit) of every coded pixel of `maps`."""
    sels, xs, ys = [], [], []
    for m in maps:
        rec = codec.mix_record(m, FIT_STRIPE_ROWS, tables)
        coded = rec[:, 0] >= 0
        r = rec[coded]
        sels.append(r[:, 2].astype(np.int16))
        xs.append(np.column_stack([r[:, 3:6], np.full(len(r), codec.BIAS)]).astype(np.float32) / 256)
        ys.append(m.ravel()[coded].astype(np.uint8))
    return np.concatenate(sels), np.concatenate(xs), np.concatenate(ys)


def build_mix(aigi_dir: Path, version: int, exclude: frozenset[str] = frozenset()) -> tuple[bytes, int, int]:
    """The v3 prior file from the training split (images in `exclude` left out too); (file, maps, images)."""
    counts = FoldCounts()
    fit_maps: list[list[np.ndarray]] = [[] for _ in range(FOLDS)]
    images = 0
    for name, rgb in corpus_images(aigi_dir, held_out=False):
        if name in exclude:
            continue
        images += 1
        fold = fold_of(name)
        for m in training_maps(rgb):
            counts.add(fold, m)
        fit_maps[fold].extend(canny_edges(rgb, side).astype(np.uint8) for side in FIT_SIDES)
    if images == 0:
        raise SystemExit(f"no training images (*.png, not held out) in {aigi_dir}")
    rows = [fit_rows(counts.tables(version, codec.default_weights(), without=f), fit_maps[f]) for f in range(FOLDS)]
    sel = np.concatenate([r[0] for r in rows])
    x = np.concatenate([r[1] for r in rows]).astype(np.float64)
    y = np.concatenate([r[2] for r in rows])
    w0 = fit_weights(sel, x, y)
    data = codec.write_mix_prior(version, *counts.totals(), w0)
    return data, counts.maps, images


def main(argv: list[str] | None = None) -> int:
    """Build a prior file and print a one-line summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aigi", type=Path, default=ROOT.parent / "shared" / "data" / "aigi")
    ap.add_argument("--out", type=Path, default=None, help="default: common/models/edge_prior_mix.bin (or .bin)")
    ap.add_argument("--legacy", action="store_true", help="rebuild edge_prior.bin (model version 2)")
    ap.add_argument("--exclude", type=Path, help="a file of image names (one a line) to leave out as well")
    args = ap.parse_args(argv)
    models = ROOT / "common" / "models"
    if args.legacy:
        out = args.out or models / "edge_prior.bin"
        n0, n1, maps = build_legacy(args.aigi)
        data = codec.write_prior(PRIOR_VERSION, n0, n1)
        summary = f"prior v{PRIOR_VERSION}, {maps} maps"
    else:
        out = args.out or models / "edge_prior_mix.bin"
        exclude = frozenset(args.exclude.read_text().split()) if args.exclude else frozenset()
        data, maps, images = build_mix(args.aigi, codec.MIX_VERSION, exclude)
        summary = f"prior v{codec.MIX_VERSION}, {images} images, {maps} maps"
    codec.read_prior(data)  # validates the file round trip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
