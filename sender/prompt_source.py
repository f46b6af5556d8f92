"""Prompts for images that carry none in their metadata: a prompts file and sidecar text files.

A **prompts file** (`--prompts FILE`) is CSV or JSON lines:

    file,prompt,negative                      # CSV; the header row is optional, the negative column too
    bird.png,"a small bird on a branch",blurry
    {"file": "bird.png", "prompt": "a small bird on a branch", "negative": "blurry"}   # JSON lines

CSV headers may name the columns `file`/`image`/`filename`/`path`/`name` and `prompt`/`text`/`caption` and
`negative`/`negative_prompt` in any order, so a data set's own manifest (e.g. `file,width,height,prompt,...`)
works as it is. An entry matches an image by its path as written, its path relative to the prompts file's
folder, or its file name.

A **sidecar** is a text file beside the image: `photo.txt` or `photo.png.txt`. Its text is the prompt; a line
starting `negative:` starts the negative prompt (the format `layercast decode --layer semantic` writes).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from layercast.common import limits
from layercast.common.errors import InputError
from layercast.common.types import Prompt

FILE_COLUMNS = ("file", "image", "filename", "path", "name")
PROMPT_COLUMNS = ("prompt", "text", "caption")
NEGATIVE_COLUMNS = ("negative", "negative_prompt")
MAX_PROMPTS_FILE_BYTES = 256 * 2**20
"""A prompts file larger than this is refused (it is read into memory)."""


@dataclass
class PromptBook:
    """Prompts by image, read from a prompts file (see the module docstring)."""

    source: str = ""
    by_path: dict[str, Prompt] = field(default_factory=dict)
    by_name: dict[str, Prompt | None] = field(default_factory=dict)
    """File name -> prompt; None where two entries share a file name with different prompts (ambiguous)."""
    base: Path | None = None

    def add(self, file: str, prompt: Prompt) -> None:
        """Add one entry."""
        key = file.strip().replace("\\", "/")
        if not key:
            raise InputError(f"{self.source}: an entry has an empty file name")
        self.by_path[key] = prompt
        name = key.rsplit("/", 1)[-1]
        if name in self.by_name and self.by_name[name] != prompt:
            self.by_name[name] = None
        else:
            self.by_name[name] = prompt

    def get(self, path: str | Path) -> Prompt | None:
        """The prompt of the image at `path`, or None when the book has no (unambiguous) entry for it."""
        p = Path(path)
        keys = [str(path).replace("\\", "/"), p.as_posix()]
        if self.base is not None:
            with contextlib.suppress(ValueError, OSError):
                keys.append(p.resolve().relative_to(self.base.resolve()).as_posix())
        for key in keys:
            if key in self.by_path:
                return self.by_path[key]
        return self.by_name.get(p.name)

    def __len__(self) -> int:
        return len(self.by_path)


def load_prompts(path: str | Path) -> PromptBook:
    """Read a prompts file (CSV or JSON lines). InputError with the line number on anything malformed."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_PROMPTS_FILE_BYTES:
            raise InputError(f"{p}: prompts file larger than {MAX_PROMPTS_FILE_BYTES >> 20} MiB")
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{p}: no such prompts file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: prompts file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read the prompts file ({exc.strerror or exc})") from None
    book = PromptBook(source=str(p), base=p.parent)
    first = text.lstrip()[:1]
    if p.suffix.lower() in (".jsonl", ".ndjson", ".json") or first == "{":
        _read_jsonl(book, text)
    else:
        _read_csv(book, text)
    if not book.by_path:
        raise InputError(f"{p}: no prompts found (expected CSV file,prompt[,negative] or JSON lines)")
    return book


def _entry(book: PromptBook, where: str, prompt: object, negative: object) -> Prompt:
    if not isinstance(prompt, str) or not isinstance(negative, str):
        raise InputError(f"{where}: prompt and negative must be text")
    for what, value in (("prompt", prompt), ("negative prompt", negative)):
        if len(value.encode()) > limits.MAX_PROMPT_BYTES:
            raise InputError(f"{where}: the {what} is longer than {limits.MAX_PROMPT_BYTES} bytes")
    return Prompt(" ".join(prompt.split()), " ".join(negative.split()))


def _read_jsonl(book: PromptBook, text: str) -> None:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{book.source}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: not a JSON object")
        file = next((row[k] for k in FILE_COLUMNS if k in row), None)
        prompt = next((row[k] for k in PROMPT_COLUMNS if k in row), None)
        if not isinstance(file, str) or prompt is None:
            raise InputError(f'{where}: needs a "file" and a "prompt"')
        negative = next((row[k] for k in NEGATIVE_COLUMNS if k in row), "")
        book.add(file, _entry(book, where, prompt, negative))


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


def _read_csv(book: PromptBook, text: str) -> None:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InputError(f"{book.source}: not valid CSV ({exc})") from None
    if not rows:
        return
    header = [c.strip().lower() for c in rows[0]]
    fcol, pcol = _column(header, FILE_COLUMNS), _column(header, PROMPT_COLUMNS)
    ncol = _column(header, NEGATIVE_COLUMNS)
    start = 1
    if fcol is None or pcol is None:  # no header row: file,prompt[,negative]
        fcol, pcol, ncol, start = 0, 1, 2, 0
    for n, row in enumerate(rows[start:], start + 1):
        if not any(c.strip() for c in row):
            continue
        where = f"{book.source}:{n}"
        if len(row) <= max(fcol, pcol):
            raise InputError(f"{where}: expected file,prompt[,negative], got {len(row)} column(s)")
        negative = row[ncol] if ncol is not None and ncol < len(row) else ""
        book.add(row[fcol], _entry(book, where, row[pcol], negative))


def sidecar_path(image: str | Path) -> Path | None:
    """The sidecar text file of `image` (`photo.txt`, else `photo.png.txt`), or None when neither exists."""
    p = Path(image)
    for cand in (p.with_suffix(".txt"), p.with_name(p.name + ".txt")):
        if cand != p and cand.is_file():
            return cand
    return None


def parse_prompt_text(text: str) -> Prompt:
    """A prompt from sidecar text: the text, with an optional `negative:` line starting the negative prompt."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lower().startswith("negative:"):
            neg = [line.split(":", 1)[1], *lines[i + 1 :]]
            return Prompt(" ".join(" ".join(lines[:i]).split()), " ".join(" ".join(neg).split()))
    return Prompt(" ".join(text.split()))


def read_sidecar(image: str | Path) -> Prompt | None:
    """The prompt in `image`'s sidecar file, or None when it has none. InputError on unreadable text."""
    path = sidecar_path(image)
    if path is None:
        return None
    try:
        data = path.read_bytes()[: 4 * limits.MAX_PROMPT_BYTES + 16]
        prompt = parse_prompt_text(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: sidecar prompt is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the sidecar prompt ({exc.strerror or exc})") from None
    for what, value in (("prompt", prompt.text), ("negative prompt", prompt.negative)):
        if len(value.encode()) > limits.MAX_PROMPT_BYTES:
            raise InputError(f"{path}: the {what} is longer than {limits.MAX_PROMPT_BYTES} bytes")
    return prompt
