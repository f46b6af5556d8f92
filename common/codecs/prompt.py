"""Prompt codecs: raw UTF-8 (reference) and a static context model (see prompt_ctx).

`compress_prompt` is what the encoder uses: the smaller of the two, so a prompt never grows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from layercast.common import limits
from layercast.common.codecs.prompt_ctx import shipped_model
from layercast.common.errors import CodecError, InputError, UnknownCodecError
from layercast.common.registry import PROMPT_CTX, PROMPT_UTF8, LayerCodec, register
from layercast.common.types import EncodedLayer, LayerKind, Prompt
from layercast.proto import pb


def prompt_units(prompt: Prompt) -> list[str]:
    """The texts a prompt layer carries: [text] or [text, negative]."""
    for t in (prompt.text, prompt.negative):
        if len(t.encode("utf-8", "surrogatepass")) > limits.MAX_PROMPT_BYTES:
            raise InputError(f"prompt longer than {limits.MAX_PROMPT_BYTES} UTF-8 bytes")
    return [prompt.text, prompt.negative] if prompt.negative else [prompt.text]


def units_to_prompt(texts: Sequence[str | None]) -> Prompt:
    """Rebuild a Prompt from decoded unit texts; a lost text unit is an error, a lost negative is dropped."""
    if not texts or texts[0] is None:
        raise CodecError("the prompt text unit is missing")
    negative = texts[1] if len(texts) > 1 and texts[1] is not None else ""
    return Prompt(text=texts[0], negative=negative)


@register
class Utf8PromptCodec(LayerCodec):
    """Raw UTF-8, one unit per text. The reference every prompt coder is measured against."""

    codec_id = PROMPT_UTF8
    name = "prompt-utf8"
    kind = LayerKind.SEMANTIC

    def compress(self, value: Prompt, **options: object) -> EncodedLayer:
        texts = prompt_units(value)
        desc = pb.LayerDescriptor(
            codec=self.codec_id, unit_count=len(texts), prompt=pb.PromptParams(has_negative=len(texts) > 1)
        )
        return EncodedLayer(LayerKind.SEMANTIC, desc, [t.encode("utf-8", "surrogatepass") for t in texts])

    def decompress(self, descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> Prompt:
        _check_units(descriptor, units)
        return _decode_texts(units, bytes, "prompt unit is not valid UTF-8")


def _decode_texts(units: Sequence[bytes | None], to_utf8: Callable[[bytes], bytes], corrupt: str) -> Prompt:
    """The prompt of decoded units (a missing unit stays None): each unit checked against the size limit,
    turned into UTF-8 bytes by `to_utf8`, then into text; CodecError `corrupt: ...` when it is not UTF-8."""
    texts: list[str | None] = []
    for u in units:
        if u is None:
            texts.append(None)
            continue
        if len(u) > limits.MAX_PROMPT_BYTES:
            raise CodecError(f"prompt unit of {len(u)} bytes exceeds {limits.MAX_PROMPT_BYTES}")
        try:
            texts.append(to_utf8(u).decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError as exc:
            raise CodecError(f"{corrupt}: {exc}") from exc
    return units_to_prompt(texts)


def _check_units(descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> None:
    expected = 2 if descriptor.prompt.has_negative else 1
    if len(units) != expected:
        raise CodecError(f"prompt layer has {len(units)} units, its descriptor declares {expected}")


@register
class CtxPromptCodec(LayerCodec):
    """Static byte context model + range coder (prompt_ctx), one unit per text.

    Lossless for any text (lone surrogates included, as with UTF-8 "surrogatepass"). The descriptor
    records the model version; a stream coded with another model version is refused with CodecError.
    """

    codec_id = PROMPT_CTX
    name = "prompt-ctx"
    kind = LayerKind.SEMANTIC

    def compress(self, value: Prompt, **options: object) -> EncodedLayer:
        model = shipped_model()
        texts = prompt_units(value)
        units = [model.encode(t.encode("utf-8", "surrogatepass")) for t in texts]
        desc = pb.LayerDescriptor(
            codec=self.codec_id,
            unit_count=len(units),
            prompt=pb.PromptParams(model_version=model.version, has_negative=len(units) > 1),
        )
        return EncodedLayer(LayerKind.SEMANTIC, desc, units)

    def decompress(self, descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> Prompt:
        model = shipped_model()
        version = descriptor.prompt.model_version
        if version != model.version:
            raise CodecError(
                f"prompt layer was coded with prompt model version {version}, this build has version "
                f"{model.version}; decode it with a layercast release that ships model {version}"
            )
        _check_units(descriptor, units)
        return _decode_texts(units, model.decode, "prompt unit does not decode to UTF-8 text (corrupt)")


def compress_prompt(prompt: Prompt) -> EncodedLayer:
    """Code a prompt with whichever of prompt-ctx and prompt-utf8 has fewer unit bytes (UTF-8 on a tie),
    so the layer is never larger than the prompt's raw UTF-8 bytes."""
    utf8 = Utf8PromptCodec().compress(prompt)
    ctx = CtxPromptCodec().compress(prompt)
    return ctx if ctx.nbytes < utf8.nbytes else utf8


def decompress_prompt(descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> Prompt:
    """Decode a layer made by `compress_prompt` (prompt-ctx or prompt-utf8)."""
    if descriptor.codec == PROMPT_CTX:
        return CtxPromptCodec().decompress(descriptor, units)
    if descriptor.codec == PROMPT_UTF8:
        return Utf8PromptCodec().decompress(descriptor, units)
    raise UnknownCodecError(f"codec id {descriptor.codec} is not a prompt codec (expected 1 or 2)")
