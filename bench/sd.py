"""`layercast bench --decoder sd`: the generative decoder per layer mode (prompt, +structure, +colour).

Two runs share the rows' modes:

* :func:`run` (real weights, the `decode` options: --model, --controlnet, --adapter, --sd-config, ...): each
  image decoded in every mode; per row the pipeline that really ran (``SDDecoder.plan(layers).label``, with the
  plan's notes when a layer had no model), time per image and per step, and quality against the originals where
  the metric's library and weights are local: LPIPS/DISTS (pyiqa), CLIP image similarity (a transformers CLIP
  folder), FID (torchmetrics, from :data:`FID_MIN_IMAGES` images). Anything else says why not.
* :func:`run_random_weights` (``--random-weights``): full-size SD 1.5 + ControlNet canny + colour T2I-Adapter
  built from the shipped published configs with random weights (no downloads), timed per mode, steps/scheduler,
  batch and torch.compile: seconds per image, images/s, peak GPU memory (or peak RSS on a CPU).

Nothing is downloaded: metric models load with the Hugging Face hub offline and every host name but localhost
refused, so weights that are not local give "not available offline" instead of a download. ``--metric-weights
DIR`` points them at local weights: ``DIR/torch`` is used as TORCH_HOME (the torch hub cache that pyiqa's
LPIPS/DISTS weights, their torchvision backbones and FID's Inception weights live in: ``DIR/torch/hub/...``)
and ``DIR/clip`` as the CLIP folder (else the LAYERCAST_CLIP environment variable).
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from layercast.common.types import EdgeMap, LayerSet, Prompt
from layercast.proto import pb
from layercast.receiver.models import SDConfig

MODES = ("prompt", "+structure", "+colour")
"""Rows, as in the seed paper's table: prompt only, prompt + edges, prompt + edges + colormap."""

FID_MIN_IMAGES = 50
"""FID from fewer images is dominated by its estimator's bias; below this it is not computed."""

RANDOM_SIZE = 512
"""Side of the square image `run_random_weights` asks for (SD 1.5's native size)."""

RANDOM_PROMPT = "a photo of a red cat sitting on a wooden table, soft light"
"""Prompt for the random-weights run when the image carries none (the text encoder runs either way)."""

Metric = Callable[[list[np.ndarray], list[np.ndarray]], float]


def layer_sets(
    path: Path, *, prompt: str | None = None, size: int | None = None
) -> tuple[np.ndarray, dict[str, LayerSet]]:
    """The original image and its LayerSet per mode (prompt, Canny edges, 8-cell colormap).

    The prompt is `prompt` when given, else the image's generation metadata. `size` resizes the image to a
    size x size square first (the random-weights run times every model at one size).
    """
    import cv2

    from layercast.sender.extract_edges import canny_edges
    from layercast.sender.extract_prompt import prompt_for
    from layercast.sender.extract_texture import colormap
    from layercast.sender.image_io import load_image

    img = load_image(path)
    rgb = img.rgb
    if size is not None:
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    semantic, _ = prompt_for(img.info, prompt)
    header = pb.ImageHeader(width=rgb.shape[1], height=rgb.shape[0], seed=0)
    edges = EdgeMap(canny_edges(rgb, 192))
    cm = colormap(rgb)
    return rgb, {
        "prompt": LayerSet(header, semantic),
        "+structure": LayerSet(header, semantic, edges),
        "+colour": LayerSet(header, semantic, edges, cm),
    }


def _with_seed(layers: LayerSet, seed: int) -> LayerSet:
    header = pb.ImageHeader()
    header.CopyFrom(layers.header)
    header.seed = seed
    return LayerSet(header, layers.prompt, layers.structure, layers.texture)


# -- metrics (never downloaded) --------------------------------------------------------------------------


