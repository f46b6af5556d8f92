"""Prompt bench: the prompt coder vs brotli-11 and zstd-19, leave-one-corpus-out (LOCO).

For every public corpus of the prompts folder (../shared/data/prompts: each *.txt and AGIQA-3K), a prompt
model is built with the shipped recipe from every OTHER corpus (prompt_corpus.build_texts; prompts that
also occur in the left-out corpus are dropped too) and measured on the left-out corpus. LOCO models are
deterministic and cached under `cache_dir` (bench-out/prompt-loco), keyed by a hash of their build
texts, recipe and model code; building one takes a minute or two (numba). The prompts of an image
manifest (../shared/data/aigi) are measured with the shipped model, which never saw them.

Counting is fair: "ours" is every byte the semantic layer costs in a stream (`prompt.stream_bytes`: the
units, the layer descriptor, its field tag and length, the units field and the unit length prefixes),
as `compress_prompt` codes it (prompt model 2, or raw UTF-8 where that costs less); brotli-11 and
zstd-19 are complete compressed outputs of the prompt's UTF-8 bytes. "worst+" is the largest excess of
ours over the raw UTF-8 layer on one prompt (never above 0: the escape); "model+" the largest excess of
the model's unit over the prompt's raw bytes before the escape.

    python -m layercast.bench.prompts [--prompts DIR] [--manifest CSV] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layercast.common.codecs import prompt_kernel, prompt_mix
from layercast.common.codecs.prompt import Utf8PromptCodec, compress_prompt, decompress_prompt, stream_bytes
from layercast.common.codecs.prompt_corpus import build_texts, load_corpora
from layercast.common.errors import InputError, ModelError
from layercast.common.types import Prompt

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CACHE_DIR = Path("bench-out") / "prompt-loco"
GOAL = 0.6
"""The goal: at most this ratio to brotli-11 (fair counting) on every left-out corpus."""
QUICK_CORPORA = ("drawbench", "dallemega", "dalle3_eval")
"""--quick: LOCO on these small corpora only (the others are still built from)."""


def _baselines() -> tuple[Any, Any]:
    try:
        import brotli
    except ImportError as exc:
        raise ModelError("the prompt bench needs brotli: pip install 'layercast[bench]'") from exc
    import zstandard

    return brotli, zstandard.ZstdCompressor(level=19)


def measure(prompts: Sequence[str], model: prompt_mix.MixModel | None = None, timing: bool = False) -> dict[str, Any]:
    """Totals and worst cases of every coder over `prompts`, coded with `model` (default: the shipped
    model 2); `timing`: also decode every layer and report mean encode / decode milliseconds."""
    brotli, zstd = _baselines()
    model = model or prompt_mix.shipped_mix_model()
    utf8 = Utf8PromptCodec()
    tot = {"raw": 0, "ours": 0, "brotli11": 0, "zstd19": 0, "payload": 0, "chars": 0}
    worst = model_worst = -(1 << 30)
    ctx_count = 0
    enc_s = dec_s = 0.0
    for text in prompts:
        raw = text.encode("utf-8", "surrogatepass")
        t0 = time.perf_counter()
        layer = compress_prompt(Prompt(text), model=model)
        t1 = time.perf_counter()
        if timing:
            back = decompress_prompt(layer.descriptor, layer.units, model=model)
            dec_s += time.perf_counter() - t1
            if back.text != text:
                raise AssertionError(f"prompt coder did not round-trip {text!r}")
        enc_s += t1 - t0
        ours = stream_bytes(layer)
        worst = max(worst, ours - stream_bytes(utf8.compress(Prompt(text))))
        model_worst = max(model_worst, len(model.encode(raw)) - len(raw))
        ctx_count += layer.descriptor.codec != utf8.codec_id
        tot["raw"] += len(raw)
        tot["chars"] += len(text)
        tot["ours"] += ours
        tot["payload"] += layer.nbytes
        tot["brotli11"] += len(brotli.compress(raw, quality=11))
        tot["zstd19"] += len(zstd.compress(raw))
    n = len(prompts)
    return {
        **_row(tot, n, worst if n else 0, model_worst if n else 0),
        "model_share": ctx_count / n if n else 0.0,
        "encode_ms": 1e3 * enc_s / n if n else 0.0,
        "decode_ms": 1e3 * dec_s / n if n and timing else None,
    }


def _code_hash() -> str:
    """A hash of what a built model depends on besides its texts: the model code and the recipe."""
    h = hashlib.sha256()
    for mod in (prompt_kernel, prompt_mix):
        h.update(Path(str(mod.__file__)).read_bytes())
    h.update(repr((prompt_mix.SHIPPED_SPEC, prompt_mix.BUILD_EPOCHS, prompt_mix.BUILD_EVERY)).encode())
    return h.hexdigest()


def loco_model(corpora: dict[str, list[str]], name: str, cache_dir: Path | None) -> tuple[prompt_mix.MixModel, bool]:
    """The model built from every corpus but `name` (from the cache when there); (model, was cached)."""
    texts = build_texts(corpora, leave_out=name)
    h = hashlib.sha256(_code_hash().encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\x00")
    path = cache_dir / f"{name}-{h.hexdigest()[:16]}.bin" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            return prompt_mix.parse(path.read_bytes()), True
        except ModelError:
            pass  # a damaged cache entry is rebuilt
    data = prompt_mix.build(texts)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return prompt_mix.parse(data), False


def manifest_prompts(manifest_path: Path) -> list[str]:
    """The distinct prompts of an image manifest CSV (column `prompt`), sorted."""
    try:
        with open(manifest_path, newline="", encoding="utf-8") as f:
            return sorted({row.get("prompt") or "" for row in csv.DictReader(f)})
    except OSError as exc:
        raise InputError(f"cannot read manifest {manifest_path}: {exc}") from exc


def run(
    prompts: Path,
    manifest_path: Path | None = None,
    *,
    quick: bool = False,
    cache_dir: Path | None = CACHE_DIR,
    progress: Any = None,
) -> dict[str, Any]:
    """The LOCO table over the corpora of `prompts` (a prompts folder, or a file in one, such as
    agiqa3k.csv), and the shipped model on the manifest's prompts. `quick`: LOCO on QUICK_CORPORA only."""
    folder = prompts if prompts.is_dir() else prompts.parent
    corpora = load_corpora(folder)
    names = [n for n in corpora if n in QUICK_CORPORA] if quick else list(corpora)
    loco: dict[str, Any] = {}
    built = 0
    t0 = time.perf_counter()
    skipped: dict[str, str] = {}
    for name in names:
        if progress is not None:
            progress(f"LOCO model without {name}")
        try:
            model, cached = loco_model(corpora, name, cache_dir)
        except ModelError as exc:  # no numba to build with, and nothing cached
            skipped[name] = str(exc)
            continue
        built += not cached
        loco[name] = measure(corpora[name], model)
    total = _sum_rows(list(loco.values()))
    shipped = prompt_mix.shipped_mix_model()
    probe = "a beautiful painting of a castle on a hill at sunset, highly detailed, trending on artstation, " * 2
    return {
        "model_version": shipped.version,
        "corpora": {n: len(p) for n, p in corpora.items()},
        "quick": quick,
        "loco": loco,
        "loco_skipped": skipped,
        "loco_total": total,
        "loco_models_built": built,
        "loco_seconds": time.perf_counter() - t0,
        "goal_ratio_brotli11": GOAL,
        "goal_met": bool(loco)
        and not skipped
        and all(r["ratio_brotli11"] is not None and r["ratio_brotli11"] <= GOAL for r in loco.values()),
        "manifest": measure(manifest_prompts(manifest_path), shipped, timing=True) if manifest_path else None,
        "decode_ms_200_chars": decode_ms(shipped, probe[:200]),
        "model_file_bytes": model_file_bytes(),
    }


