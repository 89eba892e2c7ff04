"""Generated data for the tests and the demo: label images, fluorescence-like renderings, and
two stand-in "models" that segment one substack box.

- `touching_nuclei`: dense, touching, blob-like nuclei of mixed sizes (2D or 3D).
- `render_nuclei`: a uint16 image of those labels that a threshold + distance-transform
  watershed can mostly separate (dimmer rims between touching nuclei, blur, noise).
- `long_and_nonconvex`: bars several times longer than a halo and U-shaped objects.
- `perfect_local_model` / `noisy_local_model`: what a model whose output is local would return
  for one box: ground truth cropped to the box and relabelled by connected pieces (so a
  non-convex object can become two pieces), local ids shuffled; the noisy one also erodes,
  keeps or dilates each object by one voxel, at random, independently in every box.

Every object in the generated label images is one connected piece (full connectivity).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as connected_pieces
from skimage.segmentation import find_boundaries


def _keep_largest_piece(labels: np.ndarray) -> np.ndarray:
    """Drop every piece of an object but its largest, then number objects 1..n."""
    full = np.ones((3,) * labels.ndim, dtype=bool)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == i
        pieces, n = ndi.label(mask, structure=full)
        if n > 1:
            biggest = 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
            labels[sl][mask & (pieces != biggest)] = 0
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lut[labels]


def _smooth_noise(shape, rng, sigma: float) -> np.ndarray:
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / (noise.std() + 1e-12)


def touching_nuclei(
    shape, *, n: int, radius: tuple[float, float], seed: int, spacing=None, centres=()
) -> np.ndarray:
    """uint32 labels of about `n` touching, blob-like nuclei with radii in `radius` (physical
    units; `spacing` gives the voxel size per axis, default 1). `centres` (voxel coordinates)
    are placed first, e.g. on the corner where four substacks meet.

    Each nucleus is its power-diagram cell (|x - c|^2 - r^2 smallest) inside a ball whose
    radius wobbles smoothly by about 10%, so neighbours touch along a straight-ish boundary.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in shape)
    ndim = len(shape)
    spacing = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=float)
    extent = np.asarray(shape) * spacing
    pts: list[np.ndarray] = []
    rad: list[float] = []
    forced = [np.asarray(c, dtype=float) * spacing for c in centres]
    for attempt in range(n * 200):
        if len(pts) >= n + len(forced):
            break
        r = float(rng.uniform(*radius))
        c = forced[len(pts)] if len(pts) < len(forced) else rng.uniform(0, extent)
        if pts and len(pts) >= len(forced):
            d = np.linalg.norm(np.asarray(pts) - c, axis=1)
            if np.any(d < 0.75 * (np.asarray(rad) + r)):
                continue
        pts.append(c)
        rad.append(r)

    wobble = 1.0 + 0.1 * _smooth_noise(shape, rng, sigma=3.0)
    best = np.full(shape, np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint32)
    for i, (c, r) in enumerate(zip(pts, rad), start=1):
        reach = 1.3 * r / spacing
        lo = np.maximum(0, np.floor(c / spacing - reach)).astype(int)
        hi = np.minimum(shape, np.ceil(c / spacing + reach) + 1).astype(int)
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        grids = np.meshgrid(*(np.arange(a, b) * s for a, b, s in zip(lo, hi, spacing)), indexing="ij")
        d2 = sum((g - cc) ** 2 for g, cc in zip(grids, c))
        power = (d2 - r * r).astype(np.float32)
        inside = (d2 <= (r * wobble[sl]) ** 2) & (power < best[sl])
        best[sl][inside] = power[inside]
        labels[sl][inside] = i
    return _keep_largest_piece(labels)


