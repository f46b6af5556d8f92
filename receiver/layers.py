"""Turn encoded layers into layer values (a LayerSet) with the codec registry. Pure."""

from __future__ import annotations

from layercast.common.registry import decode_layer
from layercast.common.types import EncodedImage, LayerKind, LayerSet


def layerset_from_image(img: EncodedImage) -> LayerSet:
    """Decode every layer of a complete encoded image into a LayerSet."""
    out = LayerSet(header=img.header)
    for layer in img.layers:
        value = decode_layer(layer.descriptor, list(layer.units))
        if layer.kind == LayerKind.SEMANTIC:
            out.prompt = value
        elif layer.kind == LayerKind.TEXTURE:
            out.texture = value
        else:
            out.structure = value
    return out
