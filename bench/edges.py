"""Edge-coder bench: EDGES_CTX (v4: the mixing coder in context groups of stripes; v3: the same coder with
independent stripes; v2: the counts-only coder before it) vs JBIG85
(jbigkit `pbmtojbg85`) vs 1-bit PNG on the same held-out maps.

Maps are thin Canny maps (sender.extract_edges) of the held-out AIGI images (edge_corpus.is_held_out,
never used to build the priors), resized to 512x512 first, at several working long sides (192 is the
extractor's default), cut in stripes of the encoder's default height.

Fair counting: JBIG85 and PNG are complete files (JBIG85's 20-byte header included), so each coder is
counted by every byte its structure layer adds to a `.lcs` stream as `layercast encode` writes it (one
packet per image, layers bundled; `stream_bytes`): the layer's descriptor, the varint length prefix of
every stripe but the last, and the stripes' bytes. The same layer in a packet of its own (as the per-layer
`webrtc` profile sends it: its own ids, header and CRC) and the payload alone (the units' bytes) are shown
beside it.
"""

from __future__ import annotations

import io
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

LONG_SIDES = (128, 192, 256)
DEFAULT_SIDE = 192
"""The working long side `canny_edges` uses unless rate control picks another (the bench's headline)."""

CODERS: dict[str, tuple[int, int | None]] = {"v4": (4, None), "v4 whole": (4, 0), "v3": (3, None), "v2": (2, None)}
"""Coders compared: name -> (EdgeParams.model_version, stripe rows: None = the run's, 0 = the whole map in one
stripe). v4: the mixing coder in context groups of DEFAULT_STRIPE_GROUP stripes, the default; "v4 whole":
v4 in one stripe, as a sender codes a map whose structure layer travels in one packet (the `webrtc` and
`mqtt` profiles; `SendSession.encode_file`); v3: the mixing coder, independent stripes; v2: counts-only."""


def jbig85_bytes(bits: np.ndarray) -> int | None:
    """Bytes of the JBIG85 (T.85) file `pbmtojbg85` writes for a bool map; None if jbigkit is missing."""
    exe = shutil.which("pbmtojbg85")
    if exe is None:
        return None
    b = np.asarray(bits, dtype=bool)
    h, w = b.shape
    pbm = b"P4\n%d %d\n" % (w, h) + np.packbits(b, axis=1).tobytes()
    out = subprocess.run([exe], input=pbm, capture_output=True, check=True, timeout=60)
    return len(out.stdout)


def png_bytes(bits: np.ndarray) -> int:
    """Bytes of a 1-bit PNG of the map (Pillow, optimize=True)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(bits, dtype=bool)).save(buf, "PNG", optimize=True)
    return len(buf.getvalue())


def stream_bytes(layer: Any, *, bundle: bool = True) -> int:
    """Bytes a structure layer adds to a `.lcs` stream: the container of an image with a (one-word)
    semantic layer and this layer, minus the container of that image without it. The semantic layer goes
    first and carries the image header, as in every encoded stream. `bundle`: the layers share one packet
    (as `layercast encode` writes files and MQTT / `webrtc-bundle` links send them); False: one packet per
    layer (as the per-layer `webrtc` profile sends them)."""
    from layercast.common.types import EncodedImage, EncodedLayer, LayerKind
    from layercast.proto import framing, pb

    header = pb.ImageHeader(width=512, height=512)
    semantic = EncodedLayer(
        LayerKind.SEMANTIC,
        pb.LayerDescriptor(codec=pb.CODEC_ID_PROMPT_UTF8, unit_count=1, prompt=pb.PromptParams()),
        [b"bird"],
    )
    with_layer = framing.images_to_container([EncodedImage(header, [semantic, layer])], bundle=bundle)
    without = framing.images_to_container([EncodedImage(header, [semantic])], bundle=bundle)
    return len(with_layer) - len(without)


def default_stripe_rows() -> int:
    """The encoder's default stripe height (sender.encode.EncodeOptions)."""
    from layercast.sender.encode import EncodeOptions

    return EncodeOptions().stripe_rows


