"""Build the prompt coder's shipped models. Deterministic: the same corpora give the same bytes.

    python tools/build_prompt_model.py [--prompts DIR] [-o common/models/prompt_mix.bin]
    python tools/build_prompt_model.py --model ctx [--csv CSV] [-o common/models/prompt_model.bin]

Model 2 ("mix", the default; PromptParams.model_version 0): built from every public corpus in the
prompts folder (../shared/data/prompts: each *.txt and AGIQA-3K), deduplicated (see
layercast.common.codecs.prompt_corpus.build_texts). Needs numba. Measure it leave-one-corpus-out with
`python -m layercast.bench.prompts`.

Model 1 ("ctx"; model_version 1): the order-5 byte model of the AGIQA-3K build split (a prompt is held
out iff crc32(prompt) % 5 == 0). Kept so streams coded with it still decode; rebuilding it must give
the shipped file's bytes exactly (a changed model 1 would misdecode those streams).

A changed model 2 needs a new model version: streams record the version they were coded with.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from layercast.common.codecs.prompt_corpus import build_texts, load_corpora, load_prompts, split
from layercast.common.codecs.prompt_ctx import serialize_model
from layercast.common.codecs.prompt_mix import MODEL_FILE, MODEL_VERSION, build

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT.parent / "shared" / "data" / "prompts"
CTX_VERSION = 1
CTX_MAX_ORDER = 5
CTX_BETA = (2, 1)  # escape weight beta = 2 * distinct symbols (chosen by 5-fold CV on the build split)


def build_ctx(csv_path: Path) -> bytes:
    """Model 1's file bytes, built from the build split of `csv_path`."""
    build_prompts, _ = split(load_prompts(csv_path))
    return serialize_model(CTX_VERSION, CTX_MAX_ORDER, CTX_BETA[0], CTX_BETA[1], build_prompts)


def build_mix(folder: Path) -> bytes:
    """Model 2's file bytes, built from every corpus in `folder`."""
    return build(build_texts(load_corpora(folder)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mix", "ctx"], default="mix", help="which model (default mix)")
    parser.add_argument("--prompts", type=Path, default=PROMPTS, help="prompts folder (model mix)")
    parser.add_argument("--csv", type=Path, default=PROMPTS / "agiqa3k.csv", help="AGIQA-3K CSV (model ctx)")
    parser.add_argument("-o", "--out", type=Path, help="output file (default: the shipped model's path)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.model == "mix":
        data = build_mix(args.prompts)
        out = args.out or ROOT / "common" / MODEL_FILE
        version = MODEL_VERSION
    else:
        data = build_ctx(args.csv)
        out = args.out or ROOT / "common" / "models" / "prompt_model.bin"
        version = CTX_VERSION
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes, model version {version}, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