def render_nuclei(labels, *, seed: int) -> np.ndarray:
    """uint16 fluorescence-like image: per-object brightness, dimmer rims, blur, noise."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    brightness = np.concatenate([[0.0], rng.uniform(0.55, 1.0, n)])
    inner = (labels > 0) & ~find_boundaries(labels, mode="inner")
    depth = ndi.distance_transform_edt(inner)
    rim = 0.5 + 0.5 * np.clip(depth / 3.0, 0.0, 1.0)
    img = brightness[labels] * rim * (labels > 0)
    img = ndi.gaussian_filter(img, 1.0) + 0.08
    img = img + rng.normal(0.0, 0.025, img.shape)
    return np.clip(img * 3000.0, 0, 65535).astype(np.uint16)


def _paint(labels, region, value) -> bool:
    """Paint `value` on `region` if it is all background (objects may touch, never overlap)."""
    if np.any(labels[region]):
        return False
    labels[region] = value
    return True


def long_and_nonconvex(shape, *, seed: int, halo: int = 16) -> np.ndarray:
    """uint32 labels with bars 4-8x longer than `halo` (pairs of touching parallel bars) and
    U-shaped objects whose arms are about 2x `halo` long, scattered over the image."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in shape)
    ndim = len(shape)
    labels = np.zeros(shape, dtype=np.uint32)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    yx = grids[-2:]
    thick_z = None
    next_id = 1
    tries = 0
    while tries < 80:
        tries += 1
        if ndim == 3:  # extrude 2D shapes through a slab of z
            z0 = int(rng.integers(0, max(1, shape[0] - 8)))
            thick_z = (grids[0] >= z0) & (grids[0] < z0 + int(rng.integers(8, 16)))
        w = int(rng.integers(6, 10))
        if tries % 2:  # two touching parallel bars
            length = int(min(rng.uniform(4, 8) * halo, 0.9 * max(shape[-2:])))
            ax = int(rng.integers(0, 2))
            y0 = int(rng.integers(0, max(1, shape[-2 + ax] - 2 * w)))
            x0 = int(rng.integers(0, max(1, shape[-1 - ax] - length)))
            across, along = yx[ax], yx[1 - ax]
            region = (across >= y0) & (across < y0 + 2 * w) & (along >= x0) & (along < x0 + length)
            region = region if thick_z is None else region & thick_z
            if _paint(labels, region, next_id):
                labels[region & (across >= y0 + w)] = next_id + 1
                next_id += 2
        else:  # a U: two arms joined by a base, opening up or down
            arm, span = int(2 * halo), int(rng.integers(3, 6)) * w
            y0 = int(rng.integers(0, max(1, shape[-2] - arm)))
            x0 = int(rng.integers(0, max(1, shape[-1] - span)))
            y, x = yx
            in_y = (y >= y0) & (y < y0 + arm)
            arms = in_y & (((x >= x0) & (x < x0 + w)) | ((x >= x0 + span - w) & (x < x0 + span)))
            base_y0 = y0 + arm - w if rng.integers(0, 2) else y0
            base = (y >= base_y0) & (y < base_y0 + w) & (x >= x0) & (x < x0 + span)
            region = arms | base
            next_id += _paint(labels, region if thick_z is None else region & thick_z, next_id)
    return _keep_largest_piece(labels)


def _relabel_pieces(crop: np.ndarray, rng) -> np.ndarray:
    pieces = connected_pieces(crop, background=0, connectivity=crop.ndim)
    n = int(pieces.max(initial=0))
    step, offset = rng.integers(1, 1000), rng.integers(0, 1000)  # arbitrary, distinct ids
    ids = 1 + offset + step * rng.permutation(n).astype(np.int64)
    lut = np.concatenate([[0], ids]).astype(np.uint32)
    return lut[pieces]


def perfect_local_model(gt, box_slices, rng) -> np.ndarray:
    """Ground truth cropped to the box, relabelled by connected pieces, ids shuffled."""
    return _relabel_pieces(np.asarray(gt[tuple(box_slices)]), rng)


def noisy_local_model(gt, box_slices, rng) -> np.ndarray:
    """Like `perfect_local_model`, but each object is eroded, kept or dilated by one voxel
    (face connectivity), chosen at random per object and per call. Dilation only takes
    ground-truth background; the box edge does not erode."""
    crop = np.asarray(gt[tuple(box_slices)])
    n = int(crop.max(initial=0))
    action = rng.integers(0, 3, size=n + 1)  # 0 erode, 1 keep, 2 dilate
    action[0] = 1
    out = crop.copy()
    rim = find_boundaries(crop, connectivity=1, mode="inner")
    out[rim & (action[crop] == 0)] = 0
    grow = np.where(action[crop] == 2, crop, 0)
    face = ndi.generate_binary_structure(crop.ndim, 1)
    grown = ndi.grey_dilation(grow, footprint=face)
    take = (crop == 0) & (grown != 0)
    out[take] = grown[take]
    return _relabel_pieces(out, rng)