def run(
    aigi_dir: Path,
    long_sides: tuple[int, ...] = LONG_SIDES,
    stripe_rows: int | None = None,
    coders: dict[str, tuple[int, int | None]] | None = None,
) -> dict[str, Any]:
    """Sizes and timings per long side and coder on the held-out images of `aigi_dir` (each map round-trip
    checked). `stripe_rows` None: the encoder's default."""
    from layercast.common.codecs.edge_corpus import corpus_images
    from layercast.common.codecs.edges import EdgesCtxCodec, warm_up
    from layercast.common.types import EdgeMap
    from layercast.sender.extract_edges import canny_edges

    rows = default_stripe_rows() if stripe_rows is None else stripe_rows
    coders = dict(CODERS if coders is None else coders)
    codec = EdgesCtxCodec()
    warm_up()
    images = list(corpus_images(Path(aigi_dir), held_out=True))
    per: dict[int, dict[str, Any]] = {}
    for side in long_sides:
        maps = [(name, canny_edges(rgb, side)) for name, rgb in images]
        jbig = [jbig85_bytes(bits) for _name, bits in maps]
        have_jbig = all(j is not None for j in jbig)
        jbig_total = sum(j or 0 for j in jbig) if have_jbig else None
        png = sum(png_bytes(bits) for _name, bits in maps)
        pixels = sum(bits.size for _name, bits in maps)
        edge_px = sum(int(bits.sum()) for _name, bits in maps)
        row: dict[str, Any] = {
            "images": len(maps),
            "jbig85_bytes": jbig_total,
            "png_bytes": png,
            "edge_density": edge_px / pixels if pixels else 0.0,
            "coders": {},
        }
        for coder, (version, coder_rows) in coders.items():
            coder_stripes = rows if coder_rows is None else coder_rows  # 0: the whole map in one stripe
            payload = stream = per_layer = 0
            enc_ms: list[float] = []
            dec_ms: list[float] = []
            codec.compress(EdgeMap(maps[0][1]), stripe_rows=rows, model_version=version)  # load + compile
            for name, bits in maps:
                stripe = coder_stripes or bits.shape[0]
                t0 = time.perf_counter()
                layer = codec.compress(EdgeMap(bits), stripe_rows=stripe, model_version=version)
                t1 = time.perf_counter()
                back = codec.decompress(layer.descriptor, layer.units)
                t2 = time.perf_counter()
                if not np.array_equal(back.edges, bits):
                    raise AssertionError(f"edge codec {coder} round trip failed on {name} at {side}")
                enc_ms.append((t1 - t0) * 1e3)
                dec_ms.append((t2 - t1) * 1e3)
                payload += layer.nbytes
                stream += stream_bytes(layer)
                per_layer += stream_bytes(layer, bundle=False)
            row["coders"][coder] = {
                "model_version": version,
                "stripe_rows": coder_stripes,
                "payload_bytes": payload,
                "stream_bytes": stream,
                "per_layer_stream_bytes": per_layer,
                "ratio_jbig85": stream / jbig_total if jbig_total else None,
                "payload_ratio_jbig85": payload / jbig_total if jbig_total else None,
                "per_layer_ratio_jbig85": per_layer / jbig_total if jbig_total else None,
                "ratio_png": stream / png if png else None,
                "bits_per_edge_pixel": 8 * payload / edge_px if edge_px else None,
                "encode_ms_median": statistics.median(enc_ms) if enc_ms else None,
                "decode_ms_median": statistics.median(dec_ms) if dec_ms else None,
            }
        per[side] = row
    return {
        "split": "held-out",
        "stripe_rows": rows,
        "counting": "stream bytes of the structure layer (.lcs, one packet per image) vs complete JBIG85/PNG files",
        "long_sides": per,
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of `run`'s result."""

    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    lines = [
        f"edge coders on {result['split']} images, stripes of {result['stripe_rows']} rows. Fair counting: 'stream B'",
        "= every byte the structure layer adds to a .lcs file (one packet per image: descriptor, stripe length",
        "prefixes, stripes) vs complete JBIG85 files (pbmtojbg85, 20-byte header included) and 1-bit PNGs;",
        "'pkt/JBIG' = the same layer in a packet of its own (per-layer webrtc profile); 'payload' = the stripes' bytes",
        "alone; ms = median per map (numba if installed). v4 = the mixing coder in groups of 2 stripes (default),",
        "'v4 whole' = v4 in one stripe (a webrtc/mqtt sender's map when its layer travels in one packet),",
        "v3 = the mixing coder with independent stripes, v2 = the counts-only coder before it.",
        f"{'side':>5} {'coder':>8} {'stream B':>8} {'JBIG85 B':>8} {'str/JBIG':>8} {'pkt/JBIG':>8} "
        f"{'payload':>8} {'pay/JBIG':>8} {'str/PNG':>7} {'bits/edge':>9} {'enc ms':>6} {'dec ms':>6}",
    ]
    for side, r in result["long_sides"].items():
        for coder, c in r["coders"].items():
            mark = "*" if int(side) == DEFAULT_SIDE else " "
            lines.append(
                f"{side:>4}{mark} {coder:>8} {c['stream_bytes']:>8} {fmt(r['jbig85_bytes'], 'd'):>8} "
                f"{fmt(c['ratio_jbig85'], '.3f'):>8} {fmt(c['per_layer_ratio_jbig85'], '.3f'):>8} "
                f"{c['payload_bytes']:>8} {fmt(c['payload_ratio_jbig85'], '.3f'):>8} "
                f"{fmt(c['ratio_png'], '.3f'):>7} {fmt(c['bits_per_edge_pixel'], '.2f'):>9} "
                f"{fmt(c['encode_ms_median'], '.2f'):>6} {fmt(c['decode_ms_median'], '.2f'):>6}"
            )
    lines.append(f"* the extractor's default working side ({DEFAULT_SIDE} px)")
    return "\n".join(lines)
