"""Conditioning as the models were trained: native generation size, thin edges at that size, ControlNet +
colour T2I-Adapter together, notes on ignored layers, and the latent preview map fitted to the VAE."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from layercast.common.types import Colormap, EdgeMap, LayerSet, Prompt  # noqa: E402
from layercast.proto import pb  # noqa: E402
from layercast.receiver import conditioning as cond  # noqa: E402
from layercast.receiver.latent_preview import derive_latent_rgb, latent_preview  # noqa: E402
from layercast.receiver.models import SDConfig  # noqa: E402
from layercast.receiver.sd import SDDecoder, load_decoder, plan_decode  # noqa: E402
from tests import tiny_models  # noqa: E402
from tests.imaging import scene  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield
    torch.set_num_threads(threads)


def widest_line(line: np.ndarray) -> int:
    """Upper bound of the line width in pixels: 2 when no 3x3 block is solid (every line pixel touches the
    background within its 8-neighbourhood, so no stroke is 3 px across), else 3+."""
    import cv2

    solid3 = cv2.erode(line.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return 3 if solid3.any() else 2


def sample_edges(h: int = 192, w: int = 128) -> np.ndarray:
    import cv2

    e = np.zeros((h, w), np.uint8)
    e[10 : h - 10, w // 6] = 1  # vertical
    e[h // 4, 5 : w - 5] = 1  # horizontal
    cv2.line(e, (5, 20), (w - 10, 20 + w - 15), 1, 1)  # diagonal
    cv2.circle(e, (w // 2, h // 2 + 10), w // 3, 1, 1)
    return e.astype(bool)


# -- generation size ------------------------------------------------------------------------------


def test_generation_size_short_side_native() -> None:
    gs = cond.generation_size
    assert gs(235, 357, native_side=512, max_side=1024, multiple=64) == (512, 768)
    assert gs(235, 357, native_side=512, max_side=1024, multiple=8) == (512, 776)
    assert gs(357, 235, native_side=512, max_side=1024, multiple=8) == (776, 512)
    assert gs(1920, 1080, native_side=512, max_side=1024, multiple=64) == (896, 512)  # large: down to native
    assert gs(100, 1000, native_side=512, max_side=1024, multiple=64) == (128, 1024)  # too long: capped
    assert gs(1920, 1080, max_side=768, multiple=64) == (768, 448)  # no native size: only shrunk to max_side


def native512_decoder(tmp_path: Path, **config: Any) -> SDDecoder:
    """A tiny model whose own config says native 512 (UNet sample_size 64 x 8x VAE), with a canny ControlNet."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_models.write_clip_tokenizer(tmp_path / "tok")), local_files_only=True)
    blocks = {"down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"), "cross_attention_dim": 32}
    small = {"block_out_channels": (4, 8), "layers_per_block": 1, "norm_num_groups": 2, "attention_head_dim": 2}
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **blocks, **small)
    vae = AutoencoderKL(
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=2,
        mid_block_add_attention=False,
    )
    net = ControlNetModel(conditioning_embedding_out_channels=(4, 4, 4, 4), **blocks, **small)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae, tiny_models.tiny_text_encoder(len(tok)), tok, unet, sched, None, None, requires_safety_checker=False
    )
    cfg = SDConfig(steps=1, guidance=1.0, device="cpu", preview="none", **config)
    return SDDecoder(cfg, pipe, {"canny": net}, {}, "cpu", torch.float32)


