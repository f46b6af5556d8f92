"""Edge-aware colourisation: the colormap's colours spread over the image with the edge map as boundaries.

The algorithm is colourisation by optimisation (A. Levin, D. Lischinski, Y. Weiss, "Colorization using
Optimization", SIGGRAPH 2004): the colour field x minimises a weighted sum of squared differences between
neighbouring pixels, so colour spreads freely inside a region and hardly at all across its boundary. Two
changes fit it to what a Layercast receiver has:

- the affinities come from the edge map, not from a grey image: a 4-neighbour link between an edge pixel
  and a non-edge pixel has weight `Tuning.edge_weight` (else 1), so edges are the affinity breaks;
- the constraints are the colormap's cells, which are area *averages* of the image, not scribbles: the
  mean of x over each cell is pulled to the cell colour (weight `Tuning.cell_weight`).

So colours that a cell averaged across a boundary are unmixed: each side takes the colour its own region
carries into neighbouring cells, while the cell keeps its mean. A weak pull (`prior_weight`, stronger on
edge pixels: `edge_prior_weight`) towards the plain bicubic field keeps pieces that edges cut off well
defined:

    minimise  sum_links w_pq |x_p - x_q|^2  +  cell_weight * sum_pixels |mean_cell(x) - c_cell|^2
              + sum_pixels pull_p |x_p - bicubic_p|^2

The quadratic is solved with Jacobi-preconditioned conjugate gradients on a work grid of `k` x `k` pixels
per cell (about `work_side` on the long side, so cell means are exact box averages): first all three
channels on a grid twice as coarse, then at full work resolution (in Oklab lightness alone, chroma keeping
the coarse solution; in sRGB all three). Edge pixels themselves (a boundary's own colour is uncertain) then
take the mean of their non-edge 4-neighbours.

Then a correction (`corrected`): a cell is the *linear-light* mean of its pixels, whose sRGB value is
brighter than their sRGB mean (9 levels on average at 8 x 8 cells, more where the cell is busy), and
unmixed pieces in dense edges are less sure than they look. A per-channel linear map of a few per-pixel
features (the field, the bicubic field, local edge density; `correction_features`), fitted
by least squares on the AIGI training split (tools/fit_preview_correction.py), takes the field to the
expected sRGB. Finally the grid is upscaled bilinearly.

Two tunings (`tuning_for`): `COARSE` for the generative split's 8 x 8 colormap (sRGB, weaker edge links,
soft means) and `FINE` for the preview target's 24-36 cells (Oklab). numpy + OpenCV only, deterministic;
about 30 ms (COARSE) / 17 ms (FINE) for a 512 x 512 image on one idle core (the bench, on this loaded shared
machine: 64 / 34 ms, against 26 / 16 ms for the uncorrected Oklab solver it replaces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layercast.common.color import linear_to_srgb, oklab_to_linear, srgb8_to_oklab


@dataclass(frozen=True)
class Tuning:
    """The solver's settings and the output correction for one kind of colormap (see `tuning_for`)."""

    space: str
    """"oklab" (the fine level solves lightness only; chroma keeps the coarse solution) or "srgb" (all
    three channels of gamma-encoded sRGB at both levels)."""
    work_side: int
    """Long side (pixels) of the grid the colour field is solved on (rounded to whole pixels per cell)."""
    edge_weight: float
    """Weight of a neighbour link between an edge pixel and a non-edge pixel (other links: 1)."""
    cell_weight: float
    """Weight of the cell-mean constraints against the smoothness term."""
    prior_weight: float
    """Pull towards the bicubic field (keeps regions that edges cut off well defined)."""
    edge_prior_weight: float
    """Pull of edge pixels towards the bicubic field: a line, weakly linked to both sides, would otherwise
    soak up what its cells' means ask for and take extreme colours (specks where a line is two pixels thick)."""
    coarse_iters: int
    """Conjugate-gradient iterations on the coarse grid (half the work resolution)."""
    fine_iters: int
    """Conjugate-gradient iterations on the work grid."""
    correction: tuple[tuple[float, ...], ...]
    """The output correction: per sRGB channel (R, G, B), a coefficient per `correction_features` entry
    (empty: none). Fitted by tools/fit_preview_correction.py on the AIGI training split."""


