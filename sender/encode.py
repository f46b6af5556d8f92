"""The encode pipeline (no I/O): RGB pixels + prompt -> layered, budget-fitted EncodedImage and `.lcs` bytes.

    result = encode_image(rgb, Prompt("a red bird"), options=EncodeOptions(bpp=0.02))
    result.data        # the .lcs container bytes, <= result.budget when result.fits
    result.image       # EncodedImage (header + layers) for streaming

Extractors are pure functions; layer codecs are pure; rate control (sender.ratecontrol) picks the
structure rung and colormap quality that fit the byte budget, framing included. A stream never exceeds its
budget: a prompt too large to fit beside the minimum structure and texture is reduced first, in the order
sender.prompt_fit documents (repeated prompts; the negative prompt's and the text's tokens after the 75 that
Stable Diffusion 1.5 reads; the negative prompt; then, at tiny budgets only, more of the text);
`EncodeResult.prompt_cuts` says what was cut. Only a budget smaller than the image header with an empty
prompt gives `fits` False.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from layercast.common import limits
from layercast.common.errors import InputError
from layercast.common.metrics import budget_bytes
from layercast.common.registry import COLORMAP_PRED, EDGES_CTX, POSE_KEYPOINTS, get_codec
from layercast.common.types import (
    DEFAULT_ORDER,
    Colormap,
    EdgeMap,
    EncodedImage,
    EncodedLayer,
    LayerKind,
    PoseLayer,
    Prompt,
)
from layercast.proto import framing, pb
from layercast.sender import prompt_fit, ratecontrol
from layercast.sender.prompt_fit import PromptCut
from layercast.sender.ratecontrol import Rung

EdgeFn = Callable[[Rung], np.ndarray]
"""A prepared edge extractor: rung -> bool edge map at the rung's working resolution."""

STRUCTURES = ("canny", "hed", "pose", "none")
TARGETS = ("sd", "preview")
"""Decoders a stream can be split for: "sd" (the generative split: most bytes on edges, an 8x8 colormap;
the default) or "preview" (the CPU preview decoder: most bytes on colour, ratecontrol.PREVIEW_TEXTURES)."""
BITS_PER_EDGE = 2.2
"""Typical cost of one edge pixel in the edge coder (v4 in groups of 2 stripes: ~2.4% below the v3 coder's
2.1-2.3 measured on held-out AIGI maps)."""
STRUCTURE_FRAMING_BYTES = 24
"""Typical packet framing of the structure layer (descriptor, tags, CRC)."""


