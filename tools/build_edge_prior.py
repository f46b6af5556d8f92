"""Build common/models/edge_prior.bin, the edge coder's context prior, from the AIGI training split.

Deterministic: the same images give the same file. Each training image (not `is_held_out`) is resized
to 512x512, turned into thin Canny maps at several working resolutions and threshold scales, and each
map is counted in its 8 flips/rotations (edge statistics are near isotropic; this multiplies the data).

    python tools/build_edge_prior.py [--aigi ../shared/data/aigi] [--out common/models/edge_prior.bin]
"""

from __future__ import annotations

import argparse
import sys
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
"""v2: same counts as v1; the coder moved from constriction to the integer range coder (new unit bytes)."""


def dihedral(e: np.ndarray) -> Iterator[np.ndarray]:
    """The 8 flips/rotations of a map."""
    for m in (e, e.T):
        for v in (m, m[:, ::-1], m[::-1], m[::-1, ::-1]):
            yield np.ascontiguousarray(v)


def count_map(e: np.ndarray, n: np.ndarray, n1: np.ndarray, stripe_rows: int = codec.DEFAULT_STRIPE_ROWS) -> None:
    """Add a map's context counts (all pixels, edge pixels) to n and n1.

    Template contexts count every pixel (their back-off levels need the all-zero template too); far
    contexts count the all-zero-template pixels they code.
    """
    coding, template = codec.context_indices(e, stripe_rows)
    far = coding >= codec.FAR_OFFSET
    idx = np.concatenate([template, coding[far]])
    bit = np.concatenate([e.ravel(), e.ravel()[far]]) != 0
    n += np.bincount(idx, minlength=codec.NIDX)
    n1 += np.bincount(idx[bit], minlength=codec.NIDX)


def build(aigi_dir: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(non-edge counts, edge counts, number of maps) over the training split."""
    n = np.zeros(codec.NIDX, np.int64)
    n1 = np.zeros(codec.NIDX, np.int64)
    maps = 0
    for _name, rgb in corpus_images(aigi_dir, held_out=False):
        for side in LONG_SIDES:
            for scale in THRESHOLD_SCALES:
                for v in dihedral(canny_edges(rgb, side, threshold_scale=scale).astype(np.uint8)):
                    count_map(v, n, n1)
                    maps += 1
    if maps == 0:
        raise SystemExit(f"no training images (*.png, not held out) in {aigi_dir}")
    if int(n.max()) >= 1 << 32:
        raise SystemExit("context counts overflow uint32; use fewer training maps")
    return n - n1, n1, maps


def main(argv: list[str] | None = None) -> int:
    """Build the prior file and print a one-line summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aigi", type=Path, default=ROOT.parent / "shared" / "data" / "aigi")
    ap.add_argument("--out", type=Path, default=ROOT / "common" / "models" / "edge_prior.bin")
    ap.add_argument("--version", type=int, default=PRIOR_VERSION)
    args = ap.parse_args(argv)
    n0, n1, maps = build(args.aigi)
    data = codec.write_prior(args.version, n0, n1)
    codec.read_prior(data)  # validates the file round trip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    seen = int(np.count_nonzero(n0 + n1))
    print(f"wrote {args.out} ({len(data)} bytes): prior v{args.version}, {maps} maps, {seen}/{codec.NIDX} contexts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
