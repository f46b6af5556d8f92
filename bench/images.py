"""Whole-image bench: Layercast vs classical codecs measured in the same run.

Per image (resized to 512x512 as the paper does): bytes per layer, bpp, encode and decode time, PSNR/SSIM
of the reconstruction; baselines: JPEG/WebP/AVIF at their lowest quality, and downscaled WebP/AVIF at
matched bytes (the best PSNR any (size, quality) reaches within Layercast's byte count: complete files
against the complete .lcs stream).

Besides the decoder's output on the default (generative, `--target sd`) split, each image is decoded by the
CPU preview decoder in several ways (`PREVIEW_VARIANTS`: the pre-colourisation preview, bicubic colour,
edge-aware colour clean and as a sketch), and encoded a second time with `--target preview` (the split made
for the preview decoder), which gets WebP/AVIF matched to its own byte count (`webp-matched@preview`, ...).
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


def _today_preview(layers: Any) -> np.ndarray:
    """The preview decoder before edge-aware colour (bicubic colour with the edges drawn as dark lines)."""
    from layercast.receiver.preview import preview

    return preview(layers, style="sketch", colour="bicubic")


def _preview_variant(style: str, colour: str) -> Callable[[Any], np.ndarray]:
    from layercast.receiver.preview import preview

    return lambda layers: preview(layers, style=style, colour=colour)


PREVIEW_VARIANTS: dict[str, Callable[[Any], np.ndarray]] = {
    "preview-before": _today_preview,
    "preview-bicubic": _preview_variant("clean", "bicubic"),
    "preview-sketch": _preview_variant("sketch", "edge-aware"),
    "preview-clean": _preview_variant("clean", "edge-aware"),
}
"""Preview decodes of the default split: before this colourisation (bicubic + dark lines), bicubic colour
alone, edge-aware colour with lines, edge-aware colour alone (the default)."""


def _timed(fn: Callable[[Any], np.ndarray], arg: Any) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = fn(arg)
    return out, (time.perf_counter() - t0) * 1e3


def run(
    paths: list[Path],
    prompts: dict[str, str],
    *,
    decoder: Any = None,
    progress: Callable[[str], None] | None = None,
    targets: tuple[str, ...] = ("sd", "preview"),
) -> dict[str, Any]:
    """Encode, decode and compare every image; returns per-image rows and a summary.

    `targets`: the splits encoded ("sd", the default split, always; "preview": also `--target preview`)."""
    from layercast.common.types import Prompt
    from layercast.receiver.layers import layerset_from_image
    from layercast.receiver.preview import PreviewDecoder
    from layercast.sender.encode import EncodeOptions, encode_image

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
            pres, pre_ms = None, 0.0
            if "preview" in targets:
                t0 = time.perf_counter()
                pres = encode_image(rgb, prompt, options=EncodeOptions(target="preview"))
                pre_ms = (time.perf_counter() - t0) * 1e3
            layers = layerset_from_image(res.image)
            variants: dict[str, Any] = {}  # preview decodes on one core, like the encode
            for name, fn in PREVIEW_VARIANTS.items():
                out, ms = _timed(fn, layers)
                variants[name] = {"psnr": psnr(rgb, out), "ssim": ssim(rgb, out), "decode_ms": ms}
            if pres is not None:
                pre_out, pre_dec_ms = _timed(PreviewDecoder().decode, layerset_from_image(pres.image))
        finally:
            cv2.setNumThreads(threads)
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
            "texture_grid": list(res.texture_grid) if res.texture_grid else None,
            "variants": variants,
            "baselines": {},
        }
        if pres is not None:
            row["preview_target"] = {
                "total_bytes": pres.total_bytes,
                "fits": pres.fits,
                "layer_bytes": pres.layer_bytes(),
                "edge_long_side": pres.rung.long_side if pres.rung else None,
                "texture_grid": list(pres.texture_grid) if pres.texture_grid else None,
                "texture_quality": pres.texture_quality,
                "encode_ms": pre_ms,
                "decode_ms": pre_dec_ms,
                "psnr": psnr(rgb, pre_out),
                "ssim": ssim(rgb, pre_out),
            }
        matched: dict[tuple[str, int], dict[str, Any] | None] = {}
        for fmt in formats:
            row["baselines"][f"{fmt.lower()}-lowest"] = lowest_quality(rgb, fmt)
            if fmt == "JPEG":
                continue
            for suffix, nbytes in (("", res.total_bytes), ("@preview", pres.total_bytes if pres else None)):
                if nbytes is None:
                    continue
                if (fmt, nbytes) not in matched:
                    matched[fmt, nbytes] = matched_bytes(rgb, fmt, nbytes)
                row["baselines"][f"{fmt.lower()}-matched{suffix}"] = matched[fmt, nbytes]
        rows.append(row)
        if progress:
            progress(path.name)
    return {
        "rows": rows,
        "summary": summarize(rows),
        "decoder": getattr(dec, "name", "?"),
        "formats": formats,
    }


def _split_stats(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Sizes, quality and timings over the encodes of one split (rows of the default split, or their
    "preview_target" entries)."""
    return {
        "all_fit": all(t["fits"] for t in items),
        "max_bytes": max(t["total_bytes"] for t in items),
        "mean_bytes": statistics.mean(t["total_bytes"] for t in items),
        "mean_bpp": statistics.mean(bpp(t["total_bytes"], SIDE, SIDE) for t in items),
        "median_encode_ms": statistics.median(t["encode_ms"] for t in items),
        "median_decode_ms": statistics.median(t["decode_ms"] for t in items),
        "mean_psnr": statistics.mean(t["psnr"] for t in items),
        "mean_ssim": statistics.mean(t["ssim"] for t in items),
        "mean_layer_bytes": {
            fam: statistics.mean(t["layer_bytes"].get(fam, 0) for t in items)
            for fam in ("semantic", "structure", "texture")
        },
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and means over rows, per method."""
    if not rows:
        return {}
    s: dict[str, Any] = {
        "images": len(rows),
        **_split_stats(rows),
        "variants": {
            name: {
                "mean_psnr": statistics.mean(r["variants"][name]["psnr"] for r in rows),
                "mean_ssim": statistics.mean(r["variants"][name]["ssim"] for r in rows),
                "median_decode_ms": statistics.median(r["variants"][name]["decode_ms"] for r in rows),
            }
            for name in PREVIEW_VARIANTS
            if all(name in r.get("variants", {}) for r in rows)
        },
        "baselines": {},
    }
    targeted = [r["preview_target"] for r in rows if r.get("preview_target")]
    if targeted and len(targeted) == len(rows):
        s["preview_target"] = {
            **_split_stats(targeted),
            "mean_texture_cells": statistics.mean(
                t["texture_grid"][0] * t["texture_grid"][1] for t in targeted if t["texture_grid"]
            )
            if any(t["texture_grid"] for t in targeted)
            else 0,
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


def _row(name: str, nbytes: float, psnr_db: float, ssim_v: float, note: str = "") -> str:
    bits_per_pixel = 8.0 * nbytes / (SIDE * SIDE)
    return f"{name:<28}{nbytes:>9.1f}{bits_per_pixel:>9.4f}{psnr_db:>9.2f}{ssim_v:>7.3f}" + note


def format_table(result: dict[str, Any]) -> str:
    """Human-readable summary table: each target (the default generative split, `--target preview`) beside
    WebP/AVIF at its own byte count, then the lowest-quality baselines."""
    s = result["summary"]
    if not s:
        return "images: none"
    base = s["baselines"]

    def baseline(name: str, label: str) -> str:
        b = base.get(name)
        if not b:
            return ""
        if not b.get("images"):
            return f"{label:<28}  nothing fits in Layercast's bytes"
        return _row(label, b["mean_bytes"], b["mean_psnr"], b["mean_ssim"]) + (
            "" if b["images"] == s["images"] else f"  ({b['images']} fit)"
        )

    lines = [
        f"images: {s['images']} at 512x512, decoder {result['decoder']}",
        f"{'method':<28}{'bytes':>9}{'bpp':>9}{'PSNR dB':>9}{'SSIM':>7}",
        "default split (--target sd):",
        _row("  layercast", s["mean_bytes"], s["mean_psnr"], s["mean_ssim"]),
    ]
    for name, v in s.get("variants", {}).items():
        lines.append(
            _row("    " + name, s["mean_bytes"], v["mean_psnr"], v["mean_ssim"], f"  ({v['median_decode_ms']:.1f} ms)")
        )
    lines += [baseline(f"{fmt}-matched", f"  {fmt}-matched") for fmt in ("webp", "avif")]
    pt = s.get("preview_target")
    if pt:
        lines += [
            "--target preview (split for the preview decoder):",
            _row("  layercast --target preview", pt["mean_bytes"], pt["mean_psnr"], pt["mean_ssim"])
            + f"  ({pt['median_decode_ms']:.1f} ms)",
        ]
        lines += [baseline(f"{fmt}-matched@preview", f"  {fmt}-matched@preview") for fmt in ("webp", "avif")]
    shown = {f"{fmt}-matched{sfx}" for fmt in ("webp", "avif") for sfx in ("", "@preview")}
    rest = [baseline(name, f"  {name}") for name in base if name not in shown]
    if any(rest):
        lines += ["classical codecs at their lowest quality:", *rest]
    lines = [line for line in lines if line]
    lb = s["mean_layer_bytes"]
    lines += [
        f"layer bytes (mean): semantic {lb['semantic']:.1f}, structure {lb['structure']:.1f},"
        f" texture {lb['texture']:.1f}",
        f"max total {s['max_bytes']} B (budget 655 B at 0.02 bpp): {'all fit' if s['all_fit'] else 'SOME OVER BUDGET'}",
        f"median encode {s['median_encode_ms']:.1f} ms on one core (target <= 30 ms), "
        f"median decode {s['median_decode_ms']:.1f} ms",
    ]
    if pt:
        plb = pt["mean_layer_bytes"]
        lines.append(
            f"--target preview: layer bytes (mean) semantic {plb['semantic']:.1f}, structure {plb['structure']:.1f},"
            f" texture {plb['texture']:.1f}; {pt['mean_texture_cells']:.0f} colour cells (mean); max total"
            f" {pt['max_bytes']} B: {'all fit' if pt['all_fit'] else 'SOME OVER BUDGET'}; median encode"
            f" {pt['median_encode_ms']:.0f} ms, decode {pt['median_decode_ms']:.1f} ms"
        )
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
    targeted = [r["preview_target"] for r in rows if r.get("preview_target")]
    if targeted:
        ax.scatter(
            [bpp(t["total_bytes"], SIDE, SIDE) for t in targeted],
            [t["psnr"] for t in targeted],
            label="layercast --target preview",
            s=18,
            marker="^",
        )
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
