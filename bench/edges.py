"""Edge-coder bench: EDGES_CTX vs JBIG85 (jbigkit `pbmtojbg85`) vs 1-bit PNG on the same held-out maps.

Maps are thin Canny maps (sender.extract_edges) of the held-out AIGI images (edge_corpus.is_held_out,
never used to build the prior), resized to 512x512 first, at several working long sides.
"""

from __future__ import annotations

import io
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

LONG_SIDES = (128, 192, 256)


def jbig85_bytes(bits: np.ndarray) -> int | None:
    """Bytes of the JBIG85 (T.85) file `pbmtojbg85` writes for a bool map; None if jbigkit is missing."""
    exe = shutil.which("pbmtojbg85")
    if exe is None:
        return None
    b = np.asarray(bits, dtype=bool)
    h, w = b.shape
    pbm = b"P4\n%d %d\n" % (w, h) + np.packbits(b, axis=1).tobytes()
    out = subprocess.run([exe], input=pbm, capture_output=True, check=True, timeout=60)
    return len(out.stdout)


def png_bytes(bits: np.ndarray) -> int:
    """Bytes of a 1-bit PNG of the map (Pillow, optimize=True)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(bits, dtype=bool)).save(buf, "PNG", optimize=True)
    return len(buf.getvalue())


def run(aigi_dir: Path, long_sides: tuple[int, ...] = LONG_SIDES, stripe_rows: int = 32) -> dict[str, Any]:
    """Sizes and timings per long side on the held-out images of `aigi_dir` (each map round-trip checked)."""
    from layercast.common.codecs.edge_corpus import corpus_images
    from layercast.common.codecs.edges import EdgesCtxCodec, shipped_prior
    from layercast.common.types import EdgeMap
    from layercast.sender.extract_edges import canny_edges

    codec = EdgesCtxCodec()
    images = list(corpus_images(Path(aigi_dir), held_out=True))
    per: dict[int, dict[str, Any]] = {}
    for side in long_sides:
        ours = jbig = png = pixels = edge_px = 0
        have_jbig = True
        enc_ms: list[float] = []
        dec_ms: list[float] = []
        for _name, rgb in images:
            bits = canny_edges(rgb, side)
            t0 = time.perf_counter()
            layer = codec.compress(EdgeMap(bits), stripe_rows=stripe_rows)
            t1 = time.perf_counter()
            back = codec.decompress(layer.descriptor, layer.units)
            t2 = time.perf_counter()
            if not np.array_equal(back.edges, bits):
                raise AssertionError(f"edge codec round trip failed on {_name} at {side}")
            enc_ms.append((t1 - t0) * 1e3)
            dec_ms.append((t2 - t1) * 1e3)
            ours += layer.nbytes
            j = jbig85_bytes(bits)
            have_jbig = have_jbig and j is not None
            jbig += j or 0
            png += png_bytes(bits)
            pixels += bits.size
            edge_px += int(bits.sum())
        per[side] = {
            "images": len(images),
            "ours_bytes": ours,
            "jbig85_bytes": jbig if have_jbig else None,
            "png_bytes": png,
            "ratio_jbig85": ours / jbig if have_jbig and jbig else None,
            "ratio_png": ours / png if png else None,
            "edge_density": edge_px / pixels if pixels else 0.0,
            "bits_per_edge_pixel": 8 * ours / edge_px if edge_px else None,
            "encode_ms_median": statistics.median(enc_ms) if enc_ms else None,
            "decode_ms_median": statistics.median(dec_ms) if dec_ms else None,
        }
    return {
        "split": "held-out",
        "stripe_rows": stripe_rows,
        "model_version": shipped_prior().version,
        "long_sides": per,
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of `run`'s result."""
    head = (
        f"{'side':>5} {'imgs':>4} {'ours B':>8} {'JBIG85 B':>9} {'PNG B':>8} {'ours/JBIG':>9} "
        f"{'ours/PNG':>8} {'bits/edge':>9} {'enc ms':>7} {'dec ms':>7}"
    )
    lines = [
        f"edge coder (prior v{result['model_version']}, stripes of {result['stripe_rows']} rows, "
        f"{result['split']} images)",
        head,
    ]

    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    for side, r in result["long_sides"].items():
        lines.append(
            f"{side:>5} {r['images']:>4} {r['ours_bytes']:>8} {fmt(r['jbig85_bytes'], 'd'):>9} "
            f"{r['png_bytes']:>8} {fmt(r['ratio_jbig85'], '.3f'):>9} {fmt(r['ratio_png'], '.3f'):>8} "
            f"{fmt(r['bits_per_edge_pixel'], '.2f'):>9} {fmt(r['encode_ms_median'], '.2f'):>7} "
            f"{fmt(r['decode_ms_median'], '.2f'):>7}"
        )
    return "\n".join(lines)
