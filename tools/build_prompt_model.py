"""Build the prompt coder's static model, common/models/prompt_model.bin, from AGIQA-3K prompts.

Deterministic: the same CSV gives the same bytes. Only the build split is used (see
layercast.common.codecs.prompt_corpus: a prompt is held out iff crc32(prompt) % 5 == 0).

    python tools/build_prompt_model.py [--csv CSV] [-o common/models/prompt_model.bin]

Bump MODEL_VERSION whenever the output changes: streams record the version they were coded with.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from layercast.common.codecs.prompt_corpus import load_prompts, split
from layercast.common.codecs.prompt_ctx import serialize_model

ROOT = Path(__file__).resolve().parents[1]
MODEL_VERSION = 1
MAX_ORDER = 5
BETA = (2, 1)  # escape weight beta = 2 * distinct symbols (chosen by 5-fold CV on the build split)


def build(csv_path: Path) -> bytes:
    """The model file bytes built from the build split of `csv_path`."""
    build_prompts, _ = split(load_prompts(csv_path))
    return serialize_model(MODEL_VERSION, MAX_ORDER, BETA[0], BETA[1], build_prompts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=ROOT.parent / "shared" / "data" / "prompts" / "agiqa3k.csv")
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "common" / "models" / "prompt_model.bin")
    args = parser.parse_args(argv)
    data = build(args.csv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes, model version {MODEL_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
