"""Fit the preview decoder's output correction (receiver.colorize `Tuning.correction`) on the AIGI training split.

The edge-aware colour field is biased: a colormap cell is the linear-light mean of its pixels, whose sRGB
value is brighter than the sRGB mean that PSNR rewards, the more so the busier the cell (measured: 9 levels
too bright on average at the generative split's 8 x 8 cells); and where edges are dense the unmixed pieces
are less sure than the field makes them look. The correction is a least-squares linear map of a few
per-pixel features (`colorize.correction_features`: the field, the bicubic field, their other channels, edge
density, the bicubic gradient; nothing that follows single lines) to the image's sRGB, fitted here on the work
grid against the image area-resized to it.

Each training image (`edge_corpus.is_held_out` False, about 3 in 4) is resized to 512 x 512, encoded with the
target the tuning serves (`--target sd` for COARSE, `--target preview` for FINE), and decoded to its layers;
images whose stream has no edges are skipped (the preview shows the bicubic field there). Deterministic.
Prints the coefficients to paste into receiver/colorize.py; `--check` also scores them on the held-out split.

    python tools/fit_preview_correction.py [--aigi ../shared/data/aigi] [--tuning coarse|fine] [--check]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from layercast.receiver import colorize


def samples(aigi: Path, target: str, *, held_out: bool) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(file, uint8 RGB 512 x 512 image, colormap cells, edge map) per image of the split with edges."""
    from layercast.bench.images import load_512
    from layercast.common.codecs.edge_corpus import is_held_out
    from layercast.common.types import EdgeMap, Prompt
    from layercast.receiver.layers import layerset_from_image
    from layercast.sender.encode import EncodeOptions, encode_image

    prompts: dict[str, str] = {}
    if (aigi / "manifest.csv").exists():
        with open(aigi / "manifest.csv", newline="") as f:
            prompts = {row["file"]: row["prompt"] for row in csv.DictReader(f)}
    for path in sorted(aigi.glob("*.png")):
        if is_held_out(path.name) != held_out:
            continue
        rgb = load_512(path)
        res = encode_image(rgb, Prompt(prompts.get(path.name, "")), options=EncodeOptions(target=target))
        layers = layerset_from_image(res.image)
        if layers.texture is None or not isinstance(layers.structure, EdgeMap) or not layers.structure.edges.any():
            continue
        yield path.name, rgb, layers.texture.cells, layers.structure.edges.astype(bool)


def design(
    rgb: np.ndarray, cells: np.ndarray, edges: np.ndarray, tuning: colorize.Tuning
) -> tuple[np.ndarray, np.ndarray]:
    """(3, pixels, features) inputs and (3, pixels) targets of one image on its work grid (per channel)."""
    import cv2

    k = colorize.work_scale(cells.shape[:2], rgb.shape[1], rgb.shape[0], tuning.work_side)
    bare = dataclasses.replace(tuning, correction=())
    field, edge = colorize.colorize_lab(cells, edges, k, bare)
    assert edge is not None
    srgb = colorize.to_srgb(field, bare.space)
    rows, cols = srgb.shape[:2]
    lab = colorize._to_space(cells, bare.space)
    smooth = colorize.to_srgb(np.asarray(cv2.resize(lab, (cols, rows), interpolation=cv2.INTER_CUBIC)), bare.space)
    feats = colorize.correction_features(srgb, smooth, edge)
    x = np.stack([f.reshape(-1, 3).T for f in feats], axis=2)
    target = cv2.resize(rgb.astype(np.float32) / 255.0, (cols, rows), interpolation=cv2.INTER_AREA)
    return x.astype(np.float64), target.reshape(-1, 3).T.astype(np.float64)


def fit(
    items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], tuning: colorize.Tuning
) -> tuple[tuple[float, ...], ...]:
    """Least-squares coefficients per channel over (rgb, cells, edges) items (normal equations, summed per
    image)."""
    xtx: np.ndarray | None = None
    xty: np.ndarray | None = None
    for rgb, cells, edges in items:
        x, y = design(rgb, cells, edges, tuning)
        a = np.einsum("cpi,cpj->cij", x, x)
        b = np.einsum("cpi,cp->ci", x, y)
        xtx = a if xtx is None else xtx + a
        xty = b if xty is None else xty + b
    if xtx is None or xty is None:
        raise ValueError("no images with edges to fit on")
    return tuple(tuple(round(float(c), 4) for c in np.linalg.solve(xtx[ch], xty[ch])) for ch in range(3))


def main(argv: list[str] | None = None) -> int:
    from layercast.common.metrics import psnr, ssim

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aigi", default="../shared/data/aigi")
    ap.add_argument("--tuning", choices=("coarse", "fine"), default="coarse")
    ap.add_argument("--check", action="store_true", help="score on the held-out split, with and without it")
    args = ap.parse_args(argv)
    tuning = colorize.COARSE if args.tuning == "coarse" else colorize.FINE
    target = "sd" if args.tuning == "coarse" else "preview"
    train = [(rgb, c, e) for _, rgb, c, e in samples(Path(args.aigi), target, held_out=False)]
    coefficients = fit(train, tuning)
    rows = "".join("    (" + ", ".join(f"{c}" for c in row) + "),\n" for row in coefficients)
    print(f"{len(train)} training images; correction=(\n{rows})")
    if args.check:
        import dataclasses as dc

        for name, tun in (
            ("none", dc.replace(tuning, correction=())),
            ("fitted", dc.replace(tuning, correction=coefficients)),
        ):
            ps, ss = [], []
            for _, rgb, cells, edges in samples(Path(args.aigi), target, held_out=True):
                k = colorize.work_scale(cells.shape[:2], 512, 512, tun.work_side)
                import cv2

                out = np.clip(colorize.colorize_srgb(cells, edges, k, tun) * 255 + 0.5, 0, 255).astype(np.uint8)
                out = np.asarray(cv2.resize(out, (512, 512), interpolation=cv2.INTER_LINEAR))
                ps.append(psnr(rgb, out))
                ss.append(ssim(rgb, out))
            print(f"held out ({len(ps)} images), correction {name}: {np.mean(ps):.2f} dB, SSIM {np.mean(ss):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
