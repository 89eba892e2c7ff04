"""Box arithmetic on the image's grid, beside the plan (planner.py) that makes the boxes.

A region is one (start, stop) pair per spatial axis, in image coordinates, stop excluded. The
planner's substacks, the label files (substack_labels.py), the seams, the merge, and whatever
walks a mask or an image block by block (measure, regions) all speak it.
"""

from __future__ import annotations

import itertools
import math

SLAB_VOXELS = 1 << 21  # voxels read (and mapped, written) at a time: one 128³ chunk


def intersect(r1, r2):
    """The intersection of two regions ([start, stop) per axis), None when empty."""
    out = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(r1, r2))
    return None if any(a >= b for a, b in out) else out


def rel(region, origin) -> tuple[slice, ...]:
    """`region` as slices of an array whose index 0 is at `origin` (a region or a point)."""
    starts = [o[0] if isinstance(o, (tuple, list)) else o for o in origin]
    return tuple(slice(a - o, b - o) for (a, b), o in zip(region, starts))


def shape_of(region) -> tuple[int, ...]:
    return tuple(b - a for a, b in region)


def pieces(region, chunks, origin, limit: int) -> list[tuple[slice, ...]]:
    """`region` (ranges, image coordinates) cut into pieces of at most `limit` voxels (or one
    chunk), along the leading axes first, only at chunk boundaries (`origin` + multiples of
    `chunks`), so that two pieces never share a chunk; `chunks=None` cuts anywhere."""
    extent = [b - a for a, b in region]
    steps, voxels = [], math.prod(extent)
    for k, n in enumerate(extent):
        if voxels <= limit:
            steps.append(n)
            continue
        step = chunks[k] if chunks else max(1, limit // max(1, voxels // n))
        steps.append(step)
        voxels = voxels // n * min(n, step)
    axes = []
    for (a, b), step, o in zip(region, steps, origin):
        first = o + ((a - o) // step + 1) * step
        cuts = [a, *range(first, b, step), b]
        axes.append([slice(p, q) for p, q in zip(cuts[:-1], cuts[1:])])
    return list(itertools.product(*axes))