@contextmanager
def offline_metrics(weights_dir: Path | None = None) -> Iterator[None]:
    """While metric models load: the hub offline, TORCH_HOME = `weights_dir`/torch, host names refused.

    Only localhost resolves, so a library that would download its weights (pyiqa and torchvision through
    torch.hub, torchmetrics' FID Inception) fails at once instead; the caller reports it as not available
    offline. Everything is restored on exit.
    """
    real_getaddrinfo = socket.getaddrinfo

    def refuse(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (None, "localhost", "127.0.0.1", "::1"):
            return real_getaddrinfo(host, *args, **kwargs)
        raise socket.gaierror(f"no downloads in the bench: {host} not contacted")

    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if weights_dir is not None:
        env["TORCH_HOME"] = str(weights_dir / "torch")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    socket.getaddrinfo = refuse
    try:
        yield
    finally:
        socket.getaddrinfo = real_getaddrinfo
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _offline_reason(what: str, e: BaseException, weights_dir: Path | None) -> str:
    where = f"{weights_dir / 'torch'}/hub" if weights_dir else "the torch hub cache (or pass --metric-weights DIR)"
    return f"not available offline: {what} not in {where} ({type(e).__name__}: {str(e)[:120]})"


def _pyiqa_metric(name: str, device: str, weights_dir: Path | None) -> tuple[Metric | None, str]:
    try:
        import pyiqa
        import torch
    except ImportError:
        return None, "not available: pyiqa not installed (pip install pyiqa; its weights then go in --metric-weights)"
    try:
        fn = pyiqa.create_metric(name, device=device)
    except Exception as e:  # pyiqa raises whatever its download or load path raises; all mean "not local"
        return None, _offline_reason(f"{name} weights", e, weights_dir)

    def metric(out: list[np.ndarray], ref: list[np.ndarray]) -> float:
        def t(a: np.ndarray) -> Any:
            return torch.from_numpy(a).permute(2, 0, 1)[None].float().to(device) / 255.0

        return float(np.mean([float(fn(t(o), t(r))) for o, r in zip(out, ref, strict=True)]))

    return metric, ""


def _clip_metric(device: str, weights_dir: Path | None) -> tuple[Metric | None, str]:
    folder = str(weights_dir / "clip") if weights_dir and (weights_dir / "clip").is_dir() else None
    folder = folder or os.environ.get("LAYERCAST_CLIP")
    if not folder or not Path(folder).is_dir():
        return None, (
            "not available offline: no CLIP folder (put a transformers CLIP export, e.g. openai/clip-vit-base-patch32,"
            " in --metric-weights DIR/clip or name it in LAYERCAST_CLIP)"
        )
    import torch
    from transformers import CLIPModel, CLIPProcessor

    try:
        model: Any = CLIPModel.from_pretrained(folder, local_files_only=True)
        model = model.to(device).eval()
        proc = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        return None, f"not available offline: CLIP folder {folder} could not be loaded ({type(e).__name__})"

    def metric(out: list[np.ndarray], ref: list[np.ndarray]) -> float:
        with torch.inference_mode():
            fa = model.get_image_features(**proc(images=out, return_tensors="pt").to(device))
            fb = model.get_image_features(**proc(images=ref, return_tensors="pt").to(device))
        return float(torch.nn.functional.cosine_similarity(fa, fb).mean())

    return metric, ""


def _fid_metric(weights_dir: Path | None) -> tuple[Metric | None, str]:
    try:
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        return None, "not available: torchmetrics[image] not installed"
    try:
        FrechetInceptionDistance(feature=2048)
    except Exception as e:  # torch-fidelity's download path raises URLError/OSError/RuntimeError: none local
        return None, _offline_reason("FID Inception weights", e, weights_dir)

    def metric(out: list[np.ndarray], ref: list[np.ndarray]) -> float:
        fid = FrechetInceptionDistance(feature=2048)

        def t(xs: list[np.ndarray]) -> Any:
            return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2)

        fid.update(t(ref), real=True)
        fid.update(t(out), real=False)
        return float(fid.compute())

    return metric, ""


