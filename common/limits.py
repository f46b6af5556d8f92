"""Safety limits checked before any allocation. Bitstreams that declare more are rejected with LimitError."""

from __future__ import annotations

MAX_IMAGE_SIDE = 16384
"""Largest width or height a header may declare, and the largest input image side accepted."""

MAX_INPUT_PIXELS = 64_000_000
"""Largest input image (pixels) the encoder will open: above this Pillow's decompression-bomb guard trips."""

MAX_EDGE_SIDE = 2048
"""Largest edge-map side (the structure layer's working resolution)."""

MAX_GRID_SIDE = 64
"""Largest colormap grid side."""

MAX_FRAGMENTS = 4096
"""Largest fragment count of one layer."""

MAX_UNITS = 4096
"""Largest unit count of one layer."""

MAX_PACKET_BYTES = 65536
"""Largest serialized packet accepted."""

MAX_PROMPT_BYTES = 8192
"""Largest prompt (UTF-8 bytes) the prompt codecs accept or decode to."""

MAX_PEOPLE = 64
"""Largest number of people in a pose layer."""

MAX_FILE_PACKETS = 1_000_000
"""Largest number of packets read from one .lcs container."""

MAX_RENDER_PIXELS = 4_194_304
"""Most pixels a decoder renders (2048 x 2048): a header's declared size is a request, not an order, so
a 53-byte stream declaring 16384 x 16384 is rendered at 2048 x 2048 (aspect kept), not at 1 GB. Change it
like Pillow's ``Image.MAX_IMAGE_PIXELS`` (``layercast.common.limits.MAX_RENDER_PIXELS = ...``), or with
``--max-pixels`` on decode and receive."""

MAX_BUNDLED_LAYERS = 8
"""Largest number of further layers one bundled packet may carry."""
