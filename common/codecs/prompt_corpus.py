"""The public prompt corpora the prompt coder's models are built from, and how they are split.

Prompt model 2 ("mix", prompt_mix) is built from every public corpus in a prompts folder
(../shared/data/prompts: one prompt per line in each ``*.txt``, plus the AGIQA-3K CSV) and measured
leave-one-corpus-out (LOCO): a figure on a corpus counts only when the model was built without it.
`build_texts` gives the build set: every prompt of the folder, deduplicated case- and
whitespace-insensitively across files (first occurrence in corpus-name order kept), minus, for a LOCO
build, every prompt that also occurs (by the same key) in the left-out corpus.

Prompt model 1 ("ctx", prompt_ctx) was built from AGIQA-3K alone with a fixed split: a distinct full
prompt is HELD OUT iff ``zlib.crc32(prompt.encode("utf-8")) % 5 == 0`` (`is_held_out`, `split`).

The full generation prompt of an AGIQA-3K row is the ``prompt`` column followed by the non-empty
``adj1``, ``adj2`` and ``style`` columns, joined with ", ". AGIQA-3K's ``prompt`` column already ends
with that tail (e.g. "a grand stag in a fantasy forest, realistic style" with style "realistic style");
then it is used as it is, so the tail is never doubled.
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

AGIQA_CSV = "agiqa3k.csv"
"""The AGIQA-3K file of a prompts folder (corpus name "agiqa3k"); every other corpus is a ``*.txt``."""


def full_prompt(row: Mapping[str, str]) -> str:
    """The full generation prompt of an AGIQA-3K row: prompt + non-empty adj1, adj2, style, ", "-joined."""
    base = (row.get("prompt") or "").strip()
    extras = [(row.get(c) or "").strip() for c in TAIL_COLUMNS]
    tail = ", ".join(e for e in extras if e)
    if not tail or base.endswith(", " + tail):
        return base
    return f"{base}, {tail}" if base else tail


def is_held_out(prompt: str) -> bool:
    """True iff the prompt is in model 1's held-out set (never used to build model 1)."""
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
    """(build, held_out) of model 1: the prompts it was built from and those it never saw."""
    build: list[str] = []
    held: list[str] = []
    for p in prompts:
        (held if is_held_out(p) else build).append(p)
    return build, held


def load_text_corpus(path: Path) -> list[str]:
    """The prompts of a one-prompt-per-line UTF-8 file, in file order (empty lines skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read prompt corpus {path}: {exc}") from exc
    return [line for line in text.split("\n") if line.strip()]


def load_corpora(folder: Path) -> dict[str, list[str]]:
    """Every public corpus of a prompts folder by name (file stem), in name order: each ``*.txt`` and
    AGIQA-3K's distinct full prompts. InputError when the folder holds none."""
    paths = sorted(folder.glob("*.txt"))
    corpora = {p.stem: load_text_corpus(p) for p in paths}
    if (folder / AGIQA_CSV).exists():
        corpora[Path(AGIQA_CSV).stem] = load_prompts(folder / AGIQA_CSV)
    if not corpora:
        raise InputError(f"no prompt corpora (*.txt, {AGIQA_CSV}) in {folder}")
    return dict(sorted(corpora.items()))


def dedupe_key(prompt: str) -> str:
    """Two prompts are the same prompt when their keys are equal: casefolded, whitespace collapsed."""
    return " ".join(prompt.casefold().split())


def build_texts(corpora: Mapping[str, list[str]], leave_out: str | None = None) -> list[str]:
    """The prompts a model is built from: every corpus but `leave_out`, deduplicated by `dedupe_key`
    (first occurrence in corpus-name order kept), without any prompt whose key is in `leave_out`."""
    if leave_out is not None and leave_out not in corpora:
        raise InputError(f"no corpus named {leave_out!r} (have: {', '.join(sorted(corpora))})")
    seen = {dedupe_key(p) for p in corpora[leave_out]} if leave_out is not None else set()
    out: list[str] = []
    for name in sorted(corpora):
        if name == leave_out:
            continue
        for p in corpora[name]:
            k = dedupe_key(p)
            if k not in seen:
                seen.add(k)
                out.append(p)
    return out
