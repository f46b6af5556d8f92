"""Layercast: layered extreme-compression streaming of AI-generated images.

    import layercast

    data = layercast.encode("bird.png")            # bytes of a layered .lcs stream (0.02 bpp)
    img = layercast.open(data)                     # img.prompt, img.edges, img.colormap, edits
    layercast.decode(data).save("bird-preview.png")

The streaming half: :class:`SendSession` and :class:`ReceiveSession` over a transport (MQTT, WebRTC,
file, memory), configured by :class:`LinkProfile`, :class:`FecPolicy`, :class:`KeyRing` and, for the
generative decoder, :class:`SDConfig`. See the README's "Python API" section.
"""

from importlib.metadata import PackageNotFoundError, version

from layercast.api import LayeredImage, decode, encode, make_decoder, open, open_all, read_images
from layercast.common.errors import InputError, LayercastError, ModelError
from layercast.common.fec import FecPolicy
from layercast.common.replay import KeyRing
from layercast.common.types import Prompt
from layercast.receiver.models import SDConfig
from layercast.receiver.session import ReceiveSession, Stage
from layercast.sender.encode import EncodeOptions, EncodeResult
from layercast.sender.encoder import Encoder
from layercast.sender.link import LinkProfile
from layercast.sender.session import SendReport, SendSession

try:
    __version__ = version("layercast")
    """The installed distribution's version (one place: pyproject.toml)."""
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "EncodeOptions",
    "EncodeResult",
    "Encoder",
    "FecPolicy",
    "InputError",
    "KeyRing",
    "LayercastError",
    "LayeredImage",
    "LinkProfile",
    "ModelError",
    "Prompt",
    "ReceiveSession",
    "SDConfig",
    "SendReport",
    "SendSession",
    "Stage",
    "__version__",
    "decode",
    "encode",
    "make_decoder",
    "open",
    "open_all",
    "read_images",
]