def _row(tot: dict[str, int], n: int, worst: int, model_worst: int) -> dict[str, Any]:
    """A table row from byte totals over `n` prompts and the worst single-prompt excesses over raw."""
    return {
        "count": n,
        "mean_chars": tot["chars"] / n if n else 0.0,
        "totals": tot,
        "ratio_brotli11": tot["ours"] / tot["brotli11"] if tot["brotli11"] else None,
        "ratio_zstd19": tot["ours"] / tot["zstd19"] if tot["zstd19"] else None,
        "worst_over_raw": worst,
        "model_worst_over_raw": model_worst,
    }


def _sum_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tot = {k: sum(r["totals"][k] for r in rows) for k in ("raw", "ours", "brotli11", "zstd19", "payload", "chars")}
    return _row(
        tot,
        sum(r["count"] for r in rows),
        max((r["worst_over_raw"] for r in rows), default=0),
        max((r["model_worst_over_raw"] for r in rows), default=0),
    )


def decode_ms(model: prompt_mix.MixModel, text: str, repeat: int = 50) -> float:
    """Median milliseconds to decode one unit of `text` (after a warm-up decode)."""
    unit = model.encode(text.encode("utf-8"))
    model.decode(unit)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.decode(unit)
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def model_file_bytes() -> int:
    from importlib import resources

    return len(resources.files("layercast.common").joinpath(prompt_mix.MODEL_FILE).read_bytes())


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of `run`'s result."""
    head = (
        f"{'corpus (left out)':<28}{'n':>6}{'chars':>7}{'raw':>9}{'ours':>9}{'brotli11':>9}{'zstd19':>9}"
        f"{'/brotli':>8}{'/zstd':>7}{'worst+':>7}{'model+':>7}"
    )
    lines = [
        f"prompt model 2 (mix, model_version {result['model_version']}, file {result['model_file_bytes']} B), "
        "leave-one-corpus-out; ours = fair stream bytes (units + descriptor + framing),",
        f"baselines = complete brotli-11 / zstd-19 outputs; goal /brotli <= {result['goal_ratio_brotli11']}"
        + (" (quick: small corpora only)" if result["quick"] else ""),
        head,
    ]

    def row(name: str, m: dict[str, Any]) -> str:
        t = m["totals"]
        out = f"{name:<28}{m['count']:>6}{m['mean_chars']:>7.1f}{t['raw']:>9}{t['ours']:>9}{t['brotli11']:>9}"
        out += f"{t['zstd19']:>9}{m['ratio_brotli11'] or 0:>8.3f}{m['ratio_zstd19'] or 0:>7.3f}"
        return out + f"{m['worst_over_raw']:>7}{m['model_worst_over_raw']:>7}"

    for name, m in result["loco"].items():
        lines.append(row(name, m))
    for name, why in result.get("loco_skipped", {}).items():
        lines.append(f"{name:<28}skipped: {why}")
    if result["loco"]:
        lines.append(row("all (LOCO)", result["loco_total"]))
    if result.get("manifest"):
        lines.append(row("aigi manifest (shipped)", result["manifest"]))
    lines.append(
        f"goal met on every left-out corpus: {'yes' if result['goal_met'] else 'NO'}; LOCO models built "
        f"{result['loco_models_built']} (others cached), {result['loco_seconds']:.0f} s; decode of a "
        f"200-character prompt {result['decode_ms_200_chars']:.2f} ms"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, default=SHARED / "prompts", help="prompts folder")
    parser.add_argument("--manifest", type=Path, default=SHARED / "aigi" / "manifest.csv", help="image manifest")
    parser.add_argument("--quick", action="store_true", help=f"LOCO on {', '.join(QUICK_CORPORA)} only")
    parser.add_argument("--cache", type=Path, default=CACHE_DIR, help=f"LOCO model cache (default {CACHE_DIR})")
    parser.add_argument("--no-cache", action="store_true", help="build every LOCO model afresh, keep none")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    manifest = args.manifest if args.manifest.exists() else None
    res = run(
        args.prompts,
        manifest,
        quick=args.quick,
        cache_dir=None if args.no_cache else args.cache,
        progress=lambda note: print(note, file=sys.stderr, flush=True),
    )
    print(json.dumps(res) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
