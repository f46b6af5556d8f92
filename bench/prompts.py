"""Prompt bench: the prompt coder vs brotli-11 and zstd-19, on prompts its model was not built from.

Sets: the held-out AGIQA-3K prompts (layercast.common.codecs.prompt_corpus's split; the model never
saw them) and, separately, the distinct prompts of an image manifest (../shared/data/aigi: short
ControlNet prompts). Bytes are payload bytes of each coder's output for the prompt alone; "ours" is
`compress_prompt` (prompt-ctx, or raw UTF-8 where that is smaller).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from layercast.common.codecs.prompt import compress_prompt, decompress_prompt
from layercast.common.codecs.prompt_corpus import load_prompts, split
from layercast.common.codecs.prompt_ctx import shipped_model
from layercast.common.errors import InputError, ModelError
from layercast.common.types import Prompt

CODERS = ("raw", "brotli11", "zstd19", "ours")


def _baselines() -> tuple[Any, Any]:
    try:
        import brotli
    except ImportError as exc:
        raise ModelError("the prompt bench needs brotli: pip install 'layercast[bench]'") from exc
    import zstandard

    return brotli, zstandard.ZstdCompressor(level=19)


def measure(prompts: list[str]) -> dict[str, Any]:
    """Totals, per-prompt bytes and timings of every coder over `prompts`."""
    brotli, zstd = _baselines()
    shipped_model()  # load the model before timing
    rows: list[dict[str, Any]] = []
    enc_s = dec_s = 0.0
    for text in prompts:
        raw = text.encode("utf-8", "surrogatepass")
        t0 = time.perf_counter()
        layer = compress_prompt(Prompt(text))
        t1 = time.perf_counter()
        back = decompress_prompt(layer.descriptor, layer.units)
        t2 = time.perf_counter()
        if back.text != text:
            raise AssertionError(f"prompt coder did not round-trip {text!r}")
        enc_s += t1 - t0
        dec_s += t2 - t1
        rows.append(
            {
                "prompt": text,
                "raw": len(raw),
                "brotli11": len(brotli.compress(raw, quality=11)),
                "zstd19": len(zstd.compress(raw)),
                "ours": layer.nbytes,
                "codec": layer.descriptor.codec,
            }
        )
    n = max(len(rows), 1)
    totals = {c: sum(r[c] for r in rows) for c in CODERS}
    return {
        "count": len(rows),
        "totals": totals,
        "ratio_brotli11": totals["ours"] / totals["brotli11"] if totals["brotli11"] else None,
        "ratio_zstd19": totals["ours"] / totals["zstd19"] if totals["zstd19"] else None,
        "ratio_raw": totals["ours"] / totals["raw"] if totals["raw"] else None,
        "encode_ms": 1e3 * enc_s / n,
        "decode_ms": 1e3 * dec_s / n,
        "per_prompt": rows,
    }


def manifest_prompts(manifest_path: Path) -> list[str]:
    """The distinct prompts of an image manifest CSV (column `prompt`), sorted."""
    try:
        with open(manifest_path, newline="", encoding="utf-8") as f:
            return sorted({row.get("prompt") or "" for row in csv.DictReader(f)})
    except OSError as exc:
        raise InputError(f"cannot read manifest {manifest_path}: {exc}") from exc


def run(csv_path: Path, manifest_path: Path | None) -> dict[str, Any]:
    """Bench the prompt coder on the held-out prompts of `csv_path` (and the manifest's prompts)."""
    build, held_out = split(load_prompts(csv_path))
    if not held_out:
        raise InputError(f"{csv_path} has no held-out prompts to measure on")
    result: dict[str, Any] = {
        "model_version": shipped_model().version,
        "build_prompts": len(build),
        "held_out": measure(held_out),
        "manifest": measure(manifest_prompts(manifest_path)) if manifest_path is not None else None,
    }
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of `run`'s result."""
    head = f"{'set':<10}{'n':>5}" + "".join(f"{c:>10}" for c in CODERS)
    head += f"{'/brotli':>9}{'/zstd':>8}{'enc ms':>8}{'dec ms':>8}"
    lines = [f"prompt model v{result['model_version']} (built from {result['build_prompts']} prompts)", head]
    for name in ("held_out", "manifest"):
        m = result.get(name)
        if not m:
            continue
        t = m["totals"]
        row = f"{name:<10}{m['count']:>5}" + "".join(f"{t[c]:>10}" for c in CODERS)
        rb = m["ratio_brotli11"]
        rz = m["ratio_zstd19"]
        row += f"{rb:>9.3f}" if rb is not None else f"{'-':>9}"
        row += f"{rz:>8.3f}" if rz is not None else f"{'-':>8}"
        row += f"{m['encode_ms']:>8.2f}{m['decode_ms']:>8.2f}"
        lines.append(row)
    return "\n".join(lines)
