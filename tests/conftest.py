"""Shared test fixtures: paths to the shared data set (tests that need it skip where it is absent)."""

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
