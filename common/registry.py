"""The codec registry: layer codecs by explicit, append-only wire id.

Ids are the `CodecId` enum values of proto/layercast.proto, written out here by hand (never derived
from registration order). `register` refuses an id that disagrees with the proto or is taken twice.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from layercast.common.errors import UnknownCodecError
from layercast.common.types import EncodedLayer, LayerKind
from layercast.proto import pb

PROMPT_UTF8 = pb.CODEC_ID_PROMPT_UTF8  # 1
PROMPT_CTX = pb.CODEC_ID_PROMPT_CTX  # 2
EDGES_CTX = pb.CODEC_ID_EDGES_CTX  # 3
COLORMAP_PRED = pb.CODEC_ID_COLORMAP_PRED  # 4
POSE_KEYPOINTS = pb.CODEC_ID_POSE_KEYPOINTS  # 5

_BUILTIN_MODULES = (
    "layercast.common.codecs.prompt",
    "layercast.common.codecs.edges",
    "layercast.common.codecs.colormap",
    "layercast.common.codecs.pose",
)


class LayerCodec(ABC):
    """A pure, deterministic layer codec: same value and options in, same bytes out, on every machine.

    `compress` returns an EncodedLayer whose descriptor fully describes how to decode each unit;
    `decompress` takes that descriptor and the units (None for a unit that was lost) and returns the
    layer value. Codecs that cannot use a partial layer raise CodecError naming the missing units.
    """

    codec_id: ClassVar[pb.CodecId]
    name: ClassVar[str]
    kind: ClassVar[LayerKind]

    @abstractmethod
    def compress(self, value: Any, **options: Any) -> EncodedLayer:
        """Encode a layer value."""

    @abstractmethod
    def decompress(self, descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> Any:
        """Decode a layer value from its descriptor and units."""


_REGISTRY: dict[int, LayerCodec] = {}
_loaded = False


def register(cls: type[LayerCodec]) -> type[LayerCodec]:
    """Class decorator: register a codec under its explicit `codec_id`."""
    proto_name = pb.CodecId.Name(cls.codec_id) if cls.codec_id in pb.CodecId.values() else None
    if proto_name is None:
        raise ValueError(f"codec id {cls.codec_id} of {cls.__name__} is not declared in layercast.proto")
    if cls.codec_id in _REGISTRY and type(_REGISTRY[cls.codec_id]) is not cls:
        raise ValueError(f"codec id {cls.codec_id} registered twice ({cls.__name__})")
    _REGISTRY[cls.codec_id] = cls()
    return cls


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)
        _loaded = True


def get_codec(codec_id: int) -> LayerCodec:
    """The codec for a wire id; UnknownCodecError if none."""
    _load_builtins()
    try:
        return _REGISTRY[codec_id]
    except KeyError:
        raise UnknownCodecError(
            f"codec id {codec_id} is not known to this build (known: {sorted(_REGISTRY)}); upgrade layercast"
        ) from None


def codec_by_name(name: str) -> LayerCodec:
    """The codec registered under `name` (e.g. "prompt-ctx")."""
    _load_builtins()
    for codec in _REGISTRY.values():
        if codec.name == name:
            return codec
    known = sorted(c.name for c in _REGISTRY.values())
    raise UnknownCodecError(f"no codec named {name!r} (known: {', '.join(known)})")


def all_codecs() -> dict[int, LayerCodec]:
    """Every registered codec by id."""
    _load_builtins()
    return dict(_REGISTRY)


def decode_layer(descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> Any:
    """Decode one layer value with the codec its descriptor names."""
    return get_codec(descriptor.codec).decompress(descriptor, units)
