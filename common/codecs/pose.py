"""Pose codec (CODEC_ID_POSE_KEYPOINTS): quantised keypoints, one independently decodable unit per person.

Unit layout (bits, most significant first, zero-padded to a whole byte):
  - `keypoint_count` visibility bits (1 = keypoint present), in keypoint order;
  - for each present keypoint: x in `bits(width)` bits, then y in `bits(height)` bits, where
    bits(n) = ceil(log2(n)) (a 512-pixel side takes 9 bits).
Coordinates are rounded to the integer pixel grid and clamped into the frame. A layer with no people
is one empty unit. A lost unit drops that person only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from layercast.common import limits
from layercast.common.errors import CodecError, InputError
from layercast.common.registry import POSE_KEYPOINTS, LayerCodec, register
from layercast.common.types import EncodedLayer, LayerKind, PoseLayer
from layercast.proto import pb


def coord_bits(side: int) -> int:
    """Bits per coordinate for a frame side: ceil(log2(side)) (0 for a side of 1)."""
    return (int(side) - 1).bit_length()


def _unit_bits(keypoints: int, visible: int, width: int, height: int) -> int:
    return keypoints + visible * (coord_bits(width) + coord_bits(height))


def quantise_person(person: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(visible bool (K,), integer xy (K, 2)) of one person on the frame's pixel grid."""
    p = np.asarray(person, dtype=np.float64)
    finite = np.isfinite(p).all(axis=1)
    visible = finite & (np.nan_to_num(p[:, 2]) > 0)
    xy = np.rint(np.nan_to_num(p[:, :2]))
    xy[:, 0] = np.clip(xy[:, 0], 0, width - 1)
    xy[:, 1] = np.clip(xy[:, 1], 0, height - 1)
    return visible, xy.astype(np.int64)


def _encode_person(person: np.ndarray, width: int, height: int) -> bytes:
    visible, xy = quantise_person(person, width, height)
    bx, by = coord_bits(width), coord_bits(height)
    bits: list[int] = [int(v) for v in visible]
    for (x, y), v in zip(xy.tolist(), visible.tolist(), strict=True):
        if v:
            bits += [(x >> (bx - 1 - i)) & 1 for i in range(bx)]
            bits += [(y >> (by - 1 - i)) & 1 for i in range(by)]
    return np.packbits(np.array(bits, dtype=np.uint8)).tobytes()


def _decode_person(unit: bytes, keypoints: int, width: int, height: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(unit, dtype=np.uint8))
    if len(bits) < keypoints:
        raise CodecError(f"pose unit of {len(unit)} bytes is too short for {keypoints} visibility bits")
    visible = bits[:keypoints].astype(bool)
    need = _unit_bits(keypoints, int(visible.sum()), width, height)
    if len(unit) != -(-need // 8) or bits[need:].any():
        raise CodecError(f"pose unit of {len(unit)} bytes does not match its visibility mask (corrupted)")
    bx, by = coord_bits(width), coord_bits(height)
    out = np.zeros((keypoints, 3), dtype=np.float32)
    pos = keypoints
    weights_x = 1 << np.arange(bx - 1, -1, -1)
    weights_y = 1 << np.arange(by - 1, -1, -1)
    for k in np.flatnonzero(visible):
        x = int(bits[pos : pos + bx] @ weights_x) if bx else 0
        y = int(bits[pos + bx : pos + bx + by] @ weights_y) if by else 0
        pos += bx + by
        if x >= width or y >= height:
            raise CodecError(f"pose keypoint ({x}, {y}) is outside the {width}x{height} frame (corrupted)")
        out[k] = (x, y, 1.0)
    return out


@register
class PoseCodec(LayerCodec):
    """Structure (pose) codec: one unit per person, keypoints on the frame's integer pixel grid."""

    codec_id = POSE_KEYPOINTS
    name = "pose-keypoints"
    kind = LayerKind.STRUCTURE_POSE

    def compress(self, value: PoseLayer, **options: Any) -> EncodedLayer:
        if options:
            raise InputError(f"unknown pose codec option(s): {', '.join(sorted(options))}")
        width, height = int(value.width), int(value.height)
        if not (1 <= width <= limits.MAX_IMAGE_SIDE and 1 <= height <= limits.MAX_IMAGE_SIDE):
            raise InputError(f"pose frame {width}x{height} is outside 1..{limits.MAX_IMAGE_SIDE} per side")
        if len(value.people) > limits.MAX_PEOPLE:
            raise InputError(f"{len(value.people)} people exceed the limit of {limits.MAX_PEOPLE}")
        shapes = {np.shape(p) for p in value.people}
        if len(shapes) > 1 or any(len(s) != 2 or s[1] != 3 or not 1 <= s[0] <= 256 for s in shapes):
            raise InputError(f"every person must be a (K, 3) array with the same K in 1..256, got {sorted(shapes)}")
        keypoints = shapes.pop()[0] if shapes else 18
        units = [_encode_person(p, width, height) for p in value.people] or [b""]
        desc = pb.LayerDescriptor(
            codec=self.codec_id,
            unit_count=len(units),
            pose=pb.PoseParams(width=width, height=height, keypoint_count=keypoints),
        )
        return EncodedLayer(LayerKind.STRUCTURE_POSE, desc, units)

    def decompress(self, descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> PoseLayer:
        p = descriptor.pose
        width, height, keypoints = int(p.width), int(p.height), int(p.keypoint_count)
        if not (1 <= width <= limits.MAX_IMAGE_SIDE and 1 <= height <= limits.MAX_IMAGE_SIDE):
            raise CodecError(f"pose frame {width}x{height} is outside 1..{limits.MAX_IMAGE_SIDE} per side")
        if not 1 <= keypoints <= 256:
            raise CodecError(f"pose keypoint count {keypoints} is outside 1..256")
        if len(units) > limits.MAX_PEOPLE:
            raise CodecError(f"pose layer with {len(units)} units exceeds {limits.MAX_PEOPLE} people")
        people = []
        for unit in units:
            if unit is None or len(unit) == 0:  # lost person, or the placeholder of an empty layer
                continue
            people.append(_decode_person(bytes(unit), keypoints, width, height))
        return PoseLayer(people=people, width=width, height=height)