def available_metrics(
    images: int, *, device: str = "cpu", weights_dir: Path | None = None
) -> dict[str, tuple[Metric | None, str]]:
    """Each metric: (function, "") when usable here for `images` images, else (None, why not)."""
    with offline_metrics(weights_dir):
        out = {
            "lpips": _pyiqa_metric("lpips", device, weights_dir),
            "dists": _pyiqa_metric("dists", device, weights_dir),
            "clip": _clip_metric(device, weights_dir),
        }
        if images >= FID_MIN_IMAGES:
            out["fid"] = _fid_metric(weights_dir)
        else:
            out["fid"] = (None, f"not computed: {images} images, FID needs >= {FID_MIN_IMAGES}")
    return out


# -- quality run (real weights) ----------------------------------------------------------------------------


def run(
    paths: Sequence[Path],
    decoder: Any,
    *,
    warning: str | None = None,
    prompts: Mapping[str, str] | None = None,
    metric_weights: str | None = None,
) -> dict[str, Any]:
    """Decode each image in every layer mode with the SD decoder; timings, pipelines and metrics per mode.

    `decoder` comes from the CLI's decoder options (`make_decoder`); a preview fallback (models missing) gives
    {"available": False, "reason": `warning`}. `prompts` maps a file name to its prompt (a manifest).
    """
    from layercast.receiver.sd import SDDecoder

    if not isinstance(decoder, SDDecoder):
        return {"available": False, "reason": warning or "no SD decoder", "rows": []}
    weights_dir = Path(metric_weights).expanduser() if metric_weights else None
    outs: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
    refs: list[np.ndarray] = []
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    steps: dict[str, int] = dict.fromkeys(MODES, 0)
    labels: dict[str, set[str]] = {m: set() for m in MODES}
    notes: dict[str, set[str]] = {m: set() for m in MODES}
    for path in paths:
        p = Path(path)
        ref, sets = layer_sets(p, prompt=(prompts or {}).get(p.name))
        refs.append(ref)
        for mode in MODES:
            plan = decoder.plan(sets[mode])
            t0 = time.perf_counter()
            outs[mode].append(decoder.decode(sets[mode]))
            seconds[mode].append(time.perf_counter() - t0)
            steps[mode] += decoder.last_steps
            labels[mode].add(decoder.last_plan.label if decoder.last_plan else plan.label)
            info = getattr(decoder, "last_info", None)  # the plan's notes and the run's, where reported
            notes[mode].update(info.notes if info is not None else plan.notes)
    metrics = available_metrics(len(refs), device=decoder.device, weights_dir=weights_dir)
    rows = []
    for mode in MODES:
        row: dict[str, Any] = {
            "mode": mode,
            "pipeline": "/".join(sorted(labels[mode])),
            "notes": sorted(notes[mode]),
            "images": len(outs[mode]),
            "seconds_per_image": float(np.mean(seconds[mode])) if seconds[mode] else None,
            "ms_per_image": float(np.mean(seconds[mode])) * 1000 if seconds[mode] else None,
            "ms_per_step": sum(seconds[mode]) * 1000 / steps[mode] if steps[mode] else None,
        }
        for name, (fn, why) in metrics.items():
            row[name] = fn(outs[mode], refs) if fn is not None and outs[mode] else why
        rows.append(row)
    return {
        "available": True,
        "random_weights": False,
        "device": decoder.device,
        "dtype": str(decoder.dtype),
        "steps": decoder.config.effective_steps,
        "rows": rows,
    }


# -- random-weights timing run -----------------------------------------------------------------------------


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _variants(
    config: SDConfig, *, cuda: bool, limit: int | None
) -> tuple[list[tuple[int, str | None]], list[int], list[bool]]:
    """(steps, scheduler) pairs, batch sizes and compile settings to time."""
    # default: the live path (LCM, 4 steps) and the quality path (20 steps, the configured sampler)
    steps = [(config.steps, config.scheduler)] if config.steps is not None else [(4, "lcm"), (20, config.scheduler)]
    batches = [b for b in (1, 4) if limit is None or b <= limit] or [1]
    compiles = [True] if config.compile else ([False, True] if cuda else [False])
    return steps, batches, compiles