COARSE_CELLS = 12
"""Colormaps with at most this many cells on the long side (the generative split's 8 x 8) use `COARSE`."""
# fmt: off
COARSE_CORRECTION = (
    (
        0.4081, 0.0377, -0.5729, 0.062, -1.9989, -0.2083, 2.4218, 1.0787, -1.0421, -0.1534, -0.0281, -0.3842,
        1.4251, -1.1757, 1.0593, 0.0818, 1.5285, -1.9685, 0.1309, -0.0259,
    ),
    (
        0.2996, 1.3763, -1.2291, 0.016, -2.5941, 0.4128, 2.3308, 1.1993, -1.3646, 0.1074, 0.3827, -0.9999,
        0.087, 0.3142, 0.6789, 0.4762, 1.3909, -2.2916, 0.1108, -0.0453,
    ),
    (
        0.0111, 0.3518, -0.0802, 0.0167, -2.4452, 0.9319, 1.6998, 0.7852, -0.8492, -0.0486, 0.2736, -1.0051,
        1.7378, 0.2601, -0.7468, 1.0822, -0.1467, -1.4512, 0.3214, -0.1423,
    ),
)
# fmt: on
"""`COARSE`'s correction (R, G, B rows), fitted on the generative split (`--target sd`) of the training images."""
# fmt: off
FINE_CORRECTION = (
    (
        0.5844, 1.128, -2.6285, 0.0392, -0.6226, 1.9211, -1.3076, -0.0853, -0.2026, 0.0219, 0.0605, 1.0326,
        -1.4924, -3.0814, 5.3452, 0.5163, -1.4176, 1.129, 0.1007, -0.1206,
    ),
    (
        0.7104, 1.0059, -2.5929, 0.0055, -0.6917, 2.2153, -1.3798, -0.1557, -0.0769, 0.045, 0.0164, 1.208,
        -1.8021, -3.1026, 5.5731, 0.7761, -2.0972, 1.3331, 0.1564, -0.1741,
    ),
    (
        0.1448, 1.3741, -2.0984, 0.0173, -1.3228, 2.3106, -1.3787, -0.1418, 0.0376, -0.0759, 0.0865, 0.462,
        -0.4572, -2.2341, 3.7294, 1.3807, -2.3975, 1.5075, 0.3581, -0.4033,
    ),
)
# fmt: on
"""`FINE`'s correction (R, G, B rows), fitted on the preview target's streams of the training images."""
COARSE = Tuning(
    space="srgb",
    work_side=160,
    edge_weight=0.001,
    cell_weight=0.3,
    prior_weight=1e-3,
    edge_prior_weight=0.01,
    coarse_iters=80,  # 120 / 50: the same PSNR (+0.001 dB over every 4th shared image), 25% more time
    fine_iters=35,
    correction=COARSE_CORRECTION,
)
"""For coarse colormaps (cells of ~64 px): one cell mean spans several regions, so the solve leans on the
edges (weaker links across them, softer means) and the correction does most of the de-biasing."""
FINE = Tuning(
    space="oklab",
    work_side=160,
    edge_weight=0.005,
    cell_weight=1.0,
    prior_weight=1e-3,
    edge_prior_weight=0.1,
    coarse_iters=60,
    fine_iters=25,
    correction=FINE_CORRECTION,
)
"""For fine colormaps (the preview target's 24-36 cells)."""
SHRINK_THRESHOLD = 0.1
"""Area coverage above which a work pixel is an edge pixel, when the edge map is larger than the work grid."""
ENLARGE_THRESHOLD = 0.3
"""Interpolated value above which a work pixel is an edge pixel, when the edge map is smaller."""
TOLERANCE = 1e-4
"""Stop when the preconditioned residual norm falls below this fraction of its start."""
DENSITY_RADII = (4.0, 8.0, 16.0)
"""Gaussian radii (work pixels) of the edge-density features of the correction (wide enough that a lone
line changes its surroundings by at most a few levels, not into a line of its own)."""


def tuning_for(grid: tuple[int, int]) -> Tuning:
    """`COARSE` for colormaps of at most `COARSE_CELLS` cells on the long side, else `FINE`."""
    return COARSE if max(grid) <= COARSE_CELLS else FINE


