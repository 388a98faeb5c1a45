"""Dense binary labels between two annotated slices: shape interpolation refined by a random walker on the image.

The labels of two annotated slices `first` and `last` (n slices apart) become signed distances (negative inside,
clipped at +-`clip`), interpolated linearly across the gap: the shape prior, whose zero level is plain shape
interpolation. A voxel farther than `band + growth * (distance to the nearer annotated slice)` in-plane voxels from
that zero level keeps the prior's answer; the voxels inside this band are left to a random walker (Grady 2006)
over the image of the whole gap: 6-connected, edge weights exp(-beta * (difference / std)^2) on the image smoothed
in-plane by `sigma` (std: of both annotated slices, so `beta` means the same on any intensity scale), seeded by
the annotated slices and the prior outside the band. A voxel is foreground where the walker's probability is above
0.5, and unsure (0 in `sure`) where it lies within `margin` of 0.5; should the solver not converge, the band keeps
the prior's answer and is unsure as a whole.

Everything depends only on the gap's image and its two annotated slices: the stage solves each gap whole, so the
result does not depend on how the volume is cut into blocks.
"""

from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix, diags
from scipy.sparse.linalg import cg

Method = Literal["random-walker", "shape"]

#: conjugate gradient: relative residual and iterations
TOLERANCE = 1e-4
MAX_ITERATIONS = 2000
#: added to every edge weight so that no band voxel is cut off from the seeds
MIN_WEIGHT = 1e-6


