"""Bounded, seeded fuzzing of everything that parses bytes (bench/fuzz.py): mutated packets (structure-aware
ones re-serialised with a valid CRC, so they reach the codecs), packet sequences rendered by the preview
decoder, and mutated .lcs files. Only typed Layercast errors may come out, each input in bounded time and
memory. A longer campaign: `python -m layercast.bench.fuzz --inputs 1000000`."""

from __future__ import annotations

import resource

import pytest

from layercast.bench import fuzz


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_seeded_fuzz_campaign_finds_only_typed_errors() -> None:
    fuzz.campaign(500, seed=99)  # warm up: imports, compiled kernels, caches are not per-input memory
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = fuzz.campaign(30_000, seed=0)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    assert figures.inputs >= 30_000
    assert not figures.findings, figures.findings[:3]
    assert figures.rejects["InternalError"] == 0
    # it reached past the CRC into framing, limits and the codecs, and rebuilt images
    assert figures.rejects["LimitError"] > 0 and figures.rejects["BitstreamError"] > 0 and figures.accepted > 1000
    assert figures.slowest_s < 1.0, (figures.slowest_s, figures.slowest_kind)
    assert grown_mb < 200, grown_mb
