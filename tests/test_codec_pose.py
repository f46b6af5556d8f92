"""Pose keypoint codec and the OpenPose drawing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from layercast.common import registry
from layercast.common.codecs.pose import PoseCodec, coord_bits
from layercast.common.errors import CodecError, InputError
from layercast.common.registry import POSE_KEYPOINTS
from layercast.common.types import PoseLayer
from layercast.receiver.pose_draw import COLORS, LIMBS, draw_openpose, pose_from_openpose_keypoints

CODEC = PoseCodec()


def person(rng: np.random.Generator, w: int, h: int, k: int = 18, p_vis: float = 0.8) -> np.ndarray:
    xy = rng.uniform(0, 1, (k, 2)) * [w, h]
    return np.concatenate([xy, (rng.random((k, 1)) < p_vis)], axis=1).astype(np.float32)


@st.composite
def poses(draw: st.DrawFn) -> PoseLayer:
    w, h = draw(st.integers(1, 2000)), draw(st.integers(1, 2000))
    k = draw(st.integers(1, 24))
    n = draw(st.integers(0, 4))
    people = []
    for _ in range(n):
        xy = draw(arrays(np.float32, (k, 2), elements=st.floats(-50, 2100, width=32)))
        vis = draw(arrays(np.float32, (k, 1), elements=st.sampled_from([0.0, 1.0])))
        people.append(np.concatenate([xy, vis], axis=1))
    return PoseLayer(people, w, h)


def test_registered_under_its_wire_id() -> None:
    assert type(registry._REGISTRY[POSE_KEYPOINTS]) is PoseCodec
    assert CODEC.name == "pose-keypoints"


def test_coord_bits() -> None:
    assert [coord_bits(n) for n in (1, 2, 3, 512, 513, 1024)] == [0, 1, 2, 9, 10, 10]


@settings(max_examples=80, deadline=None)
@given(pose=poses())
def test_round_trip_exact_to_the_pixel_grid(pose: PoseLayer) -> None:
    enc = CODEC.compress(pose)
    assert enc.descriptor.unit_count == max(1, len(pose.people))
    out = CODEC.decompress(enc.descriptor, enc.units)
    assert (out.width, out.height) == (pose.width, pose.height)
    assert len(out.people) == len(pose.people)
    for src, dst in zip(pose.people, out.people, strict=True):
        vis = src[:, 2] > 0
        assert np.array_equal(dst[:, 2] > 0, vis)
        want_x = np.clip(np.rint(src[:, 0]), 0, pose.width - 1)
        want_y = np.clip(np.rint(src[:, 1]), 0, pose.height - 1)
        assert np.array_equal(dst[vis, 0], want_x[vis]) and np.array_equal(dst[vis, 1], want_y[vis])
        assert not dst[~vis].any()
    assert CODEC.compress(out).units == enc.units  # decoded values are on the grid: a fixed point


def test_size_per_person_and_lost_units() -> None:
    rng = np.random.default_rng(3)
    people = [person(rng, 512, 512, p_vis=1.0) for _ in range(3)]
    enc = CODEC.compress(PoseLayer(people, 512, 512))
    # 18 visibility bits + 18 * 2 * 9 coordinate bits = 342 bits -> 43 bytes
    assert [len(u) for u in enc.units] == [43, 43, 43]
    out = CODEC.decompress(enc.descriptor, [enc.units[0], None, enc.units[2]])
    assert len(out.people) == 2
    assert np.array_equal(out.people[1][:, :2], np.rint(people[2][:, :2]))
    assert CODEC.decompress(enc.descriptor, [None, None, None]).people == []


def test_empty_layer_is_one_empty_unit() -> None:
    enc = CODEC.compress(PoseLayer([], 64, 48))
    assert enc.units == [b""] and enc.descriptor.pose.keypoint_count == 18
    assert CODEC.decompress(enc.descriptor, enc.units).people == []


def test_corrupted_units() -> None:
    rng = np.random.default_rng(4)
    enc = CODEC.compress(PoseLayer([person(rng, 500, 300)], 500, 300))
    unit = enc.units[0]
    with pytest.raises(CodecError, match="does not match its visibility mask"):
        CODEC.decompress(enc.descriptor, [unit + b"\x00"])
    with pytest.raises(CodecError, match="does not match its visibility mask"):
        CODEC.decompress(enc.descriptor, [unit[:-1]])
    with pytest.raises(CodecError, match="too short"):
        CODEC.decompress(enc.descriptor, [b"\x01"])
    # All keypoints visible with every coordinate bit set: x = 511 >= width 500.
    one = PoseLayer([np.array([[0, 0, 1]], np.float32)], 500, 300)
    enc1 = CODEC.compress(one)
    bad = np.packbits(np.ones(1 + 9 + 9, np.uint8)).tobytes()
    with pytest.raises(CodecError, match="outside the 500x300 frame"):
        CODEC.decompress(enc1.descriptor, [bad])
    enc1.descriptor.pose.keypoint_count = 0
    with pytest.raises(CodecError, match="keypoint count 0"):
        CODEC.decompress(enc1.descriptor, [bad])


@settings(max_examples=100, deadline=None)
@given(unit=st.binary(max_size=80))
def test_random_units_never_crash(unit: bytes) -> None:
    enc = CODEC.compress(PoseLayer([np.zeros((18, 3), np.float32)], 512, 512))
    try:
        out = CODEC.decompress(enc.descriptor, [unit])
    except CodecError:
        return
    assert all(p.shape == (18, 3) for p in out.people)


def test_bad_input() -> None:
    with pytest.raises(InputError, match="same K"):
        CODEC.compress(PoseLayer([np.zeros((18, 3)), np.zeros((17, 3))], 64, 64))
    with pytest.raises(InputError, match="pose frame 0x64"):
        CODEC.compress(PoseLayer([], 0, 64))
    with pytest.raises(InputError, match="exceed the limit"):
        CODEC.compress(PoseLayer([np.zeros((18, 3))] * 65, 64, 64))


def test_draw_openpose_matches_controlnet_format() -> None:
    kp = np.zeros((18, 3), np.float32)
    kp[1] = (100, 100, 1)  # neck
    kp[2] = (60, 100, 1)  # right shoulder
    img = draw_openpose(PoseLayer([kp], 200, 200), 200, 200)
    assert img.shape == (200, 200, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [0, 0, 0]  # black background
    assert img[100, 100].tolist() == list(COLORS[1])  # joint: full colour
    assert img[100, 60].tolist() == list(COLORS[2])
    limb_colour = [int(c * 0.6) for c in COLORS[0]]  # limb neck-rshoulder = limb 0, dimmed to 0.6
    assert img[100, 80].tolist() == limb_colour
    assert img[103, 80].tolist() == limb_colour and not img[106, 80].any()  # half-width 4
    assert LIMBS[0] == (1, 2) and len(LIMBS) == 17


def test_draw_scales_to_output_and_skips_invisible() -> None:
    kp = np.zeros((18, 3), np.float32)
    kp[0] = (50, 25, 1)
    kp[14] = (10, 10, 0)  # invisible: no limb 0-14
    img = draw_openpose(PoseLayer([kp], 100, 50), 200, 100)
    assert img[50, 100].tolist() == list(COLORS[0])
    assert np.count_nonzero(img.any(axis=2)) < 60  # just one joint disc


def test_pose_from_openpose_keypoints() -> None:
    flat = [0.5, 0.25, 0.9] + [0.0, 0.0, 0.0] * 17
    pose = pose_from_openpose_keypoints([flat], 512, 256, normalized=True)
    assert pose.people[0].shape == (18, 3)
    assert pose.people[0][0].tolist() == [256.0, 64.0, 1.0] and pose.people[0][1, 2] == 0
    with pytest.raises(InputError, match="triples"):
        pose_from_openpose_keypoints([[1.0, 2.0]], 10, 10)