def signed_distance(mask: np.ndarray, clip: float, sampling: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """float32 signed distance of a 2D bool mask (negative inside, positive outside), clipped at +-`clip`.

    >>> signed_distance(np.array([[0, 1, 1, 1, 0]], bool), 9.0)
    array([[ 1., -1., -2., -1.,  1.]], dtype=float32)
    >>> signed_distance(np.zeros((1, 3), bool), 4.0)
    array([[4., 4., 4.]], dtype=float32)
    """
    if not mask.any() or mask.all():
        return np.full(mask.shape, -clip if mask.any() else clip, np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return np.clip(outside - inside, -clip, clip).astype(np.float32)


def shape_prior(
    first: np.ndarray, last: np.ndarray, gap: int, sampling: tuple[float, float] = (1.0, 1.0), clip: float | None = None
) -> np.ndarray:
    """float32 signed distances of slices 0..`gap` (`gap + 1` of them), linear between those of the two annotated
    slices; `clip` (default `gap`) bounds them, so an object on one side only shrinks to nothing within the gap.

    >>> prior = shape_prior(np.array([[1, 1, 1, 1]], bool), np.array([[0, 0, 1, 1]], bool), 2)
    >>> (prior < 0).astype(np.uint8)[:, 0]
    array([[1, 1, 1, 1],
           [0, 1, 1, 1],
           [0, 0, 1, 1]], dtype=uint8)
    """
    clip = float(gap) if clip is None else clip
    ends = signed_distance(first, clip, sampling), signed_distance(last, clip, sampling)
    t = (np.arange(gap + 1, dtype=np.float32) / np.float32(gap))[:, None, None]
    return ((1 - t) * ends[0] + t * ends[1]).astype(np.float32)


def band_width(gap: int, band: float, growth: float) -> np.ndarray:
    """float32 half-width of the unsure band per slice 0..`gap`: `band + growth * slices to the nearer end`.

    >>> band_width(4, 2.0, 0.5)
    array([2. , 2.5, 3. , 2.5, 2. ], dtype=float32)
    """
    slices = np.arange(gap + 1)
    return (band + growth * np.minimum(slices, gap - slices)).astype(np.float32)


def interpolate_gap(
    raw: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    method: Method = "random-walker",
    beta: float = 40.0,
    sigma: float = 1.0,
    band: float = 3.0,
    growth: float = 0.5,
    margin: float = 0.35,
    sampling: tuple[float, float] = (1.0, 1.0),
    spacing: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The slices strictly between two annotated slices: (labels uint8 0/1, sure uint8 0/1), each of shape
    `(gap - 1, Y, X)`, from `raw` (the gap's image, `gap + 1` slices, annotated ones included, any real dtype) and
    the bool labels `first`, `last` of its two ends. `method` "shape" is the prior alone (sure outside the band).
    Distances are in units of the smallest in-plane voxel: `sampling` is the in-plane voxel size and `spacing` the
    distance between slices in that unit (so the prior's clip is `gap * spacing`, and the band grows by `growth`
    per unit of distance to the nearer annotated slice).

    A dark half ball (295 voxels between the annotated slices) with the wrong voxels of each method:

    >>> z, y, x = np.ogrid[:5, :24, :24]
    >>> ball = (z - 4) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 < 36
    >>> raw = np.where(ball, 60, 180).astype(np.uint8)
    >>> labels, sure = interpolate_gap(raw, ball[0], ball[4])
    >>> labels.dtype, labels.shape, int((labels != ball[1:4]).sum())
    (dtype('uint8'), (3, 24, 24), 8)
    >>> int((interpolate_gap(raw, ball[0], ball[4], "shape")[0] != ball[1:4]).sum())
    48
    """
    gap = raw.shape[0] - 1
    if gap < 2:
        return np.zeros((0, *raw.shape[1:]), np.uint8), np.zeros((0, *raw.shape[1:]), np.uint8)
    prior = shape_prior(first, last, gap, sampling, gap * spacing)
    unknown = np.abs(prior) < band_width(gap, band, growth * spacing)[:, None, None]
    unknown[0] = unknown[-1] = False
    foreground = prior < 0
    foreground[0], foreground[-1] = first, last
    if method == "shape" or not unknown.any():
        return foreground[1:-1].astype(np.uint8), (~unknown[1:-1]).astype(np.uint8)
    probability = _random_walk(raw, foreground, unknown, beta, sigma)
    if probability is None:  # not converged: the prior decides, and the band is unsure
        return foreground[1:-1].astype(np.uint8), (~unknown[1:-1]).astype(np.uint8)
    labels = foreground.copy()
    labels[unknown] = probability > 0.5
    sure = np.ones(raw.shape, bool)
    sure[unknown] = np.abs(probability - 0.5) >= margin
    return labels[1:-1].astype(np.uint8), sure[1:-1].astype(np.uint8)


def _random_walk(
    raw: np.ndarray, foreground: np.ndarray, unknown: np.ndarray, beta: float, sigma: float
) -> np.ndarray | None:
    """float64 probability of foreground of the `unknown` voxels (in C order), the others being seeds (1 where
    `foreground`, else 0); None when the solver does not converge."""
    image = raw.astype(np.float32)
    if sigma > 0:
        image = ndimage.gaussian_filter(image, (0, sigma, sigma))
    scale = float(np.concatenate([image[0].ravel(), image[-1].ravel()]).std()) or 1.0
    image = image / np.float32(scale)
    count = int(unknown.sum())
    index = np.full(raw.shape, -1, np.int32 if count < 2**31 else np.int64)
    index[unknown] = np.arange(count)
    rows, columns, weights = [], [], []
    degree = np.zeros(count)
    seeded = np.zeros(count)
    for axis in range(3):
        low = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        high = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        touching = unknown[low] | unknown[high]
        weight = np.exp(-beta * (image[low][touching] - image[high][touching]).astype(np.float64) ** 2) + MIN_WEIGHT
        a, b = index[low][touching], index[high][touching]
        for this, other, other_foreground in ((a, b, foreground[high][touching]), (b, a, foreground[low][touching])):
            own = this >= 0
            degree += np.bincount(this[own], weight[own], minlength=count)
            edge = own & (other >= 0)
            rows.append(this[edge])
            columns.append(other[edge])
            weights.append(-weight[edge])
            seed = own & (other < 0) & other_foreground
            seeded += np.bincount(this[seed], weight[seed], minlength=count)
    laplacian = coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(columns))), shape=(count, count)
    ).tocsr() + diags(degree)
    start = foreground[unknown].astype(np.float64)
    probability, info = cg(laplacian, seeded, x0=start, rtol=TOLERANCE, maxiter=MAX_ITERATIONS, M=diags(1 / degree))
    return probability if info == 0 else None
