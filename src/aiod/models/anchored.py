"""Network evaluation anchored to the image, so that a box gives what the whole image gives.

A library that resizes its input or cuts it into tiles does so relative to the array it is
handed: the resize grid starts at the array's first pixel and the tiles are spread over the
array's length. Handed a box of an image, it samples another grid and other tiles than for the
whole image, and every output pixel of the box changes, not only those near its edges. Here both
are fixed in image coordinates instead:

- `resample` resizes one axis with linear interpolation whose sample positions are those of the
  whole image's resize (`(j + 0.5) * L / R - 0.5`, clamped at the image's ends). A box returns
  exactly the whole image's samples whose two neighbours it holds.
- `tile_starts` places tiles of a fixed size every `step` pixels from a fixed margin before the
  image's first pixel to a fixed margin after its last; outside the image a tile holds zeros.
- `evaluate` runs the network on the tiles that lie wholly in the box (or reach past it only at
  the image's ends), in batches of a fixed size, and blends them with a taper, adding tiles in
  the image's row-major order. A pixel covered only by such tiles gets bit for bit the value it
  gets in the whole image; pixels near the box's inner edges get partial or no coverage and are
  left to the halo.

`covered` says how far that reaches: a box's output is exact at least `covered(...)` pixels (of
the image's grid) inside each edge that is not an image edge. Two dimensions; a volume is
evaluated plane by plane.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def resized_length(length: int, scale: float) -> int:
    """The length of an axis of `length` pixels resized by `scale` (as cellpose: int(L * s))."""
    return length if scale == 1.0 else max(1, int(length * scale))


def _positions(length_in: int, length_out: int):
    src = np.clip((np.arange(length_out) + 0.5) * (length_in / length_out) - 0.5, 0, length_in - 1)
    i0 = np.floor(src).astype(np.int64)
    return i0, np.minimum(i0 + 1, length_in - 1), (src - i0).astype(np.float32)


def resample(a: np.ndarray, axis: int, length_in: int, length_out: int, origin: int) -> tuple[np.ndarray, int]:
    """`a` holds pixels [origin, origin + a.shape[axis]) of an axis of `length_in` pixels.
    Returns (b, start): the samples [start, start + b.shape[axis]) of the axis resized to
    `length_out`, every sample both of whose neighbours `a` holds (possibly none)."""
    if length_in == length_out:
        return a, origin
    i0, i1, w = _positions(length_in, length_out)
    inside = np.flatnonzero((i0 >= origin) & (i1 < origin + a.shape[axis]))
    if inside.size == 0:
        shape = list(a.shape)
        shape[axis] = 0
        return np.zeros(shape, np.float32), 0
    start, stop = int(inside[0]), int(inside[-1]) + 1
    shape = [1] * a.ndim
    shape[axis] = stop - start
    w = w[start:stop].reshape(shape)
    b = np.take(a, i0[start:stop] - origin, axis) * (1 - w) + np.take(a, i1[start:stop] - origin, axis) * w
    return b.astype(np.float32, copy=False), start


def tile_starts(length: int, tile: int, step: int, margin: int) -> list[int]:
    """Tile starts along an axis of `length` pixels: every `step` from -margin, the last one
    ending at length + margin (one tile when the axis and its margins fit in one)."""
    lo, hi = -margin, length + margin
    if hi - lo <= tile:
        return [lo]
    return list(range(lo, hi - tile, step)) + [hi - tile]


def tile_size(length: int, tile: int, margin: int, multiple: int) -> int:
    """`tile`, or less for a short axis: its length and margins, up to a multiple of `multiple`."""
    return min(tile, multiple * int(np.ceil((length + 2 * margin) / multiple)))


def taper(ly: int, lx: int, sigma: float = 7.5) -> np.ndarray:
    """The blending weight of a tile: flat inside, falling off over its outer ~20 pixels."""
    size = max(224, ly, lx)
    d = np.abs(np.arange(size) - (size - 1) / 2)
    m = 1 / (1 + np.exp((d - (size / 2 - 20)) / sigma))
    m = (m * m[:, None]).astype(np.float32)
    y0, x0 = size // 2 - ly // 2, size // 2 - lx // 2
    return m[y0:y0 + ly, x0:x0 + lx]


def resize_box(x: np.ndarray, origin, image_shape, scales) -> tuple[np.ndarray, list[int], list[int]]:
    """Box `x` (C, *spatial) at `origin` of an image of `image_shape`, resized by `scales` (one
    per spatial axis) as the whole image would be. Returns (r, starts, lengths): the samples it
    holds, their first index per axis, and the resized image's lengths."""
    r, starts = np.asarray(x, np.float32), []
    lengths = [resized_length(n, s) for n, s in zip(image_shape, scales)]
    for axis, (n, m, o) in enumerate(zip(image_shape, lengths, origin)):
        r, start = resample(r, axis + 1, n, m, o)
        starts.append(start)
    return r, starts, lengths


