"""The `layercast` command: encode, decode, inspect, edit, bench, send, receive, demo.

Every subcommand prints human text by default and one JSON document with --json. `main(argv)` is
callable in-process (tests do). Errors a user can cause exit with status 1 and one clear line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layercast import cli_stream
from layercast.cli_options import (
    add_decoder_options,
    add_encode_options,
    encoder_from_args,
    make_decoder,
)
from layercast.common.errors import InputError, LayercastError
from layercast.common.types import DEFAULT_ORDER, EncodedImage

if TYPE_CHECKING:
    from layercast.api import LayeredImage
    from layercast.sender.encode import EncodeResult

EPILOG = """\
examples:
  layercast demo                                   stream sample images over a lossy WebRTC link on loopback
  layercast encode photo.png -o photo.lcs          0.02 bpp (655 bytes at 512x512), prompt from metadata
  layercast encode imgs/ -o streams/ --resize 512  a whole folder, resized to 512x512 as the paper does
  layercast inspect photo.lcs                      per-layer bytes, the prompt, the edge map, the colormap
  layercast decode photo.lcs -o photo.png          CPU preview decoder (default; --decoder sd for Stable Diffusion)
  layercast decode photo.lcs --layer semantic -o prompt.txt
  layercast edit photo.lcs -o new.lcs --prompt "a blue bird" --hue-shift 30
  layercast bench ../shared/data/aigi --limit 20   sizes, speed and quality against JPEG/WebP/AVIF/JBIG/brotli

exit status:
  0 done; 1 an error the user can fix (bad input, a file that cannot be read or written, missing models;
  one line on stderr, and {"error", "message"} on stdout with --json); 2 bad command-line usage;
  3 `send --spool`: images still queued; 70 an internal error (LAYERCAST_DEBUG=1 shows the traceback);
  130 interrupted.

Python: `import layercast; layercast.encode(...)`, `layercast.open(...)`, `layercast.decode(...)` (README).
"""

ENCODE_HELP = """\
Encode images into layered .lcs streams at an extreme budget (default 0.02 bpp, framing included): the
prompt (semantic layer), an edge map or pose (structure) and a tiny colormap (texture). Rate control picks
the edge resolution and colormap quality that fit; when the prompt alone would break the budget it is
reduced in a documented order, and the JSON says what was cut.

The prompt comes from, first found: --prompt, a --prompts FILE entry, a sidecar IMAGE.txt, the image's own
generation metadata (A1111/Forge, ComfyUI, Fooocus, InvokeAI, NovelAI), --caption MODEL. An image with none
goes out with an empty semantic layer and a warning ("prompt_source": "none" in the JSON).

examples:
  layercast encode photo.png -o photo.lcs
  layercast encode imgs/ -o streams/ --resize 512 --json
  layercast encode imgs/ -o streams/ --prompts ../shared/data/aigi/manifest.csv
  layercast encode photo.jpg -o photo.lcs --prompt "a red bird on a branch" --max-bytes 400
  layercast encode people.png -o people.lcs --structure pose --pose-model dwpose.onnx
"""

DECODE_HELP = """\
Decode a .lcs stream into an image (or write one layer). The default decoder is the CPU preview (colormap
placed by the edge map); --decoder sd runs Stable Diffusion from local model folders (falls back to the
preview, with a warning, when they cannot be loaded). A stream of several images writes NAME-<id>.png.

examples:
  layercast decode photo.lcs -o photo.png
  layercast decode photo.lcs --layer semantic -o prompt.txt       the prompt (and 'negative: ...' line)
  layercast decode photo.lcs --layer structure -o edges.png
  layercast decode photo.lcs -o photo.png --decoder sd --model ~/models/stable-diffusion-v1-5
"""

INSPECT_HELP = """\
Show what a .lcs stream holds without decoding the image: size, seed, generation hints, each layer's codec,
bytes and parameters, and its content: the prompt and negative prompt, the edge map's size and source, the
people of a pose layer, the colormap's cells.

