"""Whole-image bench: Layercast vs classical codecs measured in the same run.

Per image (resized to 512x512 as the paper does): bytes per layer, bpp, encode and decode time, PSNR/SSIM
of the reconstruction; baselines: JPEG/WebP/AVIF at their lowest quality, and downscaled WebP/AVIF at
matched bytes (the best PSNR any (size, quality) reaches within Layercast's byte count).
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from layercast.common.metrics import bpp, psnr, ssim

SIDE = 512
MATCH_SIDES = (160, 128, 96, 64, 48, 32, 24, 16)


def _pil_bytes(rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"quality": quality}
    if fmt == "WEBP":
        kwargs["method"] = 6
    if fmt == "AVIF":
        kwargs["speed"] = 6
    Image.fromarray(rgb).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _pil_decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if img.shape[1] != size[0] or img.shape[0] != size[1]:
        img = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(img)


def available_formats() -> list[str]:
    """Classical formats this Pillow can write."""
    out = []
    probe = np.zeros((16, 16, 3), np.uint8)
    for fmt in ("JPEG", "WEBP", "AVIF"):
        try:
            _pil_bytes(probe, fmt, 50)
            out.append(fmt)
        except (KeyError, OSError, ValueError):
            continue
    return out


def lowest_quality(rgb: np.ndarray, fmt: str) -> dict[str, Any]:
    """Bytes and quality of `fmt` at its lowest quality setting at full size."""
    q = 1 if fmt == "JPEG" else 0
    data = _pil_bytes(rgb, fmt, q)
    rec = _pil_decode(data, (rgb.shape[1], rgb.shape[0]))
    return {"bytes": len(data), "psnr": psnr(rgb, rec), "ssim": ssim(rgb, rec)}


def matched_bytes(rgb: np.ndarray, fmt: str, budget: int) -> dict[str, Any] | None:
    """Best PSNR of downscale + `fmt` within `budget` bytes, upscaled back (None if nothing fits)."""
    best: dict[str, Any] | None = None
    h, w = rgb.shape[:2]
    for side in MATCH_SIDES:
        small = cv2.resize(
            rgb, (max(1, side * w // max(w, h)), max(1, side * h // max(w, h))), interpolation=cv2.INTER_AREA
        )
        lo, hi, fit = 0, 100, None
        while lo <= hi:
            q = (lo + hi) // 2
            data = _pil_bytes(small, fmt, q)
            if len(data) <= budget:
                fit = (q, data)
                lo = q + 1
            else:
                hi = q - 1
        if fit is None:
            continue
        rec = _pil_decode(fit[1], (w, h))
        score = psnr(rgb, rec)
        if best is None or score > best["psnr"]:
            best = {
                "bytes": len(fit[1]),
                "side": side,
                "quality": fit[0],
                "psnr": score,
                "ssim": ssim(rgb, rec),
            }
    return best


def load_512(path: Path) -> np.ndarray:
    """An image file as RGB resized to 512x512 (area interpolation), as the paper evaluates."""
    from layercast.sender.image_io import load_image

    rgb = load_image(path).rgb
    return np.ascontiguousarray(cv2.resize(rgb, (SIDE, SIDE), interpolation=cv2.INTER_AREA))


def run(
    paths: list[Path],
    prompts: dict[str, str],
    *,
    decoder: Any = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Encode, decode and compare every image; returns per-image rows and a summary."""
    from layercast.common.types import Prompt
    from layercast.receiver.layers import layerset_from_image
    from layercast.receiver.preview import PreviewDecoder
    from layercast.sender.encode import encode_image

    dec = decoder or PreviewDecoder()
    formats = available_formats()
    threads = cv2.getNumThreads()
    rows = []
    for path in paths:
        rgb = load_512(path)
        prompt = Prompt(prompts.get(path.name, ""))
        cv2.setNumThreads(1)  # the encode target is per core
        try:
            encode_image(rgb, prompt)  # warm caches (models load once)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                res = encode_image(rgb, prompt)
                times.append((time.perf_counter() - t0) * 1e3)
        finally:
            cv2.setNumThreads(threads)
        layers = layerset_from_image(res.image)
        t0 = time.perf_counter()
        rec = dec.decode(layers)
        dec_ms = (time.perf_counter() - t0) * 1e3
        row: dict[str, Any] = {
            "file": path.name,
            "total_bytes": res.total_bytes,
            "bpp": bpp(res.total_bytes, SIDE, SIDE),
            "fits": res.fits,
            "layer_bytes": res.layer_bytes(),
            "edge_long_side": res.rung.long_side if res.rung else None,
            "texture_quality": res.texture_quality,
            "encode_ms": min(times),
            "decode_ms": dec_ms,
            "psnr": psnr(rgb, rec),
            "ssim": ssim(rgb, rec),
            "baselines": {},
        }
        for fmt in formats:
            row["baselines"][f"{fmt.lower()}-lowest"] = lowest_quality(rgb, fmt)
            if fmt != "JPEG":
                row["baselines"][f"{fmt.lower()}-matched"] = matched_bytes(rgb, fmt, res.total_bytes)
        rows.append(row)
        if progress:
            progress(path.name)
    return {
        "rows": rows,
        "summary": summarize(rows),
        "decoder": getattr(dec, "name", "?"),
        "formats": formats,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and means over rows, per method."""
    if not rows:
        return {}
    s: dict[str, Any] = {
        "images": len(rows),
        "all_fit": all(r["fits"] for r in rows),
        "max_bytes": max(r["total_bytes"] for r in rows),
        "mean_bytes": statistics.mean(r["total_bytes"] for r in rows),
        "mean_bpp": statistics.mean(r["bpp"] for r in rows),
        "median_encode_ms": statistics.median(r["encode_ms"] for r in rows),
        "median_decode_ms": statistics.median(r["decode_ms"] for r in rows),
        "mean_psnr": statistics.mean(r["psnr"] for r in rows),
        "mean_ssim": statistics.mean(r["ssim"] for r in rows),
        "mean_layer_bytes": {
            fam: statistics.mean(r["layer_bytes"].get(fam, 0) for r in rows)
            for fam in ("semantic", "structure", "texture")
        },
        "baselines": {},
    }
    names = sorted({k for r in rows for k in r["baselines"]})
    for name in names:
        vals = [r["baselines"][name] for r in rows if r["baselines"].get(name)]
        if not vals:
            s["baselines"][name] = {"fits": 0}
            continue
        s["baselines"][name] = {
            "images": len(vals),
            "mean_bytes": statistics.mean(v["bytes"] for v in vals),
            "mean_bpp": statistics.mean(bpp(v["bytes"], SIDE, SIDE) for v in vals),
            "mean_psnr": statistics.mean(v["psnr"] for v in vals),
            "mean_ssim": statistics.mean(v["ssim"] for v in vals),
        }
    return s


def format_table(result: dict[str, Any]) -> str:
    """Human-readable summary table."""
    s = result["summary"]
    if not s:
        return "images: none"
    lines = [
        f"images: {s['images']} at 512x512, decoder {result['decoder']}",
        f"{'method':<22}{'bytes':>9}{'bpp':>9}{'PSNR dB':>9}{'SSIM':>7}",
        f"{'layercast':<22}{s['mean_bytes']:>9.1f}{s['mean_bpp']:>9.4f}{s['mean_psnr']:>9.2f}{s['mean_ssim']:>7.3f}",
    ]
    for name, b in s["baselines"].items():
        if b.get("images"):
            lines.append(
                f"{name:<22}{b['mean_bytes']:>9.1f}{b['mean_bpp']:>9.4f}{b['mean_psnr']:>9.2f}{b['mean_ssim']:>7.3f}"
                + ("" if b["images"] == s["images"] else f"  ({b['images']} fit)")
            )
        else:
            lines.append(f"{name:<22}  nothing fits in Layercast's bytes")
    lb = s["mean_layer_bytes"]
    lines += [
        f"layer bytes (mean): semantic {lb['semantic']:.1f}, structure {lb['structure']:.1f},"
        f" texture {lb['texture']:.1f}",
        f"max total {s['max_bytes']} B (budget 655 B at 0.02 bpp): {'all fit' if s['all_fit'] else 'SOME OVER BUDGET'}",
        f"median encode {s['median_encode_ms']:.1f} ms on one core (target <= 30 ms), "
        f"median decode {s['median_decode_ms']:.1f} ms",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    """Rate-distortion scatter (bpp vs PSNR) per method; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = result["rows"]
    ax.scatter([r["bpp"] for r in rows], [r["psnr"] for r in rows], label="layercast", s=18)
    names = sorted({k for r in rows for k in r["baselines"]})
    for name in names:
        pts = [
            (bpp(r["baselines"][name]["bytes"], SIDE, SIDE), r["baselines"][name]["psnr"])
            for r in rows
            if r["baselines"].get(name)
        ]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=name, s=12, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (log)")
    ax.set_ylabel("PSNR (dB)")
    ax.axvline(0.02, color="grey", lw=0.8, ls="--")
    ax.set_title("Rate-distortion at 512x512")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