def test_235x357_generates_at_512_short_side_with_thin_edges(tmp_path: Path) -> None:
    dec = native512_decoder(tmp_path)
    assert dec.native_side == 512  # derived: UNet sample_size 64 x VAE factor 8
    layers = LayerSet(pb.ImageHeader(width=235, height=357, seed=3), Prompt("a cat"), EdgeMap(sample_edges()))
    assert dec.generation_size(layers) == (512, 784)  # multiple of 16 (VAE 8 x UNet 2)
    seen: dict[str, Any] = {}

    def unet_input(module: Any, args: Any, kwargs: Any) -> None:
        seen["latents"] = tuple((args[0] if args else kwargs["sample"]).shape)

    def control_input(module: Any, args: Any, kwargs: Any) -> None:
        seen["control"] = kwargs["controlnet_cond"].detach().clone()

    hooks = [
        dec.base.unet.register_forward_pre_hook(unet_input, with_kwargs=True),
        dec.controlnets["canny"].register_forward_pre_hook(control_input, with_kwargs=True),
    ]
    try:
        img, info = dec.decode_with_info(layers)
    finally:
        for h in hooks:
            h.remove()
    assert img.shape == (357, 235, 3) and info.size == (512, 784) and info.plan.label == "controlnet:canny"
    assert seen["latents"] == (1, 4, 784 // 8, 512 // 8), "the UNet must run at 512x784"
    control = seen["control"][0, 0].numpy() > 0.5
    assert control.shape == (784, 512) and control.sum() > 1000
    assert widest_line(control) <= 2, "edges must stay thin at the generation size"


def test_edge_image_is_thin_and_complete_at_generation_size() -> None:
    import cv2

    src = sample_edges(192, 128)  # a 192-px map drawn at 768: 4x
    img, known = cond.edge_control_image(EdgeMap(src), 512, 768)
    line = img[..., 0] > 0
    assert known is None and widest_line(line) <= 2
    # exact width of the axis-aligned strokes: 1 px across
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, line[400].astype(np.int8), 0])))[::2]
    assert runs.max() == 1
    # nothing lost: every source edge pixel's centre lies on or next to a drawn line; only line ends
    # retract, by less than one source pixel (4 px here)
    dist = cv2.distanceTransform((~line).astype(np.uint8), cv2.DIST_L2, 5)
    ys, xs = np.nonzero(src)
    gaps = dist[(ys * 4 + 1.5).astype(int), (xs * 4 + 1.5).astype(int)]
    assert gaps.max() < 4.0 and np.mean(gaps <= 1.5) > 0.98
    # the old rendering (linear upsampling + threshold) drew 4-px strokes
    old = cv2.resize(src.astype(np.float32), (512, 768), interpolation=cv2.INTER_LINEAR) > 0.25
    assert widest_line(old) > 2
    # soft edges: the same lines, blurred (HED-like), peaking at full strength
    soft, _ = cond.edge_control_image(EdgeMap(src), 512, 768, soft=True)
    on_line = soft[..., 0][line]
    assert np.median(on_line) >= 240 and on_line.min() >= 100  # line ends fade to about half
    assert widest_line(soft[..., 0] > 32) > 2
    # unknown stripes stay black
    half = np.zeros_like(src)
    half[:96] = True
    masked, mask = cond.edge_control_image(EdgeMap(src, half), 512, 768)
    assert mask is not None and not masked[~mask].any() and masked[mask].any()


def test_thinning_keeps_connectivity() -> None:
    import cv2

    blob = np.zeros((60, 80), bool)
    blob[10:20, 5:75] = True  # a 10-px bar
    blob[10:50, 30:38] = True  # and a T stem
    skel = cond.thin_lines(blob)
    n, _ = cv2.connectedComponents(skel.astype(np.uint8), connectivity=8)
    assert n - 1 == 1 and widest_line(skel) <= 2 and skel.sum() > 60


# -- ControlNet + colour adapter ------------------------------------------------------------------


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> SDDecoder:
    root = tmp_path_factory.mktemp("tiny-sd-cond")
    cfg = SDConfig(
        model=str(tiny_models.save_tiny_sd(root / "sd")),
        controlnets={"canny": str(tiny_models.save_tiny_controlnet(root / "cn", seed=1))},
        adapters={"color": str(tiny_models.save_tiny_adapter(root / "color", in_channels=3, seed=3))},
        steps=2,
        device="cpu",
    )
    return load_decoder(cfg)


def edges() -> EdgeMap:
    e = np.zeros((32, 32), dtype=bool)
    e[4:28, 8] = True
    e[16, 4:28] = True
    return EdgeMap(e)


def colormap(seed: int) -> Colormap:
    return Colormap(np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8))


