from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LayerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LAYER_KIND_UNSPECIFIED: _ClassVar[LayerKind]
    LAYER_KIND_SEMANTIC: _ClassVar[LayerKind]
    LAYER_KIND_STRUCTURE_EDGES: _ClassVar[LayerKind]
    LAYER_KIND_STRUCTURE_POSE: _ClassVar[LayerKind]
    LAYER_KIND_TEXTURE: _ClassVar[LayerKind]

class CodecId(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_ID_UNSPECIFIED: _ClassVar[CodecId]
    CODEC_ID_PROMPT_UTF8: _ClassVar[CodecId]
    CODEC_ID_PROMPT_CTX: _ClassVar[CodecId]
    CODEC_ID_EDGES_CTX: _ClassVar[CodecId]
    CODEC_ID_COLORMAP_PRED: _ClassVar[CodecId]
    CODEC_ID_POSE_KEYPOINTS: _ClassVar[CodecId]

class EdgeSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EDGE_SOURCE_CANNY: _ClassVar[EdgeSource]
    EDGE_SOURCE_HED: _ClassVar[EdgeSource]
    EDGE_SOURCE_PIDINET: _ClassVar[EdgeSource]
LAYER_KIND_UNSPECIFIED: LayerKind
LAYER_KIND_SEMANTIC: LayerKind
LAYER_KIND_STRUCTURE_EDGES: LayerKind
LAYER_KIND_STRUCTURE_POSE: LayerKind
LAYER_KIND_TEXTURE: LayerKind
CODEC_ID_UNSPECIFIED: CodecId
CODEC_ID_PROMPT_UTF8: CodecId
CODEC_ID_PROMPT_CTX: CodecId
CODEC_ID_EDGES_CTX: CodecId
CODEC_ID_COLORMAP_PRED: CodecId
CODEC_ID_POSE_KEYPOINTS: CodecId
EDGE_SOURCE_CANNY: EdgeSource
EDGE_SOURCE_HED: EdgeSource
EDGE_SOURCE_PIDINET: EdgeSource

class DecoderHints(_message.Message):
    __slots__ = ("steps", "cfg_scale", "sampler", "model_hash", "model_name")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    steps: int
    cfg_scale: float
    sampler: str
    model_hash: str
    model_name: str
    def __init__(self, steps: _Optional[int] = ..., cfg_scale: _Optional[float] = ..., sampler: _Optional[str] = ..., model_hash: _Optional[str] = ..., model_name: _Optional[str] = ...) -> None: ...

class ImageHeader(_message.Message):
    __slots__ = ("width", "height", "seed", "hints", "layer_count")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    HINTS_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    seed: int
    hints: DecoderHints
    layer_count: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., seed: _Optional[int] = ..., hints: _Optional[_Union[DecoderHints, _Mapping]] = ..., layer_count: _Optional[int] = ...) -> None: ...

class PromptParams(_message.Message):
    __slots__ = ("model_version", "has_negative")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HAS_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    has_negative: bool
    def __init__(self, model_version: _Optional[int] = ..., has_negative: _Optional[bool] = ...) -> None: ...

class EdgeParams(_message.Message):
    __slots__ = ("width", "height", "stripe_rows", "source", "model_version", "stripe_group")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STRIPE_ROWS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STRIPE_GROUP_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    stripe_rows: int
    source: EdgeSource
    model_version: int
    stripe_group: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., stripe_rows: _Optional[int] = ..., source: _Optional[_Union[EdgeSource, str]] = ..., model_version: _Optional[int] = ..., stripe_group: _Optional[int] = ...) -> None: ...

class ColormapParams(_message.Message):
    __slots__ = ("grid_width", "grid_height", "quality")
    GRID_WIDTH_FIELD_NUMBER: _ClassVar[int]
    GRID_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    grid_width: int
    grid_height: int
    quality: int
    def __init__(self, grid_width: _Optional[int] = ..., grid_height: _Optional[int] = ..., quality: _Optional[int] = ...) -> None: ...

class PoseParams(_message.Message):
    __slots__ = ("width", "height", "keypoint_count")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    KEYPOINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    keypoint_count: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., keypoint_count: _Optional[int] = ...) -> None: ...

class LayerDescriptor(_message.Message):
    __slots__ = ("codec", "unit_count", "prompt", "edges", "colormap", "pose", "units", "kind")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    UNIT_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    COLORMAP_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    codec: CodecId
    unit_count: int
    prompt: PromptParams
    edges: EdgeParams
    colormap: ColormapParams
    pose: PoseParams
    units: bytes
    kind: LayerKind
    def __init__(self, codec: _Optional[_Union[CodecId, str]] = ..., unit_count: _Optional[int] = ..., prompt: _Optional[_Union[PromptParams, _Mapping]] = ..., edges: _Optional[_Union[EdgeParams, _Mapping]] = ..., colormap: _Optional[_Union[ColormapParams, _Mapping]] = ..., pose: _Optional[_Union[PoseParams, _Mapping]] = ..., units: _Optional[bytes] = ..., kind: _Optional[_Union[LayerKind, str]] = ...) -> None: ...

class Packet(_message.Message):
    __slots__ = ("version", "stream_id", "image_id", "kind", "priority", "fragment_index", "fragment_count", "unit_first", "part_index", "part_count", "payload", "header", "layer", "repair_count", "fec_scheme", "sequence", "auth_tag", "crc32c", "bundle")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIRST_FIELD_NUMBER: _ClassVar[int]
    PART_INDEX_FIELD_NUMBER: _ClassVar[int]
    PART_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    REPAIR_COUNT_FIELD_NUMBER: _ClassVar[int]
    FEC_SCHEME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AUTH_TAG_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    version: int
    stream_id: int
    image_id: int
    kind: LayerKind
    priority: int
    fragment_index: int
    fragment_count: int
    unit_first: int
    part_index: int
    part_count: int
    payload: bytes
    header: ImageHeader
    layer: LayerDescriptor
    repair_count: int
    fec_scheme: int
    sequence: int
    auth_tag: bytes
    crc32c: int
    bundle: _containers.RepeatedCompositeFieldContainer[LayerDescriptor]
    def __init__(self, version: _Optional[int] = ..., stream_id: _Optional[int] = ..., image_id: _Optional[int] = ..., kind: _Optional[_Union[LayerKind, str]] = ..., priority: _Optional[int] = ..., fragment_index: _Optional[int] = ..., fragment_count: _Optional[int] = ..., unit_first: _Optional[int] = ..., part_index: _Optional[int] = ..., part_count: _Optional[int] = ..., payload: _Optional[bytes] = ..., header: _Optional[_Union[ImageHeader, _Mapping]] = ..., layer: _Optional[_Union[LayerDescriptor, _Mapping]] = ..., repair_count: _Optional[int] = ..., fec_scheme: _Optional[int] = ..., sequence: _Optional[int] = ..., auth_tag: _Optional[bytes] = ..., crc32c: _Optional[int] = ..., bundle: _Optional[_Iterable[_Union[LayerDescriptor, _Mapping]]] = ...) -> None: ...
