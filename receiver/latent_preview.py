"""Cheap per-step previews: a linear latent -> RGB map fitted to the loaded VAE.

The map is our own derivation, made once per decoder from whatever VAE is loaded (any latent channel
count): a fixed set of synthetic images (flat colours at the corners and centre of the RGB cube, and four
colour ramps) is encoded with the VAE (distribution mean, in the pipeline's scaled latent space) and
decoded back; each latent pixel is paired with the mean colour of the decoded pixels it covers, and the
(C + 1) x 3 map (C weights + a bias, per RGB channel) is their least-squares fit. Fitting the *decoder's*
output makes the preview approximate exactly what the final VAE decode will show.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

CALIBRATION_LATENT_SIDE = 8
"""Side, in latent pixels, of each calibration image (64 px for an 8x VAE)."""


def calibration_images(side: int) -> np.ndarray:
    """The synthetic calibration set: float32 (n, 3, side, side) in [-1, 1], deterministic."""
    flats = [(*c,) for c in itertools.product((0.0, 1.0), repeat=3)] + [(0.5, 0.5, 0.5)]
    images = [np.broadcast_to(np.array(c, np.float32)[:, None, None], (3, side, side)) for c in flats]
    x, y = np.meshgrid(np.linspace(0.0, 1.0, side, dtype=np.float32), np.linspace(0.0, 1.0, side, dtype=np.float32))
    images += [np.stack(r) for r in ((x, y, 1 - x), (y, 1 - x, x), (1 - y, x, y), (x * y, 1 - y, (x + y) / 2))]
    return np.stack(images) * 2.0 - 1.0


def vae_factor(vae: Any) -> int:
    """Pixels per latent pixel of a diffusers VAE (8 for SD 1.5)."""
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def derive_latent_rgb(vae: Any) -> np.ndarray:
    """Fit the (C + 1, 3) latent -> RGB map (rows: channel weights, then the bias; RGB in [-1, 1])."""
    import torch
    import torch.nn.functional as F

    f = vae_factor(vae)
    param = next(vae.parameters())
    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    x = torch.from_numpy(calibration_images(CALIBRATION_LATENT_SIDE * f)).to(param.device, param.dtype)
    with torch.no_grad():
        enc = vae.encode(x)
        dist = getattr(enc, "latent_dist", None)
        raw = dist.mean if dist is not None else enc.latents
        latents = (raw - shift) * scale  # the space the pipeline's latents live in
        decoded = vae.decode(latents / scale + shift).sample
        target = F.avg_pool2d(decoded.float(), f)  # mean colour over each latent pixel's footprint
    feats = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).cpu().numpy()
    rgb = target.permute(0, 2, 3, 1).reshape(-1, 3).cpu().numpy()
    design = np.concatenate([feats, np.ones((feats.shape[0], 1), np.float32)], axis=1).astype(np.float64)
    ok = np.isfinite(design).all(axis=1) & np.isfinite(rgb).all(axis=1)  # a float16 VAE may overflow
    if ok.sum() < 4 * design.shape[1]:
        return np.zeros((design.shape[1], 3), np.float32)  # nothing to fit: flat grey previews
    solution, *_ = np.linalg.lstsq(design[ok], rgb[ok].astype(np.float64), rcond=None)
    return solution.astype(np.float32)


def latent_preview(latents: np.ndarray, latent_rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (h, w, 3) of one (C, h, w) latent through the fitted map."""
    rgb = np.einsum("chw,cr->hwr", latents, latent_rgb[:-1]) + latent_rgb[-1]
    return np.clip(np.round((rgb + 1.0) * 127.5), 0, 255).astype(np.uint8)
