"""Images as users hold them (files, bytes, PIL images, arrays) -> layered streams, with fixed settings.

    enc = Encoder(EncodeOptions(bpp=0.02), resize=512, prompts=load_prompts("prompts.csv"))
    result = enc.encode("bird.png")         # an EncodeResult: .data (the .lcs bytes), .image, what was cut
    result.prompt_source                     # "metadata", "prompts-file", "sidecar", ... (see PROMPT_SOURCES)

Where the prompt comes from, first match wins: the `prompt` argument of :meth:`Encoder.encode`, then
`Encoder.prompt` (`--prompt`), the prompts file (`--prompts`), the image's sidecar text file, the image's own
generation metadata, the captioner (`--caption`); otherwise the semantic layer is empty and the result
carries a warning saying so. The metadata's seed and generation hints travel whatever the prompt's source.
Models (HED, pose, captioner) are loaded once per process and shared by every Encoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from layercast.common.errors import InputError
from layercast.common.types import Prompt
from layercast.proto import pb
from layercast.sender.encode import EncodeOptions, EncodeResult, encode_image, make_header
from layercast.sender.extract_prompt import prompt_for
from layercast.sender.image_io import LoadedImage, from_array, from_pil, load_image, resize_rgb
from layercast.sender.prompt_source import PromptBook, read_sidecar

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, Image.Image, np.ndarray]
"""What :meth:`Encoder.encode` takes: a path, the bytes of an image file, a PIL image or a uint8 array."""

PROMPT_SOURCES = ("argument", "option", "prompts-file", "sidecar", "metadata", "caption", "none")
"""Values of `EncodeResult.prompt_source`, in the order they are tried."""

EMPTY_PROMPT_WARNING = (
    "no prompt: the image has no generation metadata, no sidecar .txt and no --prompts entry, so its semantic"
    " layer is empty (give --prompt, --prompts FILE, a sidecar IMAGE.txt or --caption MODEL)"
)


@dataclass
class Encoder:
    """Encode images with one set of settings (see the module docstring).

    `options`: the codec settings (budget, structure, colormap, ...). `prompt` / `negative`: used for every
    image. `resize`: (width, height), or a long side, applied before encoding. `prompts`: a PromptBook
    (:func:`layercast.sender.prompt_source.load_prompts`). `sidecars`: read `IMAGE.txt` beside image files.
    `caption_model`: a local captioning model folder (or cached repo id) run on images with no prompt.
    `hed_weights` / `pose_model`: for ``options.structure`` "hed" / "pose". `auto_stripes`: let a sender code
    an image whose structure layer travels in one packet with one edge stripe (see SendSession.encode_file).
    """

    options: EncodeOptions = field(default_factory=EncodeOptions)
    prompt: str | None = None
    negative: str | None = None
    resize: tuple[int, int] | int | None = None
    prompts: PromptBook | None = None
    sidecars: bool = True
    caption_model: str | None = None
    caption_device: str = "auto"
    hed_weights: str | None = None
    pose_model: str | None = None
    auto_stripes: bool = True

    def __post_init__(self) -> None:
        self.options.validate()
        if self.options.structure == "pose" and not self.pose_model:
            raise InputError("--structure pose needs --pose-model MODEL.onnx (a DWPose/OpenPose ONNX file)")

    def with_options(self, **changes: Any) -> Encoder:
        """A copy with some EncodeOptions fields changed (e.g. ``stripe_rows=0``)."""
        return replace(self, options=replace(self.options, **changes))

    def encode(
        self,
        image: ImageInput,
        *,
        prompt: str | None = None,
        negative: str | None = None,
        stream_id: int = 0,
        image_id: int = 0,
    ) -> EncodeResult:
        """Encode one image into a budget-fitted layered stream (an EncodeResult; `.data` is the .lcs file)."""
        loaded, path = _open(image)
        chosen, source, gen = self._prompt(loaded, path, prompt)
        if negative is not None or self.negative is not None:
            chosen = Prompt(chosen.text, negative if negative is not None else self.negative or "")
        warnings: list[str] = []
        if not chosen.text and "semantic" not in self.options.drop:
            source = "none"
            warnings.append(EMPTY_PROMPT_WARNING)
        rgb = resize_rgb(loaded.rgb, self.resize)
        seed = self.options.seed if self.options.seed is not None or gen is None else gen.seed
        header = make_header(int(rgb.shape[1]), int(rgb.shape[0]), seed, gen.hints() if gen is not None else None)
        edge_fn = None
        edge_source = pb.EDGE_SOURCE_CANNY
        pose = None
        if self.options.structure == "hed":
            from layercast.sender.hed import hed_extractor, load_hed

            detector = _model(("hed", self.hed_weights), lambda: load_hed(self.hed_weights))
            edge_fn = hed_extractor(rgb, detector)
            edge_source = pb.EDGE_SOURCE_HED
        elif self.options.structure == "pose":
            from layercast.sender.pose_onnx import load_pose_onnx

            model = self.pose_model
            assert model is not None  # checked in __post_init__
            pose = _model(("pose", model), lambda: load_pose_onnx(model))(rgb)
        result = encode_image(
            rgb,
            chosen,
            options=self.options,
            header=header,
            edge_fn=edge_fn,
            edge_source=edge_source,
            pose=pose,
            stream_id=stream_id,
            image_id=image_id,
        )
        result.prompt_source = source
        result.warnings = warnings + list(result.warnings)
        return result

    def _prompt(self, loaded: LoadedImage, path: Path | None, prompt: str | None) -> tuple[Prompt, str, Any]:
        """(prompt, its source, the metadata's GenerationInfo or None)."""
        from_meta, gen = prompt_for(loaded.info)
        if prompt is not None:
            return Prompt(prompt), "argument", gen
        if self.prompt is not None:
            return Prompt(self.prompt), "option", gen
        if self.prompts is not None and path is not None:
            found = self.prompts.get(path)
            if found is not None:
                return found, "prompts-file", gen
        if self.sidecars and path is not None:
            side = read_sidecar(path)
            if side is not None:
                return side, "sidecar", gen
        if from_meta.text:
            return from_meta, "metadata", gen
        if self.caption_model:
            caption = self.captioner()(loaded.rgb)
            return Prompt(caption, from_meta.negative), "caption", gen
        return from_meta, "none", gen

    def captioner(self) -> Callable[[np.ndarray], str]:
        """The captioning model (loaded on first use; ModelError names what is missing and where)."""
        from layercast.sender.caption import load_captioner

        ref = self.caption_model
        return _model(("caption", f"{ref}|{self.caption_device}"), lambda: load_captioner(ref, self.caption_device))


def _open(image: ImageInput) -> tuple[LoadedImage, Path | None]:
    if isinstance(image, str | os.PathLike):
        return load_image(Path(image)), Path(image)
    if isinstance(image, bytes | bytearray | memoryview):
        return load_image(bytes(image)), None
    if isinstance(image, Image.Image):
        return from_pil(image), None
    if isinstance(image, np.ndarray):
        return from_array(image), None
    raise InputError(
        f"cannot encode a {type(image).__name__}: pass a file path, image file bytes, a PIL image or a uint8 array"
    )


_MODELS: dict[tuple[str, str | None], Any] = {}


def _model(key: tuple[str, str | None], load: Callable[[], Any]) -> Any:
    """Load a model once per process (a folder of images reuses it)."""
    if key not in _MODELS:
        _MODELS[key] = load()
    return _MODELS[key]
