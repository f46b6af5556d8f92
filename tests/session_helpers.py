"""Shared helpers of the streaming-session tests: encoded sample images and their file-container decode."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "layercast" / "samples"
ENCODE_FLAGS: tuple[str, ...] = ("--resize", "256", "--max-bytes", "450")
"""`layercast encode` flags of the test images (small, so the tests stay fast)."""


def sample_paths() -> list[Path]:
    """The bundled sample images (sorted)."""
    return sorted(SAMPLES.glob("*.jpg"))


@functools.cache
def encoded_samples(stream_id: int = 0, bundle: bool = True) -> tuple[Any, ...]:
    """EncodeResults of every sample image (cached for the test session).

    The stream and image ids are part of every packet, so they count against the byte budget: encode with
    the ids the stream will carry (images 0, 1, ... of `stream_id`) to compare with what a receiver rebuilds.
    `bundle`: the budget counts one packet per image, as files (False: a packet per layer, as the `file` link).
    """
    from layercast.cli import build_parser
    from layercast.cli_options import encoder_from_args

    encoder = encoder_from_args(build_parser().parse_args(["encode", "x", "-o", "x", *ENCODE_FLAGS]))
    encoder = encoder.with_options(bundle=bundle)
    return tuple(encoder.encode(p, stream_id=stream_id, image_id=i) for i, p in enumerate(sample_paths()))


def file_decodes(results: Any) -> list[np.ndarray]:
    """Reference outputs: encode -> .lcs container -> parse -> preview decode, image by image."""
    from layercast.proto import framing
    from layercast.receiver.layers import layerset_from_image
    from layercast.receiver.preview import PreviewDecoder

    out = []
    for r in results:
        (img,) = framing.container_to_images(framing.images_to_container([r.image]))
        out.append(PreviewDecoder().decode(layerset_from_image(img)))
    return out


def read_png(path: Path | bytes) -> np.ndarray:
    """RGB pixels of a PNG file or PNG bytes."""
    from PIL import Image

    src = io.BytesIO(path) if isinstance(path, bytes) else path
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def read_events(out: Path) -> list[dict[str, Any]]:
    """Records of `<out>/events.jsonl`."""
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
