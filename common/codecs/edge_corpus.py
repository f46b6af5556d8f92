"""The image corpus the edge coder's prior is built from, and the held-out split it is measured on.

The split is a fixed function of the file name, so the prior builder (tools/build_edge_prior.py), the
bench and the tests agree on it without a list: a figure is only ever reported on held-out images.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

EVAL_SIDE = 512
"""Images are resized to EVAL_SIDE x EVAL_SIDE before extraction, as the paper evaluates."""


def is_held_out(filename: str) -> bool:
    """True for images kept out of the prior's training set (about one in four, by CRC-32 of the name)."""
    return zlib.crc32(filename.encode()) % 4 == 0


def corpus_images(aigi_dir: Path, *, held_out: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, uint8 RGB EVAL_SIDE x EVAL_SIDE array) of the held-out or training PNGs, sorted by name."""
    from PIL import Image

    for path in sorted(Path(aigi_dir).glob("*.png")):
        if is_held_out(path.name) != held_out:
            continue
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((EVAL_SIDE, EVAL_SIDE), Image.Resampling.BICUBIC)
        yield path.name, np.asarray(rgb)
