"""Plain value types shared by sender, receiver and codecs.

Layer *values* are what extractors produce and decoders consume (a prompt, an edge map, a colormap,
pose keypoints). *Encoded* layers are what codecs produce: a descriptor plus independently decodable
units. A :class:`LayerSet` is whatever subset of layer values is available for decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from layercast.proto import pb


class LayerKind(IntEnum):
    """Wire values of `LayerKind` in proto/layercast.proto."""

    SEMANTIC = pb.LAYER_KIND_SEMANTIC
    STRUCTURE_EDGES = pb.LAYER_KIND_STRUCTURE_EDGES
    STRUCTURE_POSE = pb.LAYER_KIND_STRUCTURE_POSE
    TEXTURE = pb.LAYER_KIND_TEXTURE

    @property
    def family(self) -> str:
        """The user-facing name: "semantic", "structure" or "texture"."""
        if self in (LayerKind.STRUCTURE_EDGES, LayerKind.STRUCTURE_POSE):
            return "structure"
        return self.name.lower()


DEFAULT_ORDER: tuple[str, ...] = ("semantic", "structure", "texture")
"""Default send order of layer families: semantic first, then structure, then texture."""


@dataclass(frozen=True)
class Prompt:
    """Semantic layer value: the prompt and an optional negative prompt."""

    text: str
    negative: str = ""


@dataclass
class EdgeMap:
    """Structure layer value: a binary edge map at the working resolution.

    `edges` is bool HxW (True = edge). `known` is bool HxW (True = this region arrived) or None when the
    whole map is known; decoders must mask unknown regions, never read them as "no edges".
    """

    edges: np.ndarray
    known: np.ndarray | None = None
    source: int = pb.EDGE_SOURCE_CANNY

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.edges.shape[0]), int(self.edges.shape[1]))


@dataclass
class PoseLayer:
    """Structure layer value: people as keypoint arrays in a `width` x `height` coordinate frame.

    Each person is a float32 array (K, 3): x, y, visibility (0 = absent, 1 = present), OpenPose COCO-18
    order for K = 18.
    """

    people: list[np.ndarray]
    width: int
    height: int


@dataclass
class Colormap:
    """Texture layer value: uint8 RGB cells, shape (grid_height, grid_width, 3)."""

    cells: np.ndarray

    @property
    def grid(self) -> tuple[int, int]:
        """(grid_height, grid_width)."""
        return (int(self.cells.shape[0]), int(self.cells.shape[1]))


Structure = EdgeMap | PoseLayer


def render_size(width: int, height: int, max_pixels: int | None = None) -> tuple[int, int]:
    """`width` x `height`, scaled down with its aspect ratio to at most `max_pixels` (default
    `limits.MAX_RENDER_PIXELS`, read at call time)."""
    from layercast.common import limits

    cap = limits.MAX_RENDER_PIXELS if max_pixels is None else max_pixels
    if width * height <= cap:
        return width, height
    scale = (cap / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


@dataclass
class LayerSet:
    """The layers available to a decoder; any may be missing (None)."""

    header: pb.ImageHeader
    prompt: Prompt | None = None
    structure: Structure | None = None
    texture: Colormap | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) to render: the header's size, scaled down (aspect kept) to at most
        `limits.MAX_RENDER_PIXELS`; 512 x 512 when the header gives none."""
        return render_size(int(self.header.width) or 512, int(self.header.height) or 512)

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    @property
    def seed(self) -> int:
        return int(self.header.seed) if self.header.HasField("seed") else 0

    def present(self) -> list[str]:
        """Names of the layer families present, in default order."""
        out = []
        if self.prompt is not None:
            out.append("semantic")
        if self.structure is not None:
            out.append("structure")
        if self.texture is not None:
            out.append("texture")
        return out


@dataclass
class EncodedLayer:
    """One coded layer: its kind, descriptor (codec id + params) and independently decodable units."""

    kind: LayerKind
    descriptor: pb.LayerDescriptor
    units: list[bytes]

    @property
    def nbytes(self) -> int:
        """Payload bytes of the layer (sum of its units), framing excluded."""
        return sum(len(u) for u in self.units)


@dataclass
class EncodedImage:
    """A whole coded image: header plus layers in stream order."""

    header: pb.ImageHeader
    layers: list[EncodedLayer] = field(default_factory=list)
    stream_id: int = 0
    image_id: int = 0

    def layer(self, family: str) -> EncodedLayer | None:
        """The layer of a family ("semantic", "structure", "texture"), or None."""
        for layer in self.layers:
            if layer.kind.family == family:
                return layer
        return None