def _time_batch(decoder: Any, batch: list[LayerSet], *, cuda: bool, warmup: bool, repeats: int) -> dict[str, Any]:
    """Seconds of `decoder.decode_batch(batch)`: median of `repeats` runs after an untimed warm-up (CUDA)."""
    import torch

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    warmup_s = None
    if warmup:
        sync()
        t0 = time.perf_counter()
        decoder.decode_batch(batch)
        sync()
        warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    images: list[np.ndarray] = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        images = decoder.decode_batch(batch)
        sync()
        times.append(time.perf_counter() - t0)
    elapsed = statistics.median(times)
    shape = images[0].shape if images else None
    info = getattr(decoder, "last_info", None)  # the generation size, where the decoder reports it
    return {
        "generation_size": list(info.size) if info is not None else None,
        "warmup_s": None if warmup_s is None else round(warmup_s, 3),
        "runs_s": [round(t, 4) for t in times],
        "seconds_per_image": elapsed / len(batch),
        "images_per_s": len(batch) / elapsed,
        "seconds_per_step": elapsed / max(1, decoder.last_steps),
        "steps_run": decoder.last_steps,
        "output_shape": list(shape) if shape is not None else None,
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _time_variants(
    decoder: Any, sets: Mapping[str, LayerSet], batches: Sequence[int], *, cuda: bool, repeats: int
) -> list[dict[str, Any]]:
    """One row per batch size and mode for a decoder (its config fixes steps, scheduler and compile)."""
    import torch

    from layercast.common.errors import ModelError

    cfg = decoder.config
    rows = []
    for batch_size in batches:
        for mode in MODES:
            layers = sets[mode]
            row: dict[str, Any] = {
                "mode": mode,
                "pipeline": decoder.plan(layers).label,
                "steps": cfg.effective_steps,
                "scheduler": type(decoder.base.scheduler).__name__,
                "guidance": cfg.guidance,
                "batch": batch_size,
                "compile": cfg.compile,
            }
            batch = [_with_seed(layers, seed) for seed in range(batch_size)]
            try:
                row.update(_time_batch(decoder, batch, cuda=cuda, warmup=cuda, repeats=repeats))
            except (RuntimeError, ValueError, ModelError) as e:  # out of memory, no compiler, ...: say so, go on
                row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
                if cuda:
                    torch.cuda.empty_cache()
            rows.append(row)
    return rows


def run_random_weights(
    path: Path,
    config: SDConfig,
    *,
    limit: int | None = None,
    prompt: str | None = None,
    repeats: int | None = None,
) -> dict[str, Any]:
    """Time full-size random-weight models through SDDecoder in every mode and variant (see :func:`_variants`).

    Variants: steps (`config.steps` if set, else 4 with the LCM scheduler and 20 with the configured one),
    batch 1 and 4 (up to `limit`), torch.compile off and on (CUDA; only on with `config.compile`). CUDA: one
    untimed warm-up per variant (compilation lands there, reported as warmup_s), median of 3 timed runs,
    synchronised, peak memory from torch.cuda.max_memory_allocated. CPU: one timed run, no warm-up, peak RSS.
    The layers come from the image at `path` resized to RANDOM_SIZE (the output size; the decoder generates at
    its own size, reported per row); a failing variant (out of memory, compile unavailable) is a row with "error"
    and the rest still run.
    """
    from layercast.receiver.models import torch_device_dtype
    from layercast.receiver.random_weights import build_random_models

    device, dtype = torch_device_dtype(config.device, config.dtype)
    cuda = device.startswith("cuda")
    _, sets = layer_sets(Path(path), prompt=prompt, size=RANDOM_SIZE)
    if sets["prompt"].prompt is None or not sets["prompt"].prompt.text:
        sets = {m: LayerSet(ls.header, Prompt(RANDOM_PROMPT), ls.structure, ls.texture) for m, ls in sets.items()}
    models = build_random_models(controlnets=("canny",), adapters=("color",), device=config.device, dtype=config.dtype)
    steps, batches, compiles = _variants(config, cuda=cuda, limit=limit)
    repeats = repeats or (3 if cuda else 1)
    rows: list[dict[str, Any]] = []
    for comp in compiles:  # uncompiled first: compiling is in place, once
        for n, scheduler in steps:
            cfg = replace(config, steps=n, scheduler=scheduler, compile=comp)
            decoder = models.decoder(cfg)
            try:
                rows += _time_variants(decoder, sets, batches, cuda=cuda, repeats=repeats)
            finally:
                decoder.close()  # its hooks off the shared modules
    size = [sets["prompt"].width, sets["prompt"].height]
    return {
        "available": True,
        "random_weights": True,
        "note": "random weights from the shipped published configs: timings and memory only, the images are noise",
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "image": Path(path).name,
        "warmup": cuda,
        "repeats": repeats,
        "build_s": models.build_s,
        "params_m": models.params_m,
        "sources": models.sources,
        "rows": rows,
    }


# -- tables ------------------------------------------------------------------------------------------------


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"


def _format_random(res: dict[str, Any]) -> str:
    build = res["build_s"]
    parts = ", ".join(f"{k} {res['params_m'][k]:.0f}M {v:.1f}s" for k, v in build.items() if k != "total")
    w, h = res["size"] or (0, 0)
    lines = [
        f"random weights, {res['device']} {res['dtype']}, {w}x{h}: built in {build['total']:.1f} s ({parts})",
        "mode        pipeline                        steps scheduler          batch compile   s/img   img/s  s/step"
        "  peak GPU MB  peak RSS MB",
    ]
    for r in res["rows"]:
        head = f"{r['mode']:<11} {r['pipeline']:<31} {r['steps']:>5} {r['scheduler']:<18} {r['batch']:>5}"
        head += f" {r['compile']!s:<7}"
        if "error" in r:
            lines.append(f"{head} error: {r['error']}")
            continue
        lines.append(
            f"{head} {_num(r['seconds_per_image'], '7.3f')} {_num(r['images_per_s'], '7.2f')}"
            f" {_num(r['seconds_per_step'], '7.3f')} {_num(r['peak_gpu_mb'], '12.0f')}"
            f" {_num(r['peak_rss_mb'], '12.0f')}"
        )
    lines.append(f"  {res['note']}")
    return "\n".join(lines)


def format_table(res: dict[str, Any]) -> str:
    """Human table of :func:`run`'s or :func:`run_random_weights`'s result."""
    if not res.get("available"):
        return f"SD decoder not available: {res.get('reason')}"
    if res.get("random_weights"):
        return _format_random(res)
    lines = [
        f"device {res['device']} {res['dtype']}, {res['steps']} steps",
        "mode        pipeline                    ms/img  ms/step  lpips   dists   clip    fid",
    ]
    for r in res["rows"]:
        vals = [_num(r[k], ".4f") for k in ("lpips", "dists", "clip", "fid")]
        lines.append(
            f"{r['mode']:<11} {r['pipeline']:<27} {_num(r['ms_per_image'], '7.1f')} {_num(r['ms_per_step'], '8.1f')}  "
            + "  ".join(f"{v:<6}" for v in vals)
        )
        lines += [f"  {r['mode']}: {note}" for note in r["notes"]]
    reasons = {k: v for k, v in res["rows"][0].items() if k in ("lpips", "dists", "clip", "fid") and isinstance(v, str)}
    lines += [f"  {k}: {v}" for k, v in reasons.items()]
    return "\n".join(lines)
