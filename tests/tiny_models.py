"""Builders of tiny seeded random-weight models, saved with `save_pretrained` for offline loading tests.

Nothing here touches the network: the CLIP tokenizer's vocab/merges are written by hand, every component is
built from a config with a fixed torch seed. The shapes follow diffusers' own test components
(`block_out_channels=(4, 8)`, `cross_attention_dim=32`, CLIP `hidden_size=32`), so a 64x64 image runs on CPU
in well under a second per step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CROSS_DIM = 32
"""Width of the tiny text encoder = the UNet/ControlNet cross-attention width."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode map (the BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_clip_tokenizer(directory: Path) -> Path:
    """Write a tiny CLIP BPE tokenizer (byte alphabet + a few merges) to `directory`; return it."""
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    merges = ["c a", "ca t</w>", "d o", "do g</w>", "r e", "re d</w>"]
    tokens = alphabet + [a + "</w>" for a in alphabet]
    tokens += [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    raw = directory / "raw"
    raw.mkdir(exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(directory))
    return directory


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def tiny_unet() -> Any:
    """Tiny UNet2DConditionModel: two levels (4, 8), one cross-attention level, 4 latent channels."""
    from diffusers import UNet2DConditionModel

    _seed(0)
    return UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_DIM,
        norm_num_groups=2,
        attention_head_dim=2,
    )


def tiny_vae() -> Any:
    """Tiny AutoencoderKL: downsampling factor 2, 4 latent channels."""
    from diffusers import AutoencoderKL

    _seed(0)
    return AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=64,
    )


def tiny_text_encoder(vocab_size: int) -> Any:
    """Tiny CLIPTextModel with hidden size 32."""
    from transformers import CLIPTextConfig, CLIPTextModel

    _seed(0)
    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=CROSS_DIM,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
    )
    return CLIPTextModel(config)


def save_tiny_sd(directory: Path) -> Path:
    """Save a whole tiny Stable Diffusion pipeline (model_index.json + components) to `directory`."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tok_dir = write_clip_tokenizer(directory.parent / (directory.name + "-tokenizer"))
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe: Any = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        unet=tiny_unet(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(directory), safe_serialization=True)
    return directory


def save_tiny_controlnet(directory: Path, seed: int = 1) -> Path:
    """Save a tiny ControlNetModel matching :func:`tiny_unet`; different seeds give different nets."""
    from diffusers import ControlNetModel

    _seed(seed)
    net: Any = ControlNetModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        in_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        cross_attention_dim=CROSS_DIM,
        conditioning_embedding_out_channels=(8, 16),
        norm_num_groups=2,
        attention_head_dim=2,
    )
    # A fresh ControlNet has zero-initialised output and condition-embedding convs (no effect at all);
    # give them weights so the conditioning image visibly steers the tiny model, as a trained one does.
    import torch

    with torch.no_grad():
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            block.weight.normal_(0.0, 0.5)
    net.save_pretrained(str(directory), safe_serialization=True)
    return directory


def save_tiny_adapter(directory: Path, in_channels: int = 3, seed: int = 2) -> Path:
    """Save a tiny T2IAdapter (full_adapter) matching :func:`tiny_unet` (latents at 1/2 resolution)."""
    from diffusers import T2IAdapter

    _seed(seed)
    adapter: Any = T2IAdapter(
        in_channels=in_channels,
        channels=[4, 8],
        num_res_blocks=1,
        downscale_factor=2,
        adapter_type="full_adapter",
    )
    adapter.save_pretrained(str(directory), safe_serialization=True)
    return directory