def resize_back(y: np.ndarray, starts, lengths, origin, image_shape, box_shape, fill) -> np.ndarray:
    """Outputs `y` (K, *resized box) back on the box's pixels; pixels whose samples the resized
    box does not hold are `fill` (one value per output)."""
    fill = np.asarray(fill, np.float32)
    for axis, (n, m, o, s, b) in enumerate(zip(image_shape, lengths, origin, starts, box_shape)):
        y, first = resample(y, axis + 1, m, n, s)
        lead, trail = first - o, o + b - first - y.shape[axis + 1]
        if lead or trail:
            pad = [(0, 0)] * y.ndim
            pad[axis + 1] = (lead, trail)
            y = np.pad(y, pad)
            edge = np.ones(b, bool)
            edge[lead:b - trail] = False
            index = [slice(None)] * y.ndim
            index[axis + 1] = edge
            y[tuple(index)] = fill.reshape((-1,) + (1,) * (y.ndim - 1))
    return y


def run_tiles(forward: Callable[[np.ndarray], np.ndarray], planes, *, n_out: int, tile: int = 224, step: int = 192,
              margin: int = 8, multiple: int = 16, batch: int = 8):
    """Blended outputs of 2D planes, each (array (C, Y, X), starts, lengths): its samples, their
    first index per axis and the axes' lengths in the (resized) image. `forward(tiles (N, C, ty,
    tx))` returns (N, n_out, ty, tx); it always gets `batch` tiles (the last batch padded with
    zeros), so that a tile's output never depends on the tiles beside it in a batch. Tiles of all
    planes share batches. Returns (out (n_out, Y, X), covered (Y, X) bool) per plane."""
    jobs, results = [], []
    for p, (a, starts, lengths) in enumerate(planes):
        sizes = tuple(tile_size(m, tile, margin, multiple) for m in lengths)
        windows = [[t for t in tile_starts(m, size, step, margin) if _inside(t, size, m, start, start + n)]
                   for m, size, start, n in zip(lengths, sizes, starts, a.shape[1:])]
        results.append((np.zeros((n_out, *a.shape[1:]), np.float32), np.zeros(a.shape[1:], np.float32),
                        taper(*sizes)))
        # the image's row-major order: a pixel's tiles are added in the same order in every box
        jobs += [(p, sizes, tuple(_overlap(t, size, m, start) for t, size, m, start in zip(ts, sizes, lengths, starts)))
                 for ts in ((ty, tx) for ty in windows[0] for tx in windows[1])]
    by_size: dict[tuple, list] = {}
    for job in jobs:
        by_size.setdefault(job[1], []).append(job)
    for sizes, group in by_size.items():
        for first in range(0, len(group), batch):
            chunk = group[first:first + batch]
            tiles = np.zeros((batch, planes[chunk[0][0]][0].shape[0], *sizes), np.float32)
            for k, (p, _, ((dy, sy), (dx, sx))) in enumerate(chunk):
                tiles[k][:, dy, dx] = planes[p][0][:, sy, sx]
            y = np.asarray(forward(tiles), np.float32)
            for k, (p, _, ((dy, sy), (dx, sx))) in enumerate(chunk):
                out, weight, mask = results[p]
                out[:, sy, sx] += y[k][:, dy, dx] * mask[dy, dx]
                weight[sy, sx] += mask[dy, dx]
    blended = []
    for out, weight, _ in results:
        seen = weight > 0
        out[:, seen] /= weight[seen]
        blended.append((out, seen))
    return blended


def evaluate(forward: Callable[[np.ndarray], np.ndarray], x: np.ndarray, origin, image_shape, scale: float, *,
             n_out: int, fill, **tiling) -> np.ndarray:
    """The network's outputs for a 2D box `x` (C, Y, X) at `origin` (y, x) of an image of
    `image_shape`: resized by `scale`, tiled on the image's grid (run_tiles), blended, and
    resized back to the box's pixels. Returns (n_out, Y, X) float32; `fill` where no tile reached."""
    r, starts, lengths = resize_box(x, origin, image_shape, (scale, scale))
    ((out, seen),) = run_tiles(forward, [(r, starts, lengths)], n_out=n_out, **tiling)
    out[:, ~seen] = np.asarray(fill, np.float32)[:, None]
    return resize_back(out, starts, lengths, origin, image_shape, x.shape[1:], fill)


def _inside(start: int, size: int, length: int, lo: int, hi: int) -> bool:
    """Whether the tile's part inside the image, [start, start + size) within [0, length), lies
    within the resized box [lo, hi)."""
    a, b = max(start, 0), min(start + size, length)
    return lo <= a and b <= hi


def _overlap(start: int, size: int, length: int, box_start: int) -> tuple[slice, slice]:
    """(within the tile, within the resized box) slices of the tile's part inside the image."""
    a, b = max(start, 0), min(start + size, length)
    return slice(a - start, b - start), slice(a - box_start, b - box_start)


def covered(scale: float, tile: int = 224) -> int:
    """Pixels (of the image's grid) inside a box's inner edge beyond which its outputs are exact:
    a tile's length in resized pixels, plus the two pixels of each linear resize."""
    return int(np.ceil(tile / scale)) + 2 + int(np.ceil(2 / scale))
