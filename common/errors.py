"""The one exception tree of Layercast.

Every error a user can cause (bad input, bad bytes, a missing model, a broken link) is a subclass of
:class:`LayercastError` with a message that says what to do. Backend errors (protobuf, aiortc, aiomqtt,
OpenCV, Pillow, diffusers) are mapped into this tree at one choke point in the module that calls them.
"""

from __future__ import annotations


class LayercastError(Exception):
    """Base of every error Layercast raises on purpose."""


class InputError(LayercastError):
    """Bad input from the user: a file that is not an image, an absurd size, a bad option value."""


class UnsupportedImageError(InputError):
    """The image exists but cannot be used (not an image, too large, decompression bomb, bad mode)."""


class BitstreamError(LayercastError):
    """Bytes that are not a valid Layercast bitstream."""


class TruncatedError(BitstreamError):
    """The bitstream ends before a packet or field is complete."""


class ChecksumError(BitstreamError):
    """A packet's CRC-32C does not match its bytes (corrupted in transit or on disk)."""


class VersionError(BitstreamError):
    """The bitstream declares a format version this build does not read."""


class UnknownCodecError(BitstreamError):
    """A layer names a codec id this build does not know."""


class LimitError(BitstreamError):
    """A declared size (width, height, fragment count, payload length) exceeds a safety limit."""


class CodecError(BitstreamError):
    """A layer payload does not decode with its codec."""


class AuthError(BitstreamError):
    """A packet failed authentication (forged, wrong key) or was replayed."""


class StreamMismatchError(BitstreamError):
    """A packet's stream id is not the one of the camera its transport says it came from (another
    camera's topic or connection)."""


class EditError(LayercastError):
    """An edit cannot be applied to this stream (missing layer, out-of-range cell, bad colour)."""


class ModelError(LayercastError):
    """A model (weights, tokenizer, ONNX file) is missing or unusable; the message names what to put where."""


class TransportError(LayercastError):
    """A link failed: connection refused, broker gone, peer closed."""


class TransportTimeout(TransportError):
    """A transport call did not finish within its timeout."""


class NoSubscribersError(TransportError):
    """The broker took a message but no receiver subscribes to its topic, so nobody got it."""


class TransportClosed(TransportError):
    """The transport is closed; no more packets will arrive or can be sent."""