examples:
  layercast inspect photo.lcs
  layercast inspect photo.lcs --json | jq .prompt
"""

EDIT_HELP = """\
Edit a stream without decoding the image: each edit re-encodes only the layers it touches (a new prompt
re-encodes the semantic layer alone). Flip, rotate, crop and scale move the structure and the colormap
together, so colours stay where they belong.

examples:
  layercast edit photo.lcs -o night.lcs --append-prompt "at night" --hue-shift 200
  layercast edit photo.lcs -o blue.lcs --map-color ff0000:0000ff:15
  layercast edit photo.lcs -o turned.lcs --rotate 90 --crop 0.1,0.1,0.9,0.9
  layercast edit photo.lcs -o text-only.lcs --drop structure --drop texture
"""

BENCH_HELP = """\
Measure sizes, speed and quality against classical baselines measured in the same run (JPEG/WebP/AVIF at
matched bytes, JBIG85 for edges, brotli/zstd for prompts), stream throughput per link profile and the fleet
path; writes results.json and rd.png to --out. With --decoder sd (and decode's model options) the sd part
decodes each image per layer mode (prompt, +structure, +colour) and names the pipeline each really ran;
--random-weights times full-size models built from the shipped configs instead.

examples:
  layercast bench ../shared/data/aigi --limit 20
  layercast bench imgs/ --skip stream --skip sd --json
  layercast bench imgs/ --decoder sd --sd-config sd.toml --skip stream     SD per layer mode, with its models
  layercast bench imgs/ --decoder sd --random-weights                     GPU timing without any weights
  layercast bench imgs/ --decoder sd --random-weights --steps 1 --limit 1 --device cpu --json
"""


def _sub(sub: Any, name: str, summary: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=text, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `layercast` command."""
    p = argparse.ArgumentParser(
        prog="layercast",
        description=(
            "Layered extreme-compression streaming of AI-generated images: an image becomes a prompt, an edge map "
            "and a tiny colormap (< 0.02 bpp); Stable Diffusion (or the CPU preview decoder) regenerates it."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from layercast import __version__

    p.add_argument("--version", action="version", version=f"layercast {__version__}")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more on stderr: -v informational lines (reconnects, spool activity), -vv debug",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level on stderr (overrides -v; default warning)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    e = _sub(sub, "encode", "encode images into layered .lcs streams", ENCODE_HELP)
    e.add_argument("inputs", nargs="+", metavar="IMG", help="image files or folders")
    e.add_argument("-o", "--output", required=True, help="output .lcs (one image) or folder (several)")
    add_encode_options(e)
    e.add_argument("--json", action="store_true", help="print JSON")

    d = _sub(sub, "decode", "decode a .lcs stream to an image (or one layer)", DECODE_HELP)
    d.add_argument("stream", help=".lcs file")
    d.add_argument("-o", "--output", required=True, help="output image (several images: NAME-<id>.png)")
    d.add_argument(
        "--layer",
        choices=["all", "semantic", "structure", "texture"],
        default="all",
        help="write one decoded layer instead of the reconstruction: semantic = the prompt as text"
        " (negative prompt on a second line starting 'negative: '), structure/texture = an image",
    )
    add_decoder_options(d)
    d.add_argument("--json", action="store_true", help="print JSON")

    i = _sub(sub, "inspect", "show the layers of a .lcs stream: bytes, parameters and content", INSPECT_HELP)
    i.add_argument("stream", help=".lcs file")
    i.add_argument("--json", action="store_true", help="print JSON")

    ed = _sub(sub, "edit", "edit layers without decoding the image", EDIT_HELP)
    ed.add_argument("stream", help=".lcs file")
    ed.add_argument("-o", "--output", required=True, help="edited .lcs")
    ed.add_argument("--prompt", help="replace the prompt")
    ed.add_argument("--append-prompt", help="append text to the prompt")
    ed.add_argument("--negative", help="set the negative prompt")
    ed.add_argument("--hue-shift", type=float, metavar="DEG", help="rotate colormap hues by DEG degrees")
    ed.add_argument(
        "--map-color",
        action="append",
        default=[],
        metavar="SRC:DST[:TOL]",
        help="recolour cells within TOL (Oklab distance x100, default 10) of SRC to DST, e.g. ff0000:0000ff:15",
    )
    ed.add_argument("--set-cell", action="append", default=[], metavar="ROW,COL:COLOR", help="set one colormap cell")
    ed.add_argument("--flip", choices=["h", "v"], help="mirror the image (structure and colormap)")
    ed.add_argument("--rotate", type=int, choices=[90, 180, 270], help="rotate the image clockwise")
    ed.add_argument("--crop", metavar="X0,Y0,X1,Y1", help="crop the image (fractions 0..1 of the frame)")
    ed.add_argument("--scale", type=float, help="zoom the image about the centre by a factor")
    ed.add_argument("--drop", action="append", default=[], choices=list(DEFAULT_ORDER), help="remove a layer")
    ed.add_argument("--json", action="store_true", help="print JSON")

    b = _sub(sub, "bench", "measure sizes, speed and quality against classical baselines", BENCH_HELP)
    b.add_argument("dir", nargs="?", help="image folder (default ../shared/data/aigi when present)")
    b.add_argument("--out", default="bench-out", help="folder for results.json and rd.png (default bench-out)")
    b.add_argument("--limit", type=int, help="use at most N images")
    b.add_argument(
        "--prompts",
        help="folder of prompt corpora (CSV/JSONL) for the prompts part: a model is built without each corpus "
        "and measured on it (leave-one-corpus-out; models cached in OUT/prompt-loco); default "
        "../shared/data/prompts when present",
    )
    add_decoder_options(b)
    b.add_argument(
        "--random-weights",
        action="store_true",
        help="with --decoder sd: time full-size SD 1.5 + ControlNet canny + colour T2I-Adapter built with random"
        " weights from the shipped published configs (no model folders, nothing downloaded; the sd part only):"
        " per mode, 4 steps (LCM) and 20 steps (or --steps N), batch 1 and 4 (up to --limit), torch.compile off"
        " and on (CUDA; --compile: on only)",
    )
    b.add_argument(
        "--metric-weights",
        metavar="DIR",
        help="local weights of the sd part's quality metrics: DIR/torch as TORCH_HOME (pyiqa LPIPS/DISTS and FID"
        " Inception in DIR/torch/hub), DIR/clip a transformers CLIP folder; nothing is downloaded, a metric whose"
        " weights are not local says 'not available offline'",
    )
    b.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["images", "prompts", "edges", "stream", "sd"],
        help="skip a part of the bench",
    )
    b.add_argument("--json", action="store_true", help="print JSON")

    cli_stream.add_parsers(sub)
    return p


def configure_logging(args: argparse.Namespace) -> None:
    """stderr logging per -v / --log-level (nothing configured without either: warnings only, Python's default)."""
    import logging

    if args.log_level:
        level = getattr(logging, args.log_level.upper())
    elif args.verbose:
        level = logging.DEBUG if args.verbose > 1 else logging.INFO
    else:
        return
    logging.basicConfig(level=level, format="layercast: %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    configure_logging(args)
    handler = HANDLERS[args.command]
    if getattr(args, "max_pixels", None) is not None:
        from layercast.common import limits

        if args.max_pixels < 1:
            print("layercast: error: --max-pixels must be at least 1", file=sys.stderr)
            return 2
        limits.MAX_RENDER_PIXELS = args.max_pixels
    try:
        return int(handler(args) or 0)
    except LayercastError as exc:
        return _fail(args, type(exc).__name__, str(exc), 1)
    except KeyboardInterrupt:
        print("layercast: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file or folder the command could not read or write
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(args, type(exc).__name__, f"{where}{exc.strerror or exc}", 1)
    except Exception as exc:  # a bug: one line (the traceback with LAYERCAST_DEBUG=1), never a crash dump
        if os.environ.get("LAYERCAST_DEBUG"):
            raise
        text = f"internal error {type(exc).__name__}: {exc} (LAYERCAST_DEBUG=1 shows the traceback; please report)"
        return _fail(args, "InternalError", text, 70)


def _fail(args: argparse.Namespace, error: str, message: str, code: int) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": error, "message": message}))
    print(f"layercast: error: {message}", file=sys.stderr)
    return code


# --- encode ----------------------------------------------------------------------------------------------


def result_summary(name: str, res: EncodeResult) -> dict[str, Any]:
    """JSON-able summary of an EncodeResult."""
    from layercast.common.metrics import bpp

    h = res.image.header
    return {
        "input": name,
        "width": h.width,
        "height": h.height,
        "total_bytes": res.total_bytes,
        "budget_bytes": res.budget,
        "fits": res.fits,
        "bpp": round(bpp(res.total_bytes, h.width, h.height), 5),
        "layer_bytes": res.layer_bytes(),
        "edge_long_side": res.rung.long_side if res.rung else None,
        "texture_quality": res.texture_quality,
        "prompt_source": res.prompt_source,
        "prompt_chars": res.prompt_chars,
        "prompt_chars_sent": res.prompt_chars_sent,
        "prompt_cuts": [c.as_dict() for c in res.prompt_cuts],
        "negative_dropped": res.negative_dropped,
        "warnings": list(res.warnings),
        "encode_ms": round(res.timings_ms.get("total_ms", 0.0), 2),
    }


def cmd_encode(args: argparse.Namespace) -> int:
    from layercast.progress import Progress
    from layercast.sender.image_io import find_images

    paths = find_images(args.inputs)
    encoder = encoder_from_args(args)
    out = Path(args.output)
    many = len(paths) > 1 or any(Path(x).is_dir() for x in args.inputs)
    if many:
        if out.exists() and not out.is_dir():
            raise InputError(f"-o {out}: is a file; several images need an output folder")
        out.mkdir(parents=True, exist_ok=True)
    elif out.is_dir():
        out = out / (paths[0].stem + ".lcs")
    progress = Progress(len(paths), "encode")
    summaries = []
    failures = []
    for path in paths:
        target = out / (path.stem + ".lcs") if many else out
        try:
            res = encoder.encode(path)
        except LayercastError as exc:
            if not many:
                raise
            failures.append({"input": str(path), "error": type(exc).__name__, "message": str(exc)})
            progress.update(note=f"{path.name}: {exc}")
            continue
        target.write_bytes(res.data)
        summary = result_summary(str(path), res)
        summary["output"] = str(target)
        summaries.append(summary)
        progress.update(note=path.name)
        for warning in res.warnings:
            print(f"layercast: warning: {path.name}: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(summaries[0] if not many and summaries else {"images": summaries, "failed": failures}))
    else:
        for s in summaries:
            lb = ", ".join(f"{k} {v} B" for k, v in s["layer_bytes"].items())
            cut = ", ".join(c["step"] for c in s["prompt_cuts"])
            print(
                f"{s['output']}: {s['total_bytes']} B ({s['bpp']:.4f} bpp) [{lb}] in {s['encode_ms']:.1f} ms"
                + (f"; prompt cut to fit: {cut}" if cut else "")
            )
        for f in failures:
            print(f"{f['input']}: FAILED {f['error']}: {f['message']}")
    return 1 if failures else 0


# --- decode / inspect --------------------------------------------------------------------------------------


def read_stream(path: str) -> tuple[bytes, list[EncodedImage]]:
    """Bytes and encoded images of a .lcs file."""
    from layercast.api import read_images

    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such stream file: {path}")
    data = p.read_bytes()
    return data, read_images(data)


def _numbered(out: Path, image_id: int, many: bool) -> Path:
    return out.with_name(f"{out.stem}-{image_id}{out.suffix or '.png'}") if many else out


def save_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG (folders created)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def cmd_decode(args: argparse.Namespace) -> int:
    from layercast.api import LayeredImage

    _, images = read_stream(args.stream)
    out = Path(args.output)
    decoder, warning = (None, None) if args.layer != "all" else make_decoder(args)
    if warning:
        print(f"layercast: warning: {warning}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    for encoded in images:
        img = LayeredImage(encoded)
        target = _numbered(out, img.image_id, len(images) > 1)
        t0 = time.perf_counter()
        if args.layer == "semantic":
            if img.prompt is None:
                raise InputError(f"image {img.image_id} has no semantic layer")
            text = img.prompt + (f"\nnegative: {img.negative_prompt}" if img.negative_prompt else "")
            target = target.with_suffix(".txt") if target.suffix.lower() in (".png", ".jpg", "") else target
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text + "\n", encoding="utf-8")
            results.append(
                {
                    "image_id": img.image_id,
                    "output": str(target),
                    "prompt": img.prompt,
                    "negative_prompt": img.negative_prompt,
                    "layers": ["semantic"],
                    "decoder": "semantic",
                    "decode_ms": round((time.perf_counter() - t0) * 1e3, 2),
                    "width": 0,
                    "height": 0,
                }
            )
            continue
        notes: tuple[str, ...] = ()
        with_info = getattr(decoder, "decode_with_info", None) if args.layer == "all" else None
        if with_info is not None:  # the SD decoder says which layers it could not use, and why
            out_rgb, info = with_info(img.layers)
            rgb, notes = np.asarray(out_rgb), tuple(info.notes)
        else:
            rgb = img.render(decoder=decoder if decoder is not None else "preview", layer=args.layer)
        ms = (time.perf_counter() - t0) * 1e3
        save_png(target, rgb)
        results.append(
            {
                "image_id": img.image_id,
                "output": str(target),
                "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]),
                "layers": img.layers.present(),
                "decoder": getattr(decoder, "name", args.layer),
                "decode_ms": round(ms, 2),
                "notes": list(notes),
            }
        )
        for note in notes:
            print(f"layercast: note: image {img.image_id}: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else {"images": results, "warning": warning}))
    else:
        for r in results:
            if "prompt" in r:
                print(
                    f"{r['output']}: {r['prompt']}"
                    + (f" (negative: {r['negative_prompt']})" if r["negative_prompt"] else "")
                )
                continue
            print(
                f"{r['output']}: {r['width']}x{r['height']} from {'+'.join(r['layers']) or 'no layers'}"
                f" ({r['decoder']}, {r['decode_ms']:.1f} ms)"
            )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from layercast.describe import describe_image, describe_lines
    from layercast.proto import framing

    data, images = read_stream(args.stream)
    if len(images) == 1:
        doc = describe_image(images[0], len(data))
    else:
        # each image's own bytes in the file (its packets and their length prefixes), bundled or not
        sizes: dict[tuple[int, int], int] = {}
        for rec in framing.iter_container(data):
            p = framing.decode_packet(rec)
            key = (p.stream_id, p.image_id)
            sizes[key] = sizes.get(key, 0) + len(framing.encode_varint(len(rec))) + len(rec)
        per = [describe_image(img, sizes.get((img.stream_id, img.image_id))) for img in images]
        pixels = sum(x["width"] * x["height"] for x in per)
        doc = {
            "width": per[0]["width"],
            "height": per[0]["height"],
            "total_bytes": len(data),
            "bpp": round(8 * len(data) / pixels, 5),
            "layers": per[0]["layers"],
            "images": per,
        }
    doc["file"] = args.stream
    doc["packets"] = sum(1 for _ in framing.iter_container(data))
    if args.json:
        print(json.dumps(doc))
        return 0
    for img in doc.get("images", [doc]):
        print("\n".join(describe_lines(img)))
    if len(images) > 1:
        print(f"total: {doc['total_bytes']} B in {doc['packets']} packets, {doc['bpp']:.4f} bpp")
    return 0


# --- edit ----------------------------------------------------------------------------------------------------


def _parse_color(text: str) -> tuple[int, int, int]:
    t = text.strip().lstrip("#")
    if len(t) != 6:
        raise InputError(f"colour must be 6 hex digits like ff8800, got {text!r}")
    try:
        return (int(t[0:2], 16), int(t[2:4], 16), int(t[4:6], 16))
    except ValueError:
        raise InputError(f"colour must be 6 hex digits like ff8800, got {text!r}") from None


def _edit_one(img: LayeredImage, args: argparse.Namespace) -> LayeredImage:
    """The edits the options ask for, in a fixed order: prompt, colours, geometry, drops."""
    if args.prompt is not None or args.append_prompt is not None or args.negative is not None:
        img = img.with_prompt(args.prompt, append=args.append_prompt, negative=args.negative)
    if args.hue_shift is not None:
        img = img.hue_shift(args.hue_shift)
    for spec in args.map_color:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise InputError(f"--map-color wants SRC:DST[:TOL], got {spec!r}")
        try:
            tol = float(parts[2]) if len(parts) == 3 else 10.0
        except ValueError:
            raise InputError(f"--map-color tolerance must be a number, got {parts[2]!r}") from None
        img = img.map_color(_parse_color(parts[0]), _parse_color(parts[1]), tol)
    for spec in args.set_cell:
        try:
            pos, color = spec.split(":")
            row, col = (int(v) for v in pos.split(","))
        except ValueError:
            raise InputError(f"--set-cell wants ROW,COL:COLOR, got {spec!r}") from None
        img = img.set_cell(row, col, _parse_color(color))
    if args.flip:
        img = img.flip(args.flip)
    if args.rotate:
        img = img.rotate(args.rotate)
    if args.crop:
        try:
            x0, y0, x1, y1 = (float(v) for v in args.crop.split(","))
        except ValueError:
            raise InputError(f"--crop wants X0,Y0,X1,Y1 fractions, got {args.crop!r}") from None
        img = img.crop((x0, y0, x1, y1))
    if args.scale is not None:
        img = img.scale(args.scale)
    for family in args.drop:
        img = img.drop(family)
    return img


def _changed(before: EncodedImage, after: EncodedImage) -> list[str]:
    """Layer families whose bytes differ (a dropped family as "-family")."""
    out = []
    for family in DEFAULT_ORDER:
        a, b = before.layer(family), after.layer(family)
        if a is not None and b is None:
            out.append(f"-{family}")
        elif b is not None and (a is None or a.units != b.units or a.descriptor != b.descriptor):
            out.append(family)
    if before.header != after.header:
        out.append("header")
    return out


def cmd_edit(args: argparse.Namespace) -> int:
    from layercast.api import LayeredImage
    from layercast.proto import framing

    _, images = read_stream(args.stream)
    wants = (
        args.prompt is not None
        or args.append_prompt is not None
        or args.negative is not None
        or args.hue_shift is not None
        or args.map_color
        or args.set_cell
        or args.flip
        or args.rotate
        or args.crop
        or args.scale is not None
        or args.drop
    )
    if not wants:
        raise InputError("no edit given (see layercast edit --help)")
    out_images = [_edit_one(LayeredImage(img), args).encoded for img in images]
    changed = sorted({f for a, b in zip(images, out_images, strict=True) for f in _changed(a, b)})
    data = framing.images_to_container(out_images)
    Path(args.output).write_bytes(data)
    from layercast.describe import describe_image

    doc = {
        "output": args.output,
        "edited": changed,
        "total_bytes": len(data),
        "images": [describe_image(img) for img in out_images],
    }
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{args.output}: {len(data)} B, edited {', '.join(changed) or 'nothing (no layer changed)'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from layercast.bench.run import run_bench

    return run_bench(args)


HANDLERS: dict[str, Any] = {
    "encode": cmd_encode,
    "decode": cmd_decode,
    "inspect": cmd_inspect,
    "edit": cmd_edit,
    "bench": cmd_bench,
    **cli_stream.HANDLERS,
}
