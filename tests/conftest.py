"""Shared test fixtures: paths to the shared data set (tests that need it skip where it is absent), and the
checked index the compiled kernels' tests run the plain kernels with."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def shared_data() -> Path:
    """../shared/data, or skip the calling test with a reason."""
    if not (SHARED / "aigi" / "manifest.csv").exists():
        pytest.skip("shared data set ../shared/data is absent (as on a user's machine)")
    return SHARED


def aigi_manifest() -> list[dict[str, str]]:
    """Rows of ../shared/data/aigi/manifest.csv (skips when absent)."""
    with open(shared_data() / "aigi" / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def non_negative_index(i: object) -> int:
    """An array index that must be >= 0 (IndexError otherwise): what the compiled kernels assume when they
    index with np.uint64. The codec tests build the plain kernels with it."""
    n = int(i)  # type: ignore[call-overload]
    if n < 0:
        raise IndexError(f"negative index {n}")
    return n
