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
features (the field, the bicubic field, local edge density, the bicubic field's gradient, the other
channels: a colour matrix; `correction_features`), fitted by least squares on the AIGI training split
(tools/fit_preview_correction.py), takes the field to the expected sRGB. Finally the grid is upscaled bilinearly.

Two tunings (`tuning_for`): `COARSE` for the generative split's 8 x 8 colormap (sRGB, weaker edge links,
soft means) and `FINE` for the preview target's 24-36 cells (Oklab). numpy + OpenCV only, deterministic;
about 41 ms (COARSE) / 22 ms (FINE) for a 512 x 512 image on one core (the bench's medians of whole preview
decodes, 2026-12-03 07:03, in a middling hour for the machine; 46 / 29 ms in a fast hour before the correction
worked on channel planes); the CG solve is about two thirds of COARSE's time.
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
        0.2414, 0.2178, -0.5179, 0.0745, 0.7737, -3.0159, 1.717, 0.3033, -0.2495, -0.0941, 0.1986, 0.2519, 0.7906,
        -1.2863, 0.9609, -0.3584, 1.9858, -2.0958, -0.0455, -0.0242, -0.575, 0.0272, 0.5975, -2.3724, 2.2865, 0.8728,
        0.6621, -0.6482, 0.4309, -0.0443, -0.0725,
    ),
    (
        0.3214, 1.3305, -1.2738, 0.0062, -1.568, -0.5103, 0.7872, 0.7798, -0.878, 0.3073, 0.2612, -0.501, -0.1145,
        -0.1777, 1.0192, 0.2738, 1.4471, -2.1431, 0.3921, -0.1041, -0.0338, -0.0682, -0.0887, -0.8536, 0.8228, 1.3571,
        0.6009, -0.6994, 0.3723, -0.0488, -0.1366,
    ),
    (
        -0.4697, 0.3622, -0.1235, 0.0414, -1.3255, 1.2428, -0.4897, 0.4652, -0.7159, 0.1894, 0.5074, -0.4911, 1.118,
        -0.1285, -0.3396, 0.8556, -0.1127, -1.259, 1.3817, -0.0724, -0.0766, -0.3878, -0.3424, -0.9616, -0.3355, 2.0418,
        0.3517, -0.5167, 0.6687, -0.223, -0.0028,
    ),
)
# fmt: on
"""`COARSE`'s correction (R, G, B rows), fitted on the generative split (`--target sd`) of the training images."""
# fmt: off
FINE_CORRECTION = (
    (
        0.6911, 1.1565, -2.7047, 0.0322, -2.0591, 4.2261, -3.3246, 0.281, -0.609, 0.3015, 0.0708, 1.1796, -1.7651,
        -2.9555, 5.2862, 0.6952, -1.6961, 1.3645, -0.1002, -0.0714, -0.1178, 0.0183, 0.2397, 1.2478, -2.0304, 1.7659,
        -0.1846, -0.172, 0.43, -0.0405, 0.0068,
    ),
    (
        0.7153, 1.1526, -2.6711, 0.0023, -1.5677, 3.2782, -1.9624, 0.092, -0.2622, 0.1548, -0.0147, 1.3693, -2.0249,
        -3.1478, 5.6468, 0.8662, -2.2334, 1.3773, 0.2032, -0.204, -0.0175, 0.0047, -0.0109, 0.7828, -0.936, 0.5252,
        -0.1455, -0.1099, 0.08, -0.0268, -0.0222,
    ),
    (
        0.1512, 1.6266, -2.2954, 0.0269, -1.8994, 1.8623, -0.3602, 0.0578, 0.1705, -0.3037, 0.0481, 0.6855, -0.9119,
        -2.2994, 3.9541, 1.4621, -2.3796, 1.4105, 0.3324, -0.3571, -0.0208, 0.0447, -0.0023, 0.5631, 0.4017, -0.9451,
        -0.2374, -0.2385, 0.2486, -0.0562, 0.0065,
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
        means = self._means(x)
        if self.cell_weight != 1.0:
            means *= self.cell_weight  # on the cells, not on every pixel: the same values, a pass less
        self._spread(means, out)
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
    and m f; then the other two channels of b (channel c + 1 and c + 2) and channel c + 1 of f (with f and
    m: a colour matrix on f; channel c + 2 would repeat them); D f^2 and D^2 per radius; the gradient
    magnitude g of b's channel mean (3 x 3 Sobel) and g f.
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
    feats += [b[:, :, _NEXT], b[:, :, _AFTER], f[:, :, _NEXT]]
    feats += [d * f * f for d in dens] + [d * d for d in dens]
    g = plane(_gradient(b))
    feats += [g, g * f]
    return feats


_NEXT = [1, 2, 0]
"""Channel c + 1 (mod 3) for each channel c."""
_AFTER = [2, 0, 1]
"""Channel c + 2 (mod 3) for each channel c."""
CORRECTION_TERMS = 4 + 2 * len(DENSITY_RADII) + 5 + len(DENSITY_RADII) + 2 + 3 + 2 * len(DENSITY_RADII) + 2
"""Number of `correction_features` (coefficients per channel of a `Tuning.correction`)."""


def _gradient(smooth: np.ndarray) -> np.ndarray:
    """Gradient magnitude (3 x 3 Sobel) of the channel mean of the bicubic field, (rows, cols) float32."""
    import cv2

    mean = np.ascontiguousarray(smooth.mean(axis=2), dtype=np.float32)
    gx = cv2.Sobel(mean, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(mean, cv2.CV_32F, 0, 1)
    return np.asarray(cv2.magnitude(gx, gy))


def corrected(
    field: np.ndarray, smooth: np.ndarray, edge: np.ndarray, coefficients: tuple[tuple[float, ...], ...]
) -> np.ndarray:
    """sRGB field (rows, cols, 3) after the correction: per channel, the weighted sum of
    `correction_features` (computed here in factored form, one contiguous channel plane at a time, without
    materialising them; half the time of the same sums over interleaved channels)."""
    import cv2

    w = np.asarray(coefficients, np.float32)
    if w.shape != (3, CORRECTION_TERMS):
        raise ValueError(f"correction coefficients of shape {w.shape}, need (3, {CORRECTION_TERMS})")
    f3 = field.astype(np.float32, copy=False)
    b3 = smooth.astype(np.float32, copy=False)
    fp = [np.ascontiguousarray(f3[:, :, c]) for c in range(3)]
    bp = [np.ascontiguousarray(b3[:, :, c]) for c in range(3)]
    e = edge.astype(np.float32)
    dens = [cv2.GaussianBlur(e, (0, 0), r) for r in DENSITY_RADII]
    m = np.ascontiguousarray(f3.mean(axis=2))
    g = _gradient(b3)
    nd = len(DENSITY_RADII)
    b_at = 4 + 2 * nd  # b, b^2, f b, f b^2, f^2 b (then b D per radius)
    m_at = b_at + 5 + nd  # m, m f
    x_at = m_at + 2  # b of channels c + 1, c + 2; f of channel c + 1
    d_at = x_at + 3  # D f^2 per radius, then D^2 per radius; then g, g f
    out = np.empty(f3.shape, np.float32)
    for c in range(3):
        wc, f, b = w[c], fp[c], bp[c]
        f_coef = wc[0] + wc[1] * f + wc[2] * f * f  # per pixel: what multiplies f (f, f^2, f^3 folded)
        o = wc[3] + np.zeros_like(f)
        o += b * (wc[b_at] + wc[b_at + 1] * b)
        f_coef += b * (wc[b_at + 2] + wc[b_at + 3] * b + wc[b_at + 4] * f)
        for i, d in enumerate(dens):
            f_coef += d * (wc[4 + i] + wc[d_at + i] * f)
            o += d * (wc[4 + nd + i] + wc[b_at + 5 + i] * b + wc[d_at + nd + i] * d)
        o += wc[m_at] * m
        f_coef += wc[m_at + 1] * m
        o += wc[x_at] * bp[_NEXT[c]] + wc[x_at + 1] * bp[_AFTER[c]]
        o += wc[x_at + 2] * fp[_NEXT[c]]
        o += g * (wc[d_at + 2 * nd] + wc[d_at + 2 * nd + 1] * f)
        o += f_coef * f
        out[:, :, c] = o
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