def work_scale(grid: tuple[int, int], width: int, height: int, side: int | None = None) -> int:
    """Work pixels per cell side: about `side` (default: the grid's `Tuning.work_side`) pixels on the long
    side, at most what the output needs."""
    g_long = max(grid)
    out_long = max(width, height)
    k = max(1, round((side or tuning_for(grid).work_side) / g_long))
    return max(1, min(k, -(-out_long // g_long)))


def _edge_mask(edges: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bool (rows, cols): edge pixels of the edge map resized to the work grid (area coverage when
    shrinking, linear when enlarging, each with its own threshold, so lines stay about one pixel wide)."""
    import cv2

    if edges.shape == (rows, cols):
        return edges.astype(bool)
    shrink = rows * cols < edges.shape[0] * edges.shape[1]
    m = cv2.resize(edges.astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.asarray(m).reshape(rows, cols) > (SHRINK_THRESHOLD if shrink else ENLARGE_THRESHOLD)


class _System:
    """The quadratic's normal equations on one work grid, as flat float32 vectors (channel-last)."""

    def __init__(self, cells: np.ndarray, edge: np.ndarray | None, k: int, prior: np.ndarray, tuning: Tuning) -> None:
        gh, gw, ch = cells.shape
        self.cell_weight = tuning.cell_weight
        self.ch = ch
        rows, cols = gh * k, gw * k
        self.shape = (rows, cols)
        self.grid = (gh, gw)
        self.k = k
        if edge is None:
            edge = np.zeros((rows, cols), bool)
        wx = np.zeros((rows, cols), np.float32)  # link (r, c) - (r, c + 1); the last column links nothing
        wx[:, :-1] = np.where(edge[:, 1:] != edge[:, :-1], tuning.edge_weight, 1.0)  # weak into and out of edges
        wy = np.where(edge[1:] != edge[:-1], tuning.edge_weight, 1.0).astype(np.float32)  # link (r, c) - (r + 1, c)
        self.wx = np.repeat(wx.reshape(-1), ch)[:-ch]
        self.wy = np.repeat(wy.reshape(-1), ch)
        self.stride = ch * cols
        pull = np.where(edge, tuning.edge_prior_weight, tuning.prior_weight).astype(np.float32)
        self.pull = np.repeat(pull.reshape(-1), ch)
        diag = pull + np.float32(tuning.cell_weight / (k * k))
        diag += wx
        diag[:, 1:] += wx[:, :-1]
        diag[1:] += wy
        diag[:-1] += wy
        self.inv_diag = np.repeat((1.0 / diag).reshape(-1), ch)
        self.b = tuning.cell_weight * self._spread(cells.astype(np.float32)) + self.pull * prior

    def _spread(self, per_cell: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(gh, gw, ch) -> flat work grid, each cell's value on each of its pixels (into `out` if given)."""
        import cv2

        rows, cols = self.shape
        if out is None:
            return np.asarray(cv2.resize(per_cell, (cols, rows), interpolation=cv2.INTER_NEAREST)).reshape(-1)
        dst = out.reshape(rows, cols, self.ch) if self.ch > 1 else out.reshape(rows, cols)
        cv2.resize(per_cell, (cols, rows), dst=dst, interpolation=cv2.INTER_NEAREST)
        return out

    def _means(self, x: np.ndarray) -> np.ndarray:
        """Flat work grid -> (gh, gw, ch) cell means (exact: k x k boxes)."""
        import cv2

        rows, cols = self.shape
        gh, gw = self.grid
        grid = x.reshape(rows, cols, self.ch) if self.ch > 1 else x.reshape(rows, cols)
        return np.asarray(cv2.resize(grid, (gw, gh), interpolation=cv2.INTER_AREA))

    def apply(self, x: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
        """out = the system matrix times x (`tmp`: a scratch vector of the same size)."""
        self._spread(self._means(x), out)
        if self.cell_weight != 1.0:
            out *= self.cell_weight
        np.multiply(x, self.pull, out=tmp)
        out += tmp
        n = x.size  # + the weighted graph Laplacian of the links times x
        for step, w in ((self.ch, self.wx), (self.stride, self.wy)):
            if step >= n:
                continue
            d = tmp[: n - step]
            np.subtract(x[step:], x[:-step], out=d)
            d *= w
            out[step:] += d
            out[:-step] -= d
        return out

    def solve(self, x: np.ndarray, iters: int) -> np.ndarray:
        """Preconditioned conjugate gradients from x (modified in place and returned)."""
        import cv2

        ap, tmp = np.empty_like(x), np.empty_like(x)
        r = np.subtract(self.b, self.apply(x, ap, tmp))
        z = self.inv_diag * r
        p = z.copy()
        rz = float(np.dot(r, z))
        stop = rz * TOLERANCE * TOLERANCE
        for _ in range(iters):
            if rz <= stop or rz <= 0.0:
                break
            self.apply(p, ap, tmp)
            pap = float(np.dot(p, ap))
            if pap <= 0.0:
                break
            a = rz / pap
            cv2.scaleAdd(p, a, x, dst=x)  # x += a p
            cv2.scaleAdd(ap, -a, r, dst=r)  # r -= a A p
            np.multiply(self.inv_diag, r, out=z)
            rz_new = float(np.dot(r, z))
            cv2.scaleAdd(p, rz_new / rz, z, dst=p)  # p = z + beta p
            rz = rz_new
        return x


def _fill_edge_pixels(x: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Edge pixels (rows, cols, 3 field) take the mean of their non-edge 4-neighbours, where they have any."""
    import cv2

    cross = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float32)
    keep = (~edge).astype(np.float32)
    num = cv2.filter2D(x * keep[:, :, None], -1, cross, borderType=cv2.BORDER_CONSTANT)
    den = cv2.filter2D(keep, -1, cross, borderType=cv2.BORDER_CONSTANT)
    use = edge & (den > 0)
    out = x.copy()
    out[use] = num[use] / den[use][:, None]
    return out


def _to_space(cells: np.ndarray, space: str) -> np.ndarray:
    """uint8 RGB -> the solver's colour space (float32)."""
    if space == "oklab":
        return srgb8_to_oklab(cells).astype(np.float32)
    return cells.astype(np.float32) * np.float32(1 / 255)


def to_srgb(field: np.ndarray, space: str) -> np.ndarray:
    """A field in the solver's colour space -> float sRGB (about 0..1; the oklab path clips to the gamut)."""
    if space == "oklab":
        return np.asarray(linear_to_srgb(oklab_to_linear(field)), np.float32)
    return field


def colorize_lab(
    cells: np.ndarray, edges: np.ndarray | None, k: int, tuning: Tuning | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The colour field (gh * k, gw * k, 3) float32 in `tuning.space` (default: `tuning_for` the grid) for
    uint8 RGB `cells` (gh, gw, 3) and a bool edge map of any size (None or empty: no boundaries, the smooth
    field whose cell means are the cells), and the edge mask on the work grid (None without edges)."""
    import cv2

    tuning = tuning or tuning_for(cells.shape[:2])
    lab = _to_space(cells, tuning.space)
    gh, gw = lab.shape[:2]
    if edges is not None and edges.size == 0:
        edges = None
    fine_ch = 1 if tuning.space == "oklab" else 3
    levels = (
        [(k // 2, tuning.coarse_iters, 3), (k, tuning.fine_iters, fine_ch)] if k >= 4 else [(k, tuning.coarse_iters, 3)]
    )
    field: np.ndarray | None = None
    edge = None
    for kk, iters, ch in levels:
        rows, cols = gh * kk, gw * kk
        prior = np.asarray(cv2.resize(lab, (cols, rows), interpolation=cv2.INTER_CUBIC)).reshape(rows, cols, 3)
        if field is None:
            field = prior.copy()
        else:
            field = np.asarray(cv2.resize(field, (cols, rows), interpolation=cv2.INTER_LINEAR)).reshape(rows, cols, 3)
        edge = _edge_mask(edges, rows, cols) if edges is not None else None
        if ch == 3:
            system = _System(lab, edge, kk, prior.reshape(-1), tuning)
            field = system.solve(field.reshape(-1).copy(), iters).reshape(rows, cols, 3)
        else:  # lightness only
            system = _System(
                np.ascontiguousarray(lab[:, :, :1]), edge, kk, np.ascontiguousarray(prior[:, :, 0]).ravel(), tuning
            )
            field[:, :, 0] = system.solve(np.ascontiguousarray(field[:, :, 0]).ravel(), iters).reshape(rows, cols)
    assert field is not None
    if edge is not None:
        field = _fill_edge_pixels(field, edge)
    return field, edge


def correction_features(field: np.ndarray, smooth: np.ndarray, edge: np.ndarray) -> list[np.ndarray]:
    """The correction's inputs on the work grid, each (rows, cols, 3) float32 (each channel has its own
    coefficients): the sRGB field f, its square and cube, 1; f times and beside the edge density D
    at `DENSITY_RADII`; the bicubic sRGB field b, b^2, f b, f b^2, f^2 b, b times D; the channel mean m of f
    and m f.
    Nothing that follows single lines (the edge mask, distance to an edge): on AIGIs those fit the
    darkness of outlines, so they would draw soft sketch lines, which the clean preview must not show."""
    import cv2

    f = field.astype(np.float32, copy=False)
    ones = np.ones_like(f)

    def plane(x: np.ndarray) -> np.ndarray:
        return np.repeat(x.astype(np.float32)[:, :, None], 3, axis=2)

    e = edge.astype(np.float32)
    feats = [f, f * f, f * f * f, ones]
    dens = [plane(cv2.GaussianBlur(e, (0, 0), r)) for r in DENSITY_RADII]
    feats += [f * d for d in dens] + dens
    b = smooth.astype(np.float32, copy=False)
    feats += [b, b * b, f * b, f * b * b, f * f * b] + [b * d for d in dens]
    m = plane(f.mean(axis=2))
    feats += [m, m * f]
    return feats


def corrected(
    field: np.ndarray, smooth: np.ndarray, edge: np.ndarray, coefficients: tuple[tuple[float, ...], ...]
) -> np.ndarray:
    """sRGB field (rows, cols, 3) after the correction: per channel, the weighted sum of
    `correction_features` (computed here in factored form, without materialising them: 3-4x faster)."""
    import cv2

    w = np.asarray(coefficients, np.float32)
    n = 4 + 3 * len(DENSITY_RADII) + 5 + 2
    if w.shape != (3, n):
        raise ValueError(f"correction coefficients of shape {w.shape}, need (3, {n})")
    f = field.astype(np.float32, copy=False)
    b = smooth.astype(np.float32, copy=False)
    e = edge.astype(np.float32)
    nd = len(DENSITY_RADII)
    f_coef = w[:, 0] + w[:, 1] * f + w[:, 2] * f * f  # per pixel: what multiplies f (f, f^2, f^3 folded)
    out = w[:, 3] + np.zeros_like(f)
    b_at = 4 + 2 * nd  # b, b^2, f b, f b^2, f^2 b (then b D per radius)
    out += b * (w[:, b_at] + w[:, b_at + 1] * b)
    f_coef += b * (w[:, b_at + 2] + w[:, b_at + 3] * b + w[:, b_at + 4] * f)
    for i, r in enumerate(DENSITY_RADII):
        d = cv2.GaussianBlur(e, (0, 0), r)[:, :, None]
        f_coef += w[:, 4 + i] * d
        out += d * (w[:, 4 + nd + i] + w[:, b_at + 5 + i] * b)
    m = f.mean(axis=2, keepdims=True)
    m_at = b_at + 5 + nd
    out += w[:, m_at] * m
    f_coef += w[:, m_at + 1] * m
    out += f_coef * f
    return out


def colorize_srgb(cells: np.ndarray, edges: np.ndarray | None, k: int, tuning: Tuning | None = None) -> np.ndarray:
    """The float sRGB field (gh * k, gw * k, 3) of `colorize_lab`, corrected where the tuning has a
    correction and there are edges."""
    import cv2

    tuning = tuning or tuning_for(cells.shape[:2])
    field, edge = colorize_lab(cells, edges, k, tuning)
    srgb = to_srgb(field, tuning.space)
    if edge is None or not tuning.correction:
        return srgb
    rows, cols = srgb.shape[:2]
    lab = _to_space(cells, tuning.space)
    smooth = to_srgb(np.asarray(cv2.resize(lab, (cols, rows), interpolation=cv2.INTER_CUBIC)), tuning.space)
    return corrected(srgb, smooth, edge, tuning.correction)


def colorize(cells: np.ndarray, edges: np.ndarray | None, width: int, height: int) -> np.ndarray:
    """uint8 RGB (height, width, 3): `cells` (uint8 RGB grid) spread with `edges` (bool, any size) as boundaries."""
    import cv2

    k = work_scale(cells.shape[:2], width, height)
    srgb = np.clip(colorize_srgb(cells, edges, k) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if srgb.shape[:2] == (height, width):
        return srgb
    shrink = width * height < srgb.shape[0] * srgb.shape[1]
    out = cv2.resize(srgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.asarray(out).reshape(height, width, 3)
