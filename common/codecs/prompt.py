"""Prompt codecs: raw UTF-8 (reference) and a static prompt model (CODEC_ID_PROMPT_CTX).

CODEC_ID_PROMPT_CTX layers name their model in `PromptParams.model_version`:
  0  prompt model 2, "mix" (prompt_mix): context mixing over statistics of every public prompt corpus;
     what this build writes. 0 is the value proto3 leaves out, so the descriptor is 2 bytes shorter.
  1  prompt model 1, "ctx" (prompt_ctx): the order-5 byte model built from AGIQA-3K; still decoded, so
     streams written before model 2 stay readable (and written on request: model_version=1).
Any other version is refused with CodecError.

`compress_prompt` is what the encoder uses: whichever of prompt-ctx and prompt-utf8 costs fewer bytes
in a stream (`stream_bytes`: its units and its descriptor, with their framing), so a prompt layer is
never larger than the raw UTF-8 layer, whose units are the prompt's bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from layercast.common import limits
from layercast.common.codecs.prompt_ctx import shipped_model
from layercast.common.codecs.prompt_mix import MODEL_VERSION as MIX_VERSION
from layercast.common.codecs.prompt_mix import shipped_mix_model
from layercast.common.errors import CodecError, InputError, UnknownCodecError
from layercast.common.registry import PROMPT_CTX, PROMPT_UTF8, LayerCodec, register
from layercast.common.types import EncodedLayer, LayerKind, Prompt
from layercast.proto import pb
from layercast.proto.framing import encode_varint

CTX_VERSION = 1
"""`PromptParams.model_version` of prompt model 1 (prompt_ctx)."""
MODEL_VERSIONS = {MIX_VERSION: "mix", CTX_VERSION: "ctx"}
"""The prompt models this build reads, by `PromptParams.model_version`."""


@runtime_checkable
class PromptModel(Protocol):
    """What a prompt model does: text bytes to a unit and back."""

    version: int

    def encode(self, text: bytes) -> bytes: ...

    def decode(self, data: bytes, max_bytes: int = ...) -> bytes: ...


def prompt_model(version: int) -> PromptModel:
    """The shipped prompt model of a `PromptParams.model_version`; CodecError for one this build lacks."""
    if version == MIX_VERSION:
        return shipped_mix_model()
    if version == CTX_VERSION:
        return shipped_model()
    known = ", ".join(f"{v} ({n})" for v, n in sorted(MODEL_VERSIONS.items()))
    raise CodecError(
        f"prompt layer was coded with prompt model version {version}, this build has versions {known}; "
        f"decode it with a layercast release that ships model {version}"
    )


def stream_bytes(layer: EncodedLayer) -> int:
    """Every byte a layer costs in a stream: its entry in a bundled packet (field tag, length, descriptor,
    the units field and the length prefixes of all units but the last), so payload + framing exactly.
    A layer sent in a packet of its own costs, on top, the packet's fixed fields, the same for any codec."""
    desc = pb.LayerDescriptor()
    desc.CopyFrom(layer.descriptor)
    units = layer.units
    desc.units = b"".join(encode_varint(len(u)) + u for u in units[:-1]) + (units[-1] if units else b"")
    packet = pb.Packet()
    packet.bundle.append(desc)
    return packet.ByteSize()


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
    """A shipped prompt model + arithmetic coder, one unit per text (model 2 unless `model_version=1`).

    Lossless for any text (lone surrogates included, as with UTF-8 "surrogatepass"). The descriptor
    records the model version; a layer coded with a model this build lacks is refused with CodecError.
    """

    codec_id = PROMPT_CTX
    name = "prompt-ctx"
    kind = LayerKind.SEMANTIC

    def compress(self, value: Prompt, **options: object) -> EncodedLayer:
        """Options: model_version (default 0: model 2); model (a PromptModel to code with instead of the
        shipped one of its version, e.g. a leave-one-corpus-out model in the bench)."""
        model = options.get("model")
        if model is None:
            version = options.get("model_version", MIX_VERSION)
            model = prompt_model(version if isinstance(version, int) else -1)
        if not isinstance(model, PromptModel):
            raise InputError(f"prompt-ctx option model={model!r} is not a prompt model")
        texts = prompt_units(value)
        units = [model.encode(t.encode("utf-8", "surrogatepass")) for t in texts]
        desc = pb.LayerDescriptor(
            codec=self.codec_id,
            unit_count=len(units),
            prompt=pb.PromptParams(model_version=model.version, has_negative=len(units) > 1),
        )
        return EncodedLayer(LayerKind.SEMANTIC, desc, units)

    def decompress(self, descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> Prompt:
        return self.decompress_with(descriptor, units, None)

    def decompress_with(
        self, descriptor: pb.LayerDescriptor, units: Sequence[bytes | None], model: PromptModel | None
    ) -> Prompt:
        """`decompress` with `model` standing in for the shipped model of its version (None: the shipped)."""
        version = descriptor.prompt.model_version
        if model is None or model.version != version:
            model = prompt_model(version)
        _check_units(descriptor, units)
        return _decode_texts(units, model.decode, "prompt unit does not decode to UTF-8 text (corrupt)")


def warm_up() -> None:
    """Load the default prompt model (model 2, 1.7 MB) and compile its coder now (about 1 s with a numba
    cache), so the first real prompt does not stall a receiver; a no-op after the first call."""
    model = shipped_mix_model()
    model.decode(model.encode(b"a cat"))


def compress_prompt(prompt: Prompt, model: PromptModel | None = None) -> EncodedLayer:
    """Code a prompt with whichever of prompt-ctx (model 2, or `model`) and prompt-utf8 costs fewer stream
    bytes (`stream_bytes`; UTF-8 on a tie), so the layer never costs more than the raw UTF-8 layer."""
    utf8 = Utf8PromptCodec().compress(prompt)
    ctx = CtxPromptCodec().compress(prompt, model=model)
    return ctx if stream_bytes(ctx) < stream_bytes(utf8) else utf8


def decompress_prompt(
    descriptor: pb.LayerDescriptor, units: Sequence[bytes | None], model: PromptModel | None = None
) -> Prompt:
    """Decode a layer made by `compress_prompt` (prompt-ctx or prompt-utf8; `model` as there)."""
    if descriptor.codec == PROMPT_CTX:
        return CtxPromptCodec().decompress_with(descriptor, units, model)
    if descriptor.codec == PROMPT_UTF8:
        return Utf8PromptCodec().decompress(descriptor, units)
    raise UnknownCodecError(f"codec id {descriptor.codec} is not a prompt codec (expected 1 or 2)")
