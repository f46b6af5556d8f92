"""`layercast bench --decoder sd`: per-layer-mode rows (prompt, +structure, +colour) of the generative decoder.

Each row: images decoded, mean ms per image and per denoising step, and quality against the originals where
the metric's library and weights exist locally (LPIPS/DISTS through pyiqa, CLIP similarity through a local
CLIP folder in LAYERCAST_CLIP, FID through torchmetrics); otherwise the row says "not available: reason".
Nothing is downloaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layercast.common.types import EdgeMap, LayerSet
from layercast.proto import pb

MODES = ("prompt", "+structure", "+colour")
"""Rows, as in the seed paper's table: prompt only, prompt + edges, prompt + edges + colormap."""

Metric = Callable[[list[np.ndarray], list[np.ndarray]], float]


def layer_sets(path: Path) -> tuple[np.ndarray, dict[str, LayerSet]]:
    """The original image and its LayerSet per mode (prompt from metadata, Canny edges, 8-cell colormap)."""
    from layercast.sender.extract_edges import canny_edges
    from layercast.sender.extract_prompt import prompt_for
    from layercast.sender.extract_texture import colormap
    from layercast.sender.image_io import load_image

    img = load_image(path)
    prompt, _ = prompt_for(img.info)
    header = pb.ImageHeader(width=img.width, height=img.height, seed=0)
    edges = EdgeMap(canny_edges(img.rgb, 192))
    cm = colormap(img.rgb)
    return img.rgb, {
        "prompt": LayerSet(header, prompt),
        "+structure": LayerSet(header, prompt, edges),
        "+colour": LayerSet(header, prompt, edges, cm),
    }


def _pyiqa_metric(name: str) -> tuple[Metric | None, str | None]:
    try:
        import pyiqa
        import torch
    except ImportError:
        return None, "pyiqa not installed (pip install pyiqa, then place its weights in the torch hub cache)"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        fn = pyiqa.create_metric(name, device="cuda" if torch.cuda.is_available() else "cpu")
    except (OSError, RuntimeError, ValueError) as e:
        return None, f"{name} weights not in the local cache ({type(e).__name__})"

    def metric(out: list[np.ndarray], ref: list[np.ndarray]) -> float:
        t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0  # noqa: E731
        return float(np.mean([float(fn(t(o), t(r))) for o, r in zip(out, ref, strict=True)]))

    return metric, None


def _clip_metric() -> tuple[Metric | None, str | None]:
    folder = os.environ.get("LAYERCAST_CLIP")
    if not folder or not Path(folder).is_dir():
        return None, "set LAYERCAST_CLIP to a local CLIP folder (e.g. openai/clip-vit-base-patch32)"
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    def metric(out: list[np.ndarray], ref: list[np.ndarray]) -> float:
        with torch.inference_mode():
            fa = model.get_image_features(**proc(images=out, return_tensors="pt"))
            fb = model.get_image_features(**proc(images=ref, return_tensors="pt"))
        return float(torch.nn.functional.cosine_similarity(fa, fb).mean())

    return metric, None


def _fid_metric() -> tuple[Metric | None, str | None]:
    try:
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        return None, "torchmetrics[image] not installed"

    def metric(out: list[np.ndarray], ref: list[np.ndarray]) -> float:
        fid = FrechetInceptionDistance(feature=2048)
        t = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2)  # noqa: E731
        fid.update(t(ref), real=True)
        fid.update(t(out), real=False)
        return float(fid.compute())

    try:
        FrechetInceptionDistance(feature=2048)
    except (OSError, RuntimeError, ModuleNotFoundError) as e:
        return None, f"FID inception weights not available locally ({type(e).__name__})"
    return metric, None


def available_metrics() -> dict[str, tuple[Metric | None, str | None]]:
    """Each metric: (function, None) when usable here, else (None, why not)."""
    return {
        "lpips": _pyiqa_metric("lpips"),
        "dists": _pyiqa_metric("dists"),
        "clip": _clip_metric(),
        "fid": _fid_metric(),
    }


def run(paths: Sequence[Path], model: str | None = None, config_file: str | None = None) -> dict[str, Any]:
    """Decode each image in every layer mode with the SD decoder; timings and metrics per mode."""
    from layercast.receiver.sd import SDDecoder, decoder_from_cli

    decoder, warning = decoder_from_cli(model=model, config_file=config_file)
    if not isinstance(decoder, SDDecoder):
        return {"available": False, "reason": warning or "no SD decoder", "rows": []}
    metrics = available_metrics()
    outs: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
    refs: list[np.ndarray] = []
    ms: dict[str, list[float]] = {m: [] for m in MODES}
    steps: dict[str, int] = {m: 0 for m in MODES}
    labels: dict[str, str] = {}
    for path in paths:
        ref, sets = layer_sets(Path(path))
        refs.append(ref)
        for mode in MODES:
            t0 = time.perf_counter()
            outs[mode].append(decoder.decode(sets[mode]))
            ms[mode].append((time.perf_counter() - t0) * 1000)
            steps[mode] += decoder.last_steps
            labels[mode] = decoder.last_plan.label if decoder.last_plan else "?"
    rows = []
    for mode in MODES:
        row: dict[str, Any] = {
            "mode": mode,
            "pipeline": labels.get(mode, ""),
            "images": len(outs[mode]),
            "ms_per_image": float(np.mean(ms[mode])) if ms[mode] else None,
            "ms_per_step": sum(ms[mode]) / steps[mode] if steps[mode] else None,
        }
        for name, (fn, why) in metrics.items():
            row[name] = fn(outs[mode], refs) if fn is not None and outs[mode] else f"not available: {why}"
        rows.append(row)
    return {"available": True, "device": decoder.device, "dtype": str(decoder.dtype), "rows": rows}


def format_table(res: dict[str, Any]) -> str:
    """Human table of :func:`run`'s result."""
    if not res.get("available"):
        return f"SD decoder not available: {res.get('reason')}"
    lines = [
        f"device {res['device']} {res['dtype']}",
        "mode        pipeline                    ms/img  ms/step  lpips   dists   clip    fid",
    ]
    for r in res["rows"]:
        vals = [f"{r[k]:.4f}" if isinstance(r[k], float) else "n/a" for k in ("lpips", "dists", "clip", "fid")]
        lines.append(
            f"{r['mode']:<11} {r['pipeline']:<27} {r['ms_per_image'] or 0:7.1f} {r['ms_per_step'] or 0:8.1f}  "
            + "  ".join(vals)
        )
    reasons = {k: v for k, v in res["rows"][0].items() if isinstance(v, str) and v.startswith("not available")}
    lines += [f"  {k}: {v}" for k, v in reasons.items()]
    return "\n".join(lines)
