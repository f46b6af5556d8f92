"""`layercast bench`: every part of the bench in one run, baselines measured alongside.

Parts: images (Layercast vs JPEG/WebP/AVIF, lowest quality and matched bytes), prompts (prompt coder vs
brotli-11/zstd-19 on held-out prompts), edges (edge coder vs JBIG85/PNG on held-out maps), stream
(time to first preview / full quality over an emulated thin link, throughput, overhead), sd (generative
decoder per layer mode, where models exist; or, with --random-weights, full-size models with random weights
timed per mode, steps, batch and torch.compile). Writes results.json and rd.png into --out.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

from layercast.common.errors import InputError
from layercast.progress import Progress

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SD_IMAGES = 8
"""Images the sd part decodes (in every mode) when --limit is not given."""


def _default_dir() -> Path | None:
    for cand in (Path("../shared/data/aigi"), SHARED / "aigi"):
        if cand.is_dir():
            return cand
    return None


def _manifest_prompts(folder: Path) -> dict[str, str]:
    manifest = folder / "manifest.csv"
    if not manifest.exists():
        return {}
    with open(manifest, newline="") as f:
        return {row["file"]: row["prompt"] for row in csv.DictReader(f)}


def run_bench(args: argparse.Namespace) -> int:
    """Run the parts not skipped; print tables (or JSON); write results.json and rd.png."""
    from layercast.sender.image_io import IMAGE_EXTS

    folder = Path(args.dir) if args.dir else _default_dir()
    if folder is None or not folder.is_dir():
        raise InputError("bench needs an image folder: layercast bench DIR (../shared/data/aigi was not found)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        raise InputError(f"no images in {folder}")
    prompts_dir = Path(args.prompts) if args.prompts else folder.parent / "prompts"
    results: dict[str, Any] = {"folder": str(folder), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tables: list[str] = []
    skip = set(args.skip)
    random_weights = bool(getattr(args, "random_weights", False))
    if random_weights:
        if args.decoder != "sd":
            raise InputError("--random-weights times the Stable Diffusion decoder: add --decoder sd")
        skip |= {"images", "prompts", "edges", "stream"}  # the other parts do not use the SD models

    @functools.cache
    def sd_decoder() -> tuple[Any, str | None]:
        """The `--decoder sd` decoder (decode's options), loaded once for the images and sd parts; it falls
        back to the preview decoder, with the warning, when its models cannot load."""
        from layercast.cli_options import make_decoder

        decoder, warning = make_decoder(args)
        if warning:
            print(f"layercast: warning: {warning}", file=sys.stderr)
        return decoder, warning

    if "images" not in skip:
        from layercast.bench import images

        decoder = sd_decoder()[0] if args.decoder == "sd" else None
        progress = Progress(len(paths), "bench images")
        res = images.run(
            paths,
            _manifest_prompts(folder),
            decoder=decoder,
            progress=lambda note: progress.update(note=note),
        )
        results["images"] = res
        tables.append("== images ==\n" + images.format_table(res))
        if images.plot(res, out / "rd.png"):
            results["plot"] = str(out / "rd.png")
    if "prompts" not in skip:
        if prompts_dir.exists():
            from layercast.bench import prompts

            manifest = folder / "manifest.csv" if (folder / "manifest.csv").exists() else None
            res = prompts.run(prompts_dir, manifest, cache_dir=out / "prompt-loco")
            results["prompts"] = res
            tables.append("== prompts ==\n" + prompts.format_table(res))
        else:
            tables.append(f"== prompts ==\nskipped: no prompt corpus at {prompts_dir}")
    if "edges" not in skip:
        from layercast.bench import edges

        res = edges.run(folder)
        results["edges"] = res
        tables.append("== edges ==\n" + edges.format_table(res))
    if "stream" not in skip:
        from layercast.bench import stream

        res = stream.run(paths[: min(len(paths), 40)], prompts=_manifest_prompts(folder))
        results["stream"] = res
        tables.append("== stream ==\n" + stream.format_table(res))
    if "sd" not in skip and args.decoder == "sd":
        from layercast.bench import sd

        if random_weights:
            from layercast.receiver.models import config_from_args

            prompt = _manifest_prompts(folder).get(paths[0].name)
            res = sd.run_random_weights(paths[0], config_from_args(args), limit=args.limit, prompt=prompt)
        else:
            decoder, warning = sd_decoder()
            res = sd.run(
                paths[: args.limit or SD_IMAGES],
                decoder,
                warning=warning,
                prompts=_manifest_prompts(folder),
                metric_weights=getattr(args, "metric_weights", None),
            )
        results["sd"] = res
        tables.append("== sd ==\n" + sd.format_table(res))

    (out / "results.json").write_text(json.dumps(results, indent=1, default=_jsonable))
    if args.json:
        print(json.dumps(results, default=_jsonable))
    else:
        print("\n\n".join(tables))
        print(f"\nwrote {out / 'results.json'}" + (f" and {results['plot']}" if "plot" in results else ""))
    return 0


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, float) and obj == float("inf"):
        return "inf"
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)
