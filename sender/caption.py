"""Captioner for images without a prompt: a BLIP-class image-to-text model through transformers, offline.

Loads from a local folder or the local Hugging Face cache (`local_files_only=True`): BLIP
(`BlipForConditionalGeneration`), or any model `AutoModelForImageTextToText` loads (BLIP-2, Florence-class,
...). Greedy decoding, so a caption is deterministic for a given model and image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from layercast.common.errors import InputError, ModelError

CAPTION_HINT = (
    "a transformers image-captioning folder (config.json, weights, preprocessor + tokenizer files), e.g. "
    "Salesforce/blip-image-captioning-base saved with save_pretrained"
)


class Captioner:
    """Image -> caption string. Build with :func:`load_captioner`."""

    def __init__(
        self, model: Any, processor: Any, device: str = "cpu", max_new_tokens: int = 30, prompt: str | None = None
    ) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt

    def __call__(self, rgb: np.ndarray) -> str:
        """The caption of a uint8 RGB HxWx3 image (greedy decoding), stripped."""
        import torch
        from PIL import Image

        a = np.asarray(rgb)
        if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8:
            raise InputError(f"captioning expects uint8 RGB HxWx3, got {a.dtype} {a.shape}")
        image = Image.fromarray(np.ascontiguousarray(a[:, :, :3]))
        kwargs: dict[str, Any] = {"images": image, "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = self.prompt
        inputs = self.processor(**kwargs).to(self.device)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        text = self.processor.batch_decode(ids, skip_special_tokens=True)[0]
        if self.prompt and text.startswith(self.prompt):
            text = text[len(self.prompt) :]
        return " ".join(str(text).split())


def load_captioner(
    ref: str | Path | None, device: str = "auto", *, max_new_tokens: int = 30, prompt: str | None = None
) -> Captioner:
    """Load a captioner from a local folder / cached repo id; ModelError names what to put where."""
    from transformers import AutoConfig, AutoProcessor

    from layercast.receiver.models import resolve_model_dir, torch_device_dtype

    path = resolve_model_dir(str(ref) if ref else None, "captioning model", expect=("config.json",), hint=CAPTION_HINT)
    dev, _ = torch_device_dtype(device, "float32")
    try:
        model: Any
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        if config.model_type == "blip":
            from transformers import BlipForConditionalGeneration

            model = BlipForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
        else:
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"captioning model at {path} could not be loaded ({e}): put {CAPTION_HINT} there") from e
    model.eval().to(dev)
    return Captioner(model, processor, dev, max_new_tokens, prompt)