@dataclass(frozen=True)
class EncodeOptions:
    """Encoder settings. `max_bytes` overrides `bpp`; `order` is the send order of layer families;
    `stripe_rows` cuts the edge map into independently decodable stripes (0 = one stripe: ~5% fewer
    structure bytes, for links where no packet is lost alone).

    `target` is the decoder the split between edges and colour is made for: "sd" (default; `cells_long`
    cells, the richest edge rung that fits, then the finest colormap quality of ratecontrol.FILL_QUALITIES
    that still fits beside it) or "preview" (the CPU preview decoder: rate control tries the
    (cells, quality) pairs of `preview_textures`, default ratecontrol.PREVIEW_TEXTURES, fits the richest
    edge rung beside each (then a finer quality where bytes are left, as above), decodes each with the
    preview decoder and keeps the best scoring
    (ratecontrol.preview_score: SSIM + 0.01 x PSNR against the image);
    `texture_quality`, when set, pins the quality).

    `bundle`: the budget counts the image as `.lcs` files carry it, in one packet (one set of ids, one header,
    one CRC; ~35 bytes less than a packet per layer, which rate control spends on the layers); False counts
    a packet per layer, as the per-layer links send it (`SendSession.encode_file` sets it from the link)."""

    bpp: float = 0.02
    max_bytes: int | None = None
    order: tuple[str, ...] = DEFAULT_ORDER
    structure: str = "canny"
    cells_long: int = 8
    texture_quality: int | None = None
    stripe_rows: int = 32
    max_long_side: int = 256
    min_long_side: int = 32
    drop: tuple[str, ...] = ()
    seed: int | None = None
    target: str = "sd"
    preview_textures: tuple[tuple[int, int], ...] | None = None
    bundle: bool = True

    def validate(self) -> None:
        """Raise InputError on values a user can get wrong."""
        if self.max_bytes is None and not 0 < self.bpp <= 8:
            raise InputError(f"--bpp must be in (0, 8], got {self.bpp}")
        if self.max_bytes is not None and self.max_bytes < 16:
            raise InputError(f"--max-bytes must be at least 16, got {self.max_bytes}")
        if self.structure not in STRUCTURES:
            raise InputError(f"unknown structure {self.structure!r}; choose one of {', '.join(STRUCTURES)}")
        if not 1 <= self.cells_long <= 64:
            raise InputError(f"colormap cells must be in 1..64, got {self.cells_long}")
        if not 0 <= self.stripe_rows <= limits.MAX_EDGE_SIDE:
            raise InputError(
                f"--stripe-rows must be in 0..{limits.MAX_EDGE_SIDE} (0 = one stripe), got {self.stripe_rows}"
            )
        if self.texture_quality is not None and not 1 <= self.texture_quality <= 100:
            raise InputError(f"texture quality must be in 1..100, got {self.texture_quality}")
        if self.target not in TARGETS:
            raise InputError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.preview_textures is not None:
            if not self.preview_textures:
                raise InputError("preview_textures needs at least one (cells, quality) pair")
            for cells, quality in self.preview_textures:
                if not 1 <= cells <= 64 or not 1 <= quality <= 100:
                    raise InputError(f"preview texture ({cells}, {quality}) needs cells in 1..64, quality in 1..100")
        bad = [f for f in (*self.order, *self.drop) if f not in DEFAULT_ORDER]
        if bad:
            raise InputError(f"unknown layer family {bad[0]!r}; use semantic, structure, texture")

    def budget(self, width: int, height: int) -> int:
        """Byte budget for a width x height image."""
        return self.max_bytes if self.max_bytes is not None else budget_bytes(self.bpp, width, height)


@dataclass
class EncodeResult:
    """An encoded image with what rate control chose and what it cost."""

    image: EncodedImage
    data: bytes
    budget: int
    fits: bool
    """`len(data) <= budget`: always True, except when even the image header with an empty prompt and no
    structure or texture exceeds the budget (that smallest stream is then returned, with a warning)."""
    rung: Rung | None
    texture_quality: int | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    negative_dropped: bool = False
    """True when the negative prompt was left out to fit the budget (the `negative` cut)."""
    prompt_cuts: tuple[PromptCut, ...] = ()
    """What was cut from the prompt to fit the budget, in the order cut (sender.prompt_fit.STEPS); empty when
    nothing was. `[c.as_dict() for c in prompt_cuts]` is the JSON form."""
    prompt_chars: int = 0
    """Characters of the prompt given (text + negative)."""
    prompt_chars_sent: int = 0
    """Characters of the prompt the semantic layer carries (text + negative); 0 when it is dropped."""
    prompt_sent: Prompt | None = None
    """The prompt the semantic layer carries (None when `options.drop` leaves the layer out)."""
    warnings: list[str] = field(default_factory=list)
    """Human-readable notes for the user when the budget costs the prompt words the decoder would read (the
    text cut below its 75-token window) or no stream can meet the budget. Routine cuts (repeats, text after
    the window, the negative prompt) are only in `prompt_cuts`; layers rate control left out, in `rung` and
    `texture_quality`."""
    prompt_source: str = "argument"
    """Where the prompt came from (sender.encoder.PROMPT_SOURCES); "argument" from encode_image itself."""
    texture_grid: tuple[int, int] | None = None
    """(rows, columns) of the colormap sent; None without a texture layer."""

    @property
    def total_bytes(self) -> int:
        return len(self.data)

    def layer_bytes(self) -> dict[str, int]:
        """Payload bytes per layer family."""
        return {layer.kind.family: layer.nbytes for layer in self.image.layers}