def test_controlnet_with_colour_adapter(decoder: SDDecoder) -> None:
    header = pb.ImageHeader(width=64, height=64, seed=5)
    with_colour = LayerSet(header, Prompt("a cat"), edges(), colormap(0))
    residuals: list[list[tuple[int, ...]]] = []

    def spy(module: Any, args: Any, kwargs: Any) -> None:  # runs after the decoder's hook
        residuals.append([tuple(t.shape) for t in kwargs.get("down_intrablock_additional_residuals") or []])

    handle = decoder.base.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        a, info = decoder.decode_with_info(with_colour)
    finally:
        handle.remove()
    assert info.plan.label == "controlnet:canny+adapter:color" and not info.notes
    # the adapter's features reach every UNet call, repeated to the guidance batch (uncond + cond)
    assert len(residuals) == 2 and residuals[0] == [(2, 4, 32, 32), (2, 8, 16, 16)]
    assert np.array_equal(a, decoder.decode(with_colour)), "deterministic"
    other = decoder.decode(LayerSet(header, Prompt("a cat"), edges(), colormap(1)))
    structure_only = decoder.decode(LayerSet(header, Prompt("a cat"), edges()))
    assert decoder.last_plan is not None and decoder.last_plan.label == "controlnet:canny"
    assert not np.array_equal(a, other), "the colormap must steer the output through the adapter"
    assert not np.array_equal(a, structure_only)
    # at scale 0 the adapter adds exactly nothing: the ControlNet-only result
    zero = replace(decoder.config, adapter_scale=0.0)
    dec0 = SDDecoder(zero, decoder.base, decoder.controlnets, decoder.adapters, "cpu", torch.float32)
    assert np.array_equal(dec0.decode(with_colour), structure_only)


def test_notes_name_every_ignored_layer(decoder: SDDecoder) -> None:
    header = pb.ImageHeader(width=64, height=64, seed=5)
    plan = plan_decode(LayerSet(header, None, edges(), colormap(0)), controlnets=(), adapters=(), colour_mode="off")
    assert plan.label == "txt2img" and len(plan.notes) == 2
    assert "structure layer ignored" in plan.notes[0] and "colormap ignored" in plan.notes[1]
    softedge = EdgeMap(edges().edges, source=pb.EDGE_SOURCE_HED)
    plan = plan_decode(LayerSet(header, None, softedge, colormap(0)), controlnets=(), adapters={"sketch"})
    assert plan.label == "adapter:sketch" and "colormap ignored" in plan.notes[0]
    _, info = decoder.decode_with_info(LayerSet(header, Prompt("a cat"), edges(), colormap(0)))
    assert info.notes == () == decoder.last_notes
    decoder.config.colour = "off"
    try:
        decoder.decode(LayerSet(header, Prompt("a cat"), edges(), colormap(0)))
    finally:
        decoder.config.colour = "auto"
    assert decoder.last_notes == ("colour mode is off: colormap ignored",)


# -- latent preview map ---------------------------------------------------------------------------


def trained_tiny_vae(steps: int = 30) -> Any:
    """The tests' tiny VAE, briefly trained to autoencode smooth colour fields: a random-weight VAE's
    decoder output hardly depends on the latents at all, so there is nothing linear to find."""
    import torch.nn.functional as F

    vae = tiny_models.tiny_vae()
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-2)
    for _ in range(steps):
        x = F.interpolate(torch.rand(8, 3, 3, 3, generator=gen), size=(8, 8), mode="bilinear", align_corners=True)
        x = x * 2 - 1
        loss = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return vae.eval()


def test_latent_preview_map_tracks_the_vae_decode() -> None:
    import torch.nn.functional as F

    vae = trained_tiny_vae()
    fitted = derive_latent_rgb(vae)
    assert fitted.shape == (5, 3) and np.isfinite(fitted).all()
    assert np.array_equal(fitted, derive_latent_rgb(vae)), "deterministic"
    # held-out latents: scenes the fit never saw
    images = np.stack([scene(64, 64, seed=s) for s in range(3)]).astype(np.float32) / 127.5 - 1.0
    sf = vae.config.scaling_factor
    with torch.no_grad():
        lat = vae.encode(torch.from_numpy(images).permute(0, 3, 1, 2)).latent_dist.mean * sf
        decoded = F.avg_pool2d(vae.decode(lat / sf).sample, 2)  # one colour per latent pixel
    truth = np.clip(np.round((decoded.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5), 0, 255)
    zero_map = np.zeros_like(fitted)
    for i in range(len(images)):
        ours = latent_preview(lat[i].numpy(), fitted).astype(float)
        flat = latent_preview(lat[i].numpy(), zero_map).astype(float)
        assert np.corrcoef(ours.ravel(), truth[i].ravel())[0, 1] > 0.8
        assert np.abs(ours - truth[i]).mean() < 0.5 * np.abs(flat - truth[i]).mean()


def test_latent_preview_map_fits_any_channel_count() -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=8,
        norm_num_groups=2,
    )
    fitted = derive_latent_rgb(vae)
    assert fitted.shape == (9, 3) and np.isfinite(fitted).all()
    assert latent_preview(np.zeros((8, 4, 6), np.float32), fitted).shape == (4, 6, 3)
