"""The Python API: encode an image into a layered stream, open a stream's layers, decode it.

    import layercast

    data = layercast.encode("bird.png", bpp=0.02)          # bytes of a .lcs stream (655 B at 512x512)
    img = layercast.open(data)                              # or a path to a .lcs file
    img.prompt, img.edges.shape, img.colormap.shape        # the layers, readable without decoding
    night = img.with_prompt(append="at night").hue_shift(200)   # edits re-encode only what they touch
    layercast.decode(night.tobytes()).save("night.png")    # a PIL image (CPU preview decoder)

Symmetric and plain, after Pillow and CompressAI: images in as a path, file bytes, a PIL image or a uint8
array; streams out as bytes; decoded images out as PIL images. Errors are :class:`LayercastError`
subclasses with one-line messages (``InputError`` for bad arguments or files).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from layercast.common.errors import InputError
from layercast.common.types import DEFAULT_ORDER, Colormap, EdgeMap, EncodedImage, LayerSet, PoseLayer
from layercast.proto import pb
from layercast.receiver.decoder import Decoder
from layercast.receiver.models import SDConfig
from layercast.sender.encode import EncodeOptions
from layercast.sender.encoder import Encoder, ImageInput

StreamInput = bytes | bytearray | str | os.PathLike[str]
"""A stream: the bytes of a .lcs file, or its path."""


def encode(
    image: ImageInput,
    *,
    bpp: float = 0.02,
    max_bytes: int | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    structure: str = "canny",
    cells: int = 8,
    texture_quality: int | None = None,
    resize: tuple[int, int] | int | None = None,
    seed: int | None = None,
    order: tuple[str, ...] = DEFAULT_ORDER,
    stripe_rows: int = 32,
    hed_weights: str | None = None,
    pose_model: str | None = None,
    image_id: int = 0,
) -> bytes:
    """Encode one image into the bytes of a layered .lcs stream, at most the byte budget long.

    `image`: a file path, an image file's bytes, a PIL image or a uint8 RGB array. The budget is `bpp`
    bits per pixel of the encoded size (after `resize`: (width, height) or a long side), or `max_bytes`.
    `prompt` defaults to the image's generation metadata (A1111, ComfyUI, InvokeAI, NovelAI, ...), then to
    a sidecar ``IMAGE.txt``; `structure` is "canny", "hed" (`hed_weights`), "pose" (`pose_model`) or "none";
    `cells` is the colormap's cells on the long side. For what rate control chose and what was cut, use
    :class:`Encoder` (its ``encode`` returns an EncodeResult).

    >>> data = layercast.encode("bird.png", prompt="a small bird", resize=512)
    >>> len(data) <= 655
    True
    """
    options = EncodeOptions(
        bpp=bpp,
        max_bytes=max_bytes,
        order=tuple(order),
        structure=structure,
        cells_long=cells,
        texture_quality=texture_quality,
        stripe_rows=stripe_rows,
        seed=seed,
    )
    enc = Encoder(options, resize=resize, hed_weights=hed_weights, pose_model=pose_model)
    return enc.encode(image, prompt=prompt, negative=negative_prompt, image_id=image_id).data


def read_images(data: StreamInput) -> list[EncodedImage]:
    """The encoded images of a stream (bytes or a .lcs path); InputError on a missing or malformed file."""
    from layercast.proto import framing

    if isinstance(data, str | os.PathLike):
        p = Path(data)
        if not p.is_file():
            raise InputError(f"no such stream file: {p}")
        data = p.read_bytes()
    if not isinstance(data, bytes | bytearray):
        raise InputError(f"expected .lcs bytes or a path, got {type(data).__name__}")
    return framing.container_to_images(bytes(data))


def open(data: StreamInput) -> LayeredImage:
    """Open a one-image stream (bytes or a .lcs path) as a :class:`LayeredImage`.

    >>> img = layercast.open("bird.lcs")
    >>> img.prompt, img.width, img.layer_bytes
    ('a small bird', 512, {'semantic': 9, 'structure': 455, 'texture': 61})
    """
    images = open_all(data)
    if len(images) != 1:
        raise InputError(f"the stream holds {len(images)} images; use layercast.open_all() for a multi-image stream")
    return images[0]


def open_all(data: StreamInput) -> list[LayeredImage]:
    """Every image of a stream, in stream order."""
    return [LayeredImage(img) for img in read_images(data)]


def make_decoder(decoder: str = "preview", *, sd: SDConfig | None = None) -> Decoder:
    """A decoder to reuse across :func:`decode` calls: "preview" (CPU) or "sd" (Stable Diffusion from the
    local models `sd` names; ModelError says what is missing, nothing is downloaded)."""
    if decoder == "preview":
        from layercast.receiver.preview import PreviewDecoder

        return PreviewDecoder()
    if decoder == "sd":
        from layercast.receiver.sd import load_decoder

        return load_decoder(sd or SDConfig())
    raise InputError(f"unknown decoder {decoder!r}; use 'preview' or 'sd'")


def decode(
    data: StreamInput | LayeredImage,
    *,
    decoder: str | Decoder = "preview",
    layer: str = "all",
    sd: SDConfig | None = None,
) -> Image.Image:
    """Decode a one-image stream into a PIL RGB image of the header's size.

    `decoder`: "preview" (CPU, default), "sd" (with `sd`, an SDConfig) or a decoder from
    :func:`make_decoder`. `layer`: "all" (the reconstruction), "structure" (the edge map or pose skeleton
    drawn) or "texture" (the colormap upsampled). The semantic layer is text: ``layercast.open(data).prompt``.

    >>> layercast.decode(open("bird.lcs", "rb").read()).size
    (512, 512)
    """
    img = data if isinstance(data, LayeredImage) else open(data)
    return Image.fromarray(img.render(decoder=decoder, layer=layer, sd=sd))


class LayeredImage:
    """One image of a layered stream: its header and layers, readable and editable without decoding.

    Edits return a new LayeredImage and re-encode only the layer they touch; the others keep their bytes.
    """

    def __init__(self, encoded: EncodedImage) -> None:
        self.encoded = encoded
        self._layers: LayerSet | None = None

    def __repr__(self) -> str:
        return (
            f"<LayeredImage {self.width}x{self.height} layers={'+'.join(self.layer_bytes) or 'none'}"
            f" {len(self.tobytes())} B>"
        )

    # --- what the stream holds ---------------------------------------------------------------------------

    @property
    def header(self) -> pb.ImageHeader:
        """The image header (size, seed, generation hints)."""
        return self.encoded.header

    @property
    def width(self) -> int:
        return int(self.header.width)

    @property
    def height(self) -> int:
        return int(self.header.height)

    @property
    def seed(self) -> int | None:
        return int(self.header.seed) if self.header.HasField("seed") else None

    @property
    def image_id(self) -> int:
        return self.encoded.image_id

    @property
    def stream_id(self) -> int:
        return self.encoded.stream_id

    @property
    def layers(self) -> LayerSet:
        """The decoded layer values (prompt, structure, colormap), decoded once."""
        if self._layers is None:
            from layercast.receiver.layers import layerset_from_image

            self._layers = layerset_from_image(self.encoded)
        return self._layers

    @property
    def prompt(self) -> str | None:
        """The semantic layer's prompt text, or None without a semantic layer."""
        p = self.layers.prompt
        return None if p is None else p.text

    @property
    def negative_prompt(self) -> str | None:
        p = self.layers.prompt
        return None if p is None else p.negative

    @property
    def edges(self) -> np.ndarray | None:
        """The edge map (bool, rows x cols at the coder's working resolution), or None without one."""
        s = self.layers.structure
        return s.edges if isinstance(s, EdgeMap) else None

    @property
    def pose(self) -> list[np.ndarray] | None:
        """People of a pose layer (float32 (K, 3) arrays: x, y, visibility in header pixels), or None."""
        s = self.layers.structure
        return s.people if isinstance(s, PoseLayer) else None

    @property
    def colormap(self) -> np.ndarray | None:
        """The texture layer's cells (uint8 RGB, grid rows x cols x 3), or None without one."""
        t = self.layers.texture
        return t.cells if t is not None else None

    @property
    def layer_bytes(self) -> dict[str, int]:
        """Payload bytes per layer family, in stream order (framing excluded)."""
        return {layer.kind.family: layer.nbytes for layer in self.encoded.layers}

    def layer_data(self, family: str) -> list[bytes]:
        """The coded units of one layer family ("semantic", "structure", "texture")."""
        layer = self.encoded.layer(family)
        if layer is None:
            raise InputError(f"the stream has no {family} layer")
        return list(layer.units)

    def tobytes(self) -> bytes:
        """This image as the bytes of a .lcs stream."""
        from layercast.proto import framing

        return framing.images_to_container([self.encoded])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this image as a .lcs file."""
        Path(path).write_bytes(self.tobytes())

    def describe(self, file_bytes: int | None = None) -> dict[str, Any]:
        """What ``layercast inspect --json`` prints for this image."""
        from layercast.describe import describe_image

        return describe_image(self.encoded, file_bytes)

    # --- decoding ----------------------------------------------------------------------------------------

    def render(
        self, *, decoder: str | Decoder = "preview", layer: str = "all", sd: SDConfig | None = None
    ) -> np.ndarray:
        """Like :func:`decode`, as a uint8 RGB array."""
        from layercast.receiver.preview import render_colormap, render_structure

        ls = self.layers
        if layer == "structure":
            if ls.structure is None:
                raise InputError("the stream has no structure layer")
            return render_structure(ls.structure, ls.width, ls.height)
        if layer == "texture":
            if ls.texture is None:
                raise InputError("the stream has no texture layer")
            return render_colormap(ls.texture, ls.width, ls.height)
        if layer == "semantic":
            raise InputError("the semantic layer is text, not an image: read .prompt and .negative_prompt")
        if layer != "all":
            raise InputError(f"unknown layer {layer!r}; use all, structure or texture")
        dec = make_decoder(decoder, sd=sd) if isinstance(decoder, str) else decoder
        return np.asarray(dec.decode(ls))

    # --- edits -------------------------------------------------------------------------------------------

    def _edited(self, fn: Callable[[EncodedImage], EncodedImage]) -> LayeredImage:
        return LayeredImage(fn(self.encoded))

    def with_prompt(
        self, text: str | None = None, *, append: str | None = None, negative: str | None = None
    ) -> LayeredImage:
        """Replace (`text`) or extend (`append`) the prompt, or set the negative prompt."""
        from layercast.common import edit

        return self._edited(partial(edit.edit_prompt, text=text, append=append, negative=negative))

    def hue_shift(self, degrees: float) -> LayeredImage:
        """Rotate the colormap's hues by `degrees`."""
        from layercast.common import colormap_edit, edit

        return self._edited(lambda img: edit.recolor(img, partial(colormap_edit.hue_shift, degrees=degrees)))

    def map_color(self, src: tuple[int, int, int], dst: tuple[int, int, int], tolerance: float = 10.0) -> LayeredImage:
        """Recolour cells within `tolerance` (Oklab distance x100) of RGB `src` to RGB `dst`."""
        from layercast.common import colormap_edit, edit

        op = partial(colormap_edit.map_color, src_rgb=src, dst_rgb=dst, tolerance=tolerance)
        return self._edited(lambda img: edit.recolor(img, op))

    def set_cell(self, row: int, col: int, rgb: tuple[int, int, int]) -> LayeredImage:
        """Set one colormap cell to RGB `rgb`."""
        from layercast.common import colormap_edit, edit

        return self._edited(lambda img: edit.recolor(img, partial(colormap_edit.set_cell, row=row, col=col, rgb=rgb)))

    def recolor(self, op: Callable[[Colormap], Colormap]) -> LayeredImage:
        """Apply any Colormap -> Colormap function to the texture layer."""
        from layercast.common import edit

        return self._edited(lambda img: edit.recolor(img, op))

    def flip(self, axis: str) -> LayeredImage:
        """Mirror the image: "h" (left-right) or "v" (top-bottom); every spatial layer moves."""
        if axis not in ("h", "v"):
            raise InputError(f"flip axis must be 'h' or 'v', got {axis!r}")
        return self._transform(f"flip-{axis}")

    def rotate(self, degrees: int) -> LayeredImage:
        """Rotate clockwise by 90, 180 or 270 degrees (90/270 swap width and height)."""
        if degrees not in (90, 180, 270):
            raise InputError(f"rotate by 90, 180 or 270 degrees, got {degrees}")
        return self._transform(f"rotate{degrees}")

    def crop(self, box: tuple[float, float, float, float]) -> LayeredImage:
        """Crop to `box` = (x0, y0, x1, y1) in fractions 0..1 of the frame."""
        return self._transform("crop", tuple(box))

    def scale(self, factor: float) -> LayeredImage:
        """Zoom about the centre by `factor`."""
        return self._transform("scale", factor)

    def _transform(self, op: str, arg: object = None) -> LayeredImage:
        from layercast.common import edit

        return self._edited(lambda img: edit.transform(img, op, arg).image)

    def drop(self, family: str) -> LayeredImage:
        """Remove one layer family."""
        from layercast.common import edit

        return self._edited(lambda img: edit.drop_layer(img, family))