def _grid(image: EncodedImage) -> tuple[int, int] | None:
    for layer in image.layers:
        if layer.kind == LayerKind.TEXTURE:
            params = layer.descriptor.colormap
            return (int(params.grid_height), int(params.grid_width))
    return None


def make_header(
    width: int, height: int, seed: int | None = None, hints: pb.DecoderHints | None = None
) -> pb.ImageHeader:
    """The image header for a width x height image."""
    header = pb.ImageHeader(width=width, height=height)
    if seed is not None:
        header.seed = seed
    if hints is not None and hints.ByteSize():
        header.hints.CopyFrom(hints)
    return header


def canny_extractor(rgb: np.ndarray) -> EdgeFn:
    """Canny at each rung's working resolution (sender.extract_edges), from one grey image: rate control
    asks for several rungs of the same image."""
    from layercast.sender.extract_edges import canny_edges, grayscale

    gray = grayscale(rgb)
    return lambda r: canny_edges(gray, r.long_side, threshold_scale=r.threshold_scale, min_length=r.min_length)


def encode_image(
    rgb: np.ndarray,
    prompt: Prompt,
    *,
    options: EncodeOptions | None = None,
    header: pb.ImageHeader | None = None,
    edge_fn: EdgeFn | None = None,
    edge_source: int = pb.EDGE_SOURCE_CANNY,
    pose: PoseLayer | None = None,
    stream_id: int = 0,
    image_id: int = 0,
) -> EncodeResult:
    """Encode one RGB uint8 image (H, W, 3) with its prompt into a budget-fitted layered stream.

    `edge_fn` replaces the Canny extractor (e.g. HED soft edges); `pose` supplies keypoints when
    options.structure == "pose". A prompt that does not fit beside the minimum structure and texture is
    reduced (repeated prompts, the tokens after the decoder's 75, the negative prompt, then at tiny budgets
    more of the text: sender.prompt_fit); `prompt_cuts` says what was cut.
    """
    opts = options or EncodeOptions()
    opts.validate()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected a uint8 RGB image of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    hdr = header if header is not None else make_header(width, height, opts.seed)
    budget = opts.budget(width, height)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    from layercast.common.codecs.prompt import compress_prompt

    semantic_cache: dict[Prompt, EncodedLayer] = {}

    def coded(p: Prompt) -> EncodedLayer:
        if p not in semantic_cache:
            semantic_cache[p] = compress_prompt(p)
        return semantic_cache[p]

    semantic = coded(prompt) if "semantic" not in opts.drop else None
    t1 = time.perf_counter()
    timings["semantic_ms"] = (t1 - t0) * 1e3

    with_texture = "texture" not in opts.drop
    with_structure = "structure" not in opts.drop and opts.structure != "none"
    texture_cache: dict[tuple[int, int], EncodedLayer] = {}
    colormaps: dict[int, Colormap] = {}

    linear: list[np.ndarray] = []

    def texture(q: int | None, cells: int = opts.cells_long) -> EncodedLayer | None:
        if q is None or not with_texture:
            return None
        if cells not in colormaps:  # the preview target cuts several grids: one linear-light image for all
            from layercast.common.color import srgb8_to_linear
            from layercast.sender.extract_texture import colormap_of_linear

            if not linear:
                linear.append(srgb8_to_linear(rgb))
            colormaps[cells] = colormap_of_linear(linear[0], cells_long=cells)
        if (cells, q) not in texture_cache:
            texture_cache[cells, q] = get_codec(COLORMAP_PRED).compress(colormaps[cells], quality=q)
        return texture_cache[cells, q]

    structure_cache: dict[Rung, EncodedLayer] = {}
    pose_layer: EncodedLayer | None = None
    efn: EdgeFn | None = None
    if with_structure and opts.structure == "pose":
        if pose is None:
            raise InputError("structure 'pose' needs keypoints: pass a pose estimator (--pose-model) or use canny")
        pose_layer = get_codec(POSE_KEYPOINTS).compress(pose)
    elif with_structure:
        efn = edge_fn if edge_fn is not None else canny_extractor(rgb)

    edge_maps: dict[Rung, np.ndarray] = {}

    def edge_map(rung: Rung) -> np.ndarray:
        assert efn is not None
        if rung not in edge_maps:
            edge_maps[rung] = efn(rung)
        return edge_maps[rung]

    def structure(rung: Rung | None) -> EncodedLayer | None:
        if rung is None:
            return None
        if pose_layer is not None:
            return pose_layer
        if rung not in structure_cache:
            edges = edge_map(rung)
            structure_cache[rung] = get_codec(EDGES_CTX).compress(
                EdgeMap(edges=edges, source=edge_source),
                stripe_rows=opts.stripe_rows or edges.shape[0],
                source=edge_source,
            )
        return structure_cache[rung]

    def build(
        rung: Rung | None, q: int | None, sem: EncodedLayer | None = None, cells: int = opts.cells_long
    ) -> EncodedImage:
        first = sem if sem is not None else semantic
        layers = [layer for layer in (first, structure(rung), texture(q, cells)) if layer is not None]
        return EncodedImage(
            header=hdr,
            layers=framing.order_layers(layers, opts.order),
            stream_id=stream_id,
            image_id=image_id,
        )

    def size_of(rung: Rung | None, q: int | None, sem: EncodedLayer | None = None, cells: int = opts.cells_long) -> int:
        return len(framing.images_to_container([build(rung, q, sem, cells)], order=opts.order, bundle=opts.bundle))

    rungs = [Rung(0, 0.0, 0)] if pose_layer is not None else ratecontrol.ladder(opts.max_long_side, opts.min_long_side)
    qualities: Sequence[int] = (
        (opts.texture_quality,) if opts.texture_quality is not None else ratecontrol.TEXTURE_QUALITIES
    )
    base_sizes: dict[tuple[int | None, int], int] = {}
    ref_counts: dict[tuple[float, int], int] = {}

    def estimate(rung: Rung, q: int | None, cells: int = opts.cells_long) -> int:
        """Stream bytes predicted from the edge count at the reference side (edges scale with the side)."""
        knob = (rung.threshold_scale, rung.min_length)
        if knob not in ref_counts:
            ref_counts[knob] = int(np.count_nonzero(edge_map(Rung(opts.max_long_side, *knob))))
        edges = ref_counts[knob] * rung.long_side / opts.max_long_side
        if (q, cells) not in base_sizes:
            base_sizes[q, cells] = size_of(None, q, cells=cells)
        rows = max(1, round(rung.long_side * min(height, width) / max(height, width)))
        stripes = -(-rows // opts.stripe_rows) if opts.stripe_rows else 1
        return base_sizes[q, cells] + STRUCTURE_FRAMING_BYTES + stripes + int(edges * BITS_PER_EDGE / 8)

    def search(cells: int = opts.cells_long, texture_qualities: Sequence[int] | None = None) -> ratecontrol.Choice:
        return ratecontrol.choose(
            budget,
            rungs,
            lambda rung, q: size_of(rung, q, cells=cells),
            texture_qualities=qualities if texture_qualities is None else texture_qualities,
            with_structure=with_structure,
            with_texture=with_texture,
            estimate=(lambda rung, q: estimate(rung, q, cells)) if efn is not None else None,
        )

    def filled(choice: ratecontrol.Choice, cells: int = opts.cells_long) -> ratecontrol.Choice:
        """`choice` with what its rung leaves spent on a finer colormap (`ratecontrol.fill`) unless the quality
        is pinned."""
        if opts.texture_quality is not None:
            return choice
        return ratecontrol.fill(budget, choice, lambda rung, q: size_of(rung, q, cells=cells))

    def preview_search() -> tuple[ratecontrol.Choice, int] | None:
        """The preview target: per (cells, quality) candidate the richest rung that fits beside it, scored by
        ratecontrol.preview_score of the preview decoder's output; None when no candidate's texture fits."""
        candidates = opts.preview_textures or ratecontrol.PREVIEW_TEXTURES
        if opts.texture_quality is not None:
            candidates = tuple(dict.fromkeys((c, opts.texture_quality) for c, _ in candidates))

        def decoded(rung: Rung | None, q: int, cells: int) -> np.ndarray:
            from layercast.common.types import LayerSet
            from layercast.receiver.preview import preview

            tex = texture(q, cells)
            assert tex is not None
            layers = LayerSet(header=pb.ImageHeader(width=width, height=height))
            layers.texture = get_codec(COLORMAP_PRED).decompress(tex.descriptor, tex.units)
            if rung is not None and efn is not None:
                layers.structure = EdgeMap(edges=edge_map(rung), source=edge_source)
            elif rung is not None and pose is not None:
                layers.structure = pose
            return preview(layers)

        return ratecontrol.choose_preview(
            candidates,
            lambda cells, q: filled(search(cells, (q,)), cells),
            lambda choice, cells: decoded(choice.rung, choice.texture_quality or 0, cells),
            rgb,
        )

    fitted = None
    warnings: list[str] = []
    if semantic is not None:
        # the prompt is fitted beside the minimum structure and texture (then without them, on tiny budgets)
        floors = ratecontrol.floors(rungs, qualities, with_structure=with_structure, with_texture=with_texture)
        fitted = prompt_fit.fit_prompt(
            prompt, budget, lambda p, level: size_of(*floors[level], coded(p)), levels=len(floors)
        )
        semantic = coded(fitted.prompt)
        if any(c.step == "truncate_below_window" for c in fitted.cuts):  # the decoder loses words it would read
            warnings.append(prompt_fit.summary(fitted.cuts, budget))
    t2 = time.perf_counter()
    timings["prompt_fit_ms"] = (t2 - t1) * 1e3
    texture_cells = opts.cells_long
    if fitted is not None and not fitted.fits:  # no stream fits: send the smallest
        choice = ratecontrol.Choice(None, None, size_of(None, None), False, 0)
        warnings.append(
            f"the {budget}-byte budget cannot hold even the image header with an empty prompt and no other layer"
            f" ({choice.total_bytes} bytes): raise --bpp or --max-bytes"
        )
    else:
        found = preview_search() if opts.target == "preview" and with_texture else None
        if found is not None:
            choice, texture_cells = found
        else:
            choice = search()
            if choice.texture_quality == qualities[0]:  # (a lower quality left nothing for a finer one)
                choice = filled(choice)
    t3 = time.perf_counter()
    timings["rate_control_ms"] = (t3 - t2) * 1e3
    image = build(choice.rung, choice.texture_quality, cells=texture_cells)
    data = framing.images_to_container([image], order=opts.order, bundle=opts.bundle)
    timings["total_ms"] = (time.perf_counter() - t0) * 1e3
    sent = fitted.prompt if fitted is not None else None
    return EncodeResult(
        image=image,
        data=data,
        budget=budget,
        fits=len(data) <= budget,
        rung=choice.rung if pose_layer is None else None,
        texture_quality=choice.texture_quality,
        texture_grid=_grid(image),
        timings_ms=timings,
        negative_dropped=fitted is not None and any(c.step == "negative" for c in fitted.cuts),
        prompt_cuts=fitted.cuts if fitted is not None else (),
        prompt_chars=len(prompt.text) + len(prompt.negative),
        prompt_chars_sent=len(sent.text) + len(sent.negative) if sent is not None else 0,
        prompt_sent=sent,
        warnings=warnings,
    )
