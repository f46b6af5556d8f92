"""The prompt corpus (AGIQA-3K) and its fixed build / held-out split.

The prompt coder's model is built from AGIQA-3K prompts and measured on prompts it was not built
from. One rule, used by the model builder, the bench and the tests: a distinct full prompt is HELD OUT
iff ``zlib.crc32(prompt.encode("utf-8")) % 5 == 0``.

The full generation prompt of a row is the ``prompt`` column followed by the non-empty ``adj1``,
``adj2`` and ``style`` columns, joined with ", ". AGIQA-3K's ``prompt`` column already ends with that
tail (e.g. "a grand stag in a fantasy forest, realistic style" with style "realistic style"); then it
is used as it is, so the tail is never doubled.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from layercast.common.errors import InputError

HOLDOUT_MODULUS = 5
"""A prompt is held out iff crc32(prompt) % HOLDOUT_MODULUS == 0 (about one prompt in five)."""

TAIL_COLUMNS = ("adj1", "adj2", "style")
"""The AGIQA-3K columns appended to the prompt, in this order, when non-empty."""


def full_prompt(row: Mapping[str, str]) -> str:
    """The full generation prompt of an AGIQA-3K row: prompt + non-empty adj1, adj2, style, ", "-joined."""
    base = (row.get("prompt") or "").strip()
    extras = [(row.get(c) or "").strip() for c in TAIL_COLUMNS]
    tail = ", ".join(e for e in extras if e)
    if not tail or base.endswith(", " + tail):
        return base
    return f"{base}, {tail}" if base else tail


def is_held_out(prompt: str) -> bool:
    """True iff the prompt is in the held-out set (never used to build the model)."""
    return zlib.crc32(prompt.encode("utf-8", "surrogatepass")) % HOLDOUT_MODULUS == 0


def load_prompts(csv_path: Path) -> list[str]:
    """The distinct full prompts of an AGIQA-3K style CSV, sorted (deterministic order)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "prompt" not in reader.fieldnames:
                raise InputError(f"{csv_path} has no 'prompt' column (expected AGIQA-3K: name,prompt,...)")
            prompts = {full_prompt(row) for row in reader}
    except OSError as exc:
        raise InputError(f"cannot read prompt corpus {csv_path}: {exc}") from exc
    prompts.discard("")
    return sorted(prompts)


def split(prompts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(build, held_out): the prompts the model may be built from and those it must never see."""
    build: list[str] = []
    held: list[str] = []
    for p in prompts:
        (held if is_held_out(p) else build).append(p)
    return build, held
