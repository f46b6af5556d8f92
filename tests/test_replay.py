"""Replay window (64-entry sliding bitmap) and sender key loading."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layercast.common.errors import AuthError, InputError
from layercast.common.identity import camera_id
from layercast.common.replay import KeyRing, ReplayWindow, as_keyring, load_key, load_keyring

HEX = "00112233445566778899aabbccddeeff" * 2


def test_window_accepts_new_rejects_duplicates_and_too_old() -> None:
    w = ReplayWindow()
    for seq in (1, 3, 2, 100):
        w.accept(seq)
    with pytest.raises(AuthError, match="already received"):
        w.accept(100)
    w.accept(37)  # 63 behind, still inside the window
    with pytest.raises(AuthError, match="too old"):
        w.check(36)
    with pytest.raises(AuthError, match="no sequence number"):
        w.check(0)
    w.accept(1000)  # a jump clears the bitmap
    with pytest.raises(AuthError, match="too old"):
        w.check(100)
    w.accept(999)


@given(st.lists(st.integers(1, 300), max_size=200), st.integers(1, 80))
def test_window_matches_a_reference_set(seqs: list[int], size: int) -> None:
    w = ReplayWindow(size)
    seen: set[int] = set()
    top = 0
    for s in seqs:
        fresh = s not in seen and s > top - size
        try:
            w.accept(s)
            accepted = True
        except AuthError:
            accepted = False
        assert accepted == fresh
        if accepted:
            seen.add(s)
            top = max(top, s)


def test_shuffled_stream_within_the_window_is_accepted_once() -> None:
    seqs = list(range(1, 2001))
    rnd = random.Random(4)
    # local reordering up to 32 packets, well inside a 64-packet window
    for i in range(0, 2000, 32):
        chunk = seqs[i : i + 32]
        rnd.shuffle(chunk)
        seqs[i : i + 32] = chunk
    w = ReplayWindow()
    for s in seqs:
        w.accept(s)
    for s in rnd.sample(range(1937, 2001), 10):
        with pytest.raises(AuthError):
            w.accept(s)


def test_load_key_from_hex_and_files(tmp_path: Path) -> None:
    assert load_key(HEX) == bytes.fromhex(HEX)
    assert load_key("0x" + HEX) == bytes.fromhex(HEX)
    (tmp_path / "hex.key").write_text(HEX + "\n")
    assert load_key(tmp_path / "hex.key") == bytes.fromhex(HEX)
    raw = bytes(range(200, 232))
    (tmp_path / "raw.key").write_bytes(raw)
    assert load_key(str(tmp_path / "raw.key")) == raw
    with pytest.raises(InputError, match=r"16\.\.1024 bytes"):
        load_key("abcd")
    with pytest.raises(InputError, match="neither a hex key nor a readable key file"):
        load_key(str(tmp_path / "missing.key"))


def test_keyrings(tmp_path: Path) -> None:
    ring_file = tmp_path / "ring.txt"
    other = "ff" * 32
    ring_file.write_text(f"# cameras\n1 {HEX}\n2 {other}  # the roof\n* {other}\n")
    ring = load_keyring(ring_file)
    assert ring.key_for(1) == bytes.fromhex(HEX)
    assert ring.key_for(2) == ring.key_for(77) == bytes.fromhex(other)
    assert load_keyring(HEX) == KeyRing(default=bytes.fromhex(HEX))
    ring_file.write_text(f"cam1 {HEX}\n* {other}\n")
    ring = load_keyring(ring_file)
    assert ring.key_for_camera("cam1") == ring.key_for(camera_id("cam1")) == bytes.fromhex(HEX)
    assert ring.key_for_camera("cam2") == bytes.fromhex(other) and ring.per_sender
    ring_file.write_text(f"../cam1 {HEX}\n")
    with pytest.raises(InputError, match="neither a camera name"):
        load_keyring(ring_file)
    assert not as_keyring(None).keyed
    assert as_keyring({3: bytes(16)}).key_for(3) == bytes(16)
    assert as_keyring({3: bytes(16)}).key_for(4) is None
    with pytest.raises(InputError):
        as_keyring(b"short")
