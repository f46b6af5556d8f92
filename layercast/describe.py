"""What `layercast inspect` shows: per-layer bytes and parameters, and each layer's content in words.

`describe_image` gives the JSON document; `describe_lines` the human text. The content of each layer is
decoded independently: a layer that does not decode is reported ("content_error"), never fatal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layercast.common.errors import LayercastError
from layercast.common.types import Colormap, EdgeMap, EncodedImage, EncodedLayer, PoseLayer, Prompt

COCO18 = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip", "r_knee",
    "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)  # fmt: skip
"""OpenPose COCO-18 keypoint names, in the pose layer's order (names as in OpenPose's documentation)."""


def _hex(rgb: Any) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def layer_content(layer: EncodedLayer) -> dict[str, Any]:
    """The decoded content of one layer, summarised (JSON-able)."""
    from layercast.common.registry import decode_layer

    try:
        value = decode_layer(layer.descriptor, layer.units)
    except LayercastError as exc:
        return {"content_error": str(exc)}
    if isinstance(value, Prompt):
        return {"prompt": value.text, "negative_prompt": value.negative}
    if isinstance(value, EdgeMap):
        from layercast.proto import pb

        rows, cols = value.shape
        return {
            "edge_map": f"{cols}x{rows}",
            "edge_source": pb.EdgeSource.Name(int(value.source)).removeprefix("EDGE_SOURCE_").lower(),
            "edge_pixels": int(np.count_nonzero(value.edges)),
            "edge_density": round(float(np.count_nonzero(value.edges)) / max(1, rows * cols), 4),
        }
    if isinstance(value, PoseLayer):
        people = []
        for person in value.people:
            present = [COCO18[i] if i < len(COCO18) else str(i) for i in range(len(person)) if person[i, 2] > 0]
            xs, ys = person[person[:, 2] > 0, 0], person[person[:, 2] > 0, 1]
            box = [round(float(v), 1) for v in (xs.min(), ys.min(), xs.max(), ys.max())] if len(xs) else []
            people.append({"keypoints": len(present), "present": present, "box": box})
        return {"people": people, "frame": f"{value.width}x{value.height}"}
    if isinstance(value, Colormap):
        gh, gw = value.grid
        return {"grid": f"{gw}x{gh}", "cells": [[_hex(c) for c in row] for row in value.cells]}
    return {}


def describe_image(img: EncodedImage, file_bytes: int | None = None) -> dict[str, Any]:
    """JSON-able description of an encoded image: size, seed, hints, bytes, bpp, layers with content."""
    from google.protobuf.json_format import MessageToDict

    from layercast.common.metrics import bpp
    from layercast.proto import framing, pb

    total = file_bytes if file_bytes is not None else len(framing.images_to_container([img]))
    h = img.header
    layers = []
    prompt: dict[str, Any] = {}
    for layer in img.layers:
        content = layer_content(layer)
        if layer.kind.family == "semantic":
            prompt = (
                {"prompt": None, "prompt_error": content["content_error"]}
                if "content_error" in content
                else {"prompt": content["prompt"], "negative_prompt": content["negative_prompt"]}
            )
        params_name = layer.descriptor.WhichOneof("params")
        params = (
            MessageToDict(getattr(layer.descriptor, params_name), preserving_proto_field_name=True)
            if params_name
            else {}
        )
        layers.append(
            {
                "kind": layer.kind.family,
                "wire_kind": pb.LayerKind.Name(int(layer.kind)),
                "codec": pb.CodecId.Name(layer.descriptor.codec),
                "codec_id": int(layer.descriptor.codec),
                "bytes": layer.nbytes,
                "units": len(layer.units),
                "params": params,
                "content": content,
            }
        )
    return {
        "image_id": img.image_id,
        "stream_id": img.stream_id,
        "width": h.width,
        "height": h.height,
        "seed": int(h.seed) if h.HasField("seed") else None,
        "hints": MessageToDict(h.hints, preserving_proto_field_name=True) if h.HasField("hints") else {},
        "total_bytes": total,
        "bpp": round(bpp(total, h.width, h.height), 5),
        "payload_bytes": sum(x["bytes"] for x in layers),
        "layers": layers,
        **prompt,
    }


def describe_lines(doc: dict[str, Any]) -> list[str]:
    """Human text for one image's description (:func:`describe_image`)."""
    out = [
        f"image {doc['image_id']}: {doc['width']}x{doc['height']}  {doc['total_bytes']} B  {doc['bpp']:.4f} bpp"
        f"  seed {doc['seed']}"
    ]
    if doc.get("hints"):
        out.append("  hints:    " + ", ".join(f"{k}={v}" for k, v in doc["hints"].items()))
    for layer in doc["layers"]:
        params = " ".join(f"{k}={v}" for k, v in layer["params"].items())
        out.append(
            f"  {layer['kind']:<9} {layer['codec']:<24} {layer['bytes']:>5} B  {layer['units']:>3} units  {params}"
        )
        c = layer.get("content", {})
        if "content_error" in c:
            out.append(f"    (does not decode: {c['content_error']})")
        elif "edge_map" in c:
            out.append(
                f"    edge map {c['edge_map']} ({c['edge_source']}), {c['edge_pixels']} edge pixels"
                f" ({100 * c['edge_density']:.1f}%)"
            )
        elif "people" in c:
            out.append(f"    {len(c['people'])} people in a {c['frame']} frame")
            for i, person in enumerate(c["people"]):
                out.append(f"    person {i}: {person['keypoints']} keypoints, box {person['box']}")
        elif "grid" in c:
            out.append(f"    colormap {c['grid']} cells:")
            out.extend("      " + " ".join(row) for row in c["cells"])
    if doc.get("prompt") is not None:
        out.append(f"  prompt:   {doc['prompt']}")
        if doc.get("negative_prompt"):
            out.append(f"  negative: {doc['negative_prompt']}")
    elif "prompt_error" in doc:
        out.append(f"  prompt:   (does not decode: {doc['prompt_error']})")
    return out
