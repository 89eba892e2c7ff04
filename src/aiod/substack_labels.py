"""Per-substack label files: what a SEGMENT task writes and MERGE reads.

One zarr v3 array per substack, shaped like the substack's box (core + halo), any integer
dtype, 0 = background, local ids arbitrary; attrs `aiod_substack` (its index in the plan),
`max_label`, and whatever the writer adds (timings).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import zarr

from aiod.errors import AiodError
from aiod.planner import Plan

CHUNK_EDGE = {2: 512, 3: 128}
SLAB_VOXELS = 1 << 21  # voxels read (and mapped, written) at a time: one 128³ chunk
DENSE_LABELS = 1 << 22  # local labels below this are mapped through dense tables


def write_substack_labels(path, labels: np.ndarray, index: int, attrs: dict | None = None) -> None:
    """Write one substack's labels (box-shaped) as a zstd-compressed zarr v3 array; `attrs`
    (JSON values, e.g. timings) are stored beside them."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise AiodError(f"{path}: substack labels must be integers, got {labels.dtype}")
    edge = CHUNK_EDGE.get(labels.ndim, 64)
    arr = zarr.create_array(
        store=str(path),
        shape=labels.shape,
        dtype=labels.dtype,
        chunks=tuple(max(1, min(edge, n)) for n in labels.shape),
        compressors=zarr.codecs.ZstdCodec(level=3),
        fill_value=0,
        zarr_format=3,
        overwrite=True,
    )
    arr[...] = labels
    arr.attrs.update({**(attrs or {}), "aiod_substack": int(index), "max_label": int(labels.max(initial=0))})


def open_substack_labels(path) -> tuple[int, zarr.Array]:
    """(substack index, lazy array) of labels written by `write_substack_labels`."""
    try:
        arr = zarr.open_array(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a missing or foreign store
        raise AiodError(f"{path}: not a substack label array ({exc})") from None
    if "aiod_substack" not in arr.attrs:
        raise AiodError(f"{path}: no 'aiod_substack' attribute; not written by aiod")
    return int(arr.attrs["aiod_substack"]), arr


def open_all(plan: Plan, paths: Sequence) -> list:
    """The label arrays of every substack of `plan`, in plan order, checked against it."""
    arrays: list = [None] * len(plan.substacks)
    for p in paths:
        idx, arr = open_substack_labels(p)
        if not 0 <= idx < len(arrays):
            raise AiodError(f"{p}: substack {idx} is not in the plan (0..{len(arrays) - 1})")
        if arrays[idx] is not None:
            raise AiodError(f"{p}: substack {idx} is given twice")
        want = plan.substacks[idx].box_shape
        if tuple(arr.shape) != want:
            raise AiodError(f"{p}: substack {idx} has shape {arr.shape}, its box is {want}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise AiodError(f"{p}: substack labels must be integers, got {arr.dtype}")
        arrays[idx] = arr
    missing = [i for i, a in enumerate(arrays) if a is None]
    if missing:
        raise AiodError(f"merge: labels of substacks {missing} are missing")
    return arrays


def pieces(core, chunks, origin, limit: int) -> list[tuple[slice, ...]]:
    """The core (ranges, image coordinates) cut into pieces of at most `limit` voxels, along
    the leading axes first, only at chunk boundaries (`origin` + multiples of `chunks`), so
    that two pieces never share a chunk; `chunks=None` cuts anywhere."""
    extent = [b - a for a, b in core]
    steps, voxels = [], math.prod(extent)
    for k, n in enumerate(extent):
        if voxels <= limit:
            steps.append(n)
            continue
        step = chunks[k] if chunks else max(1, limit // max(1, voxels // n))
        steps.append(step)
        voxels = voxels // n * min(n, step)
    axes = []
    for (a, b), step, o in zip(core, steps, origin):
        first = o + ((a - o) // step + 1) * step
        cuts = [a, *range(first, b, step), b]
        axes.append([slice(p, q) for p, q in zip(cuts[:-1], cuts[1:])])
    return list(itertools.product(*axes))


def in_box(sub, piece: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(r.start - b0, r.stop - b0) for r, (b0, _) in zip(piece, sub.box))


def runs(labels: np.ndarray) -> np.ndarray:
    """The values of `labels` (C order) with consecutive repeats dropped: every distinct value
    is there, and label images shrink by their run length."""
    flat = labels.reshape(-1)
    if flat.size < 2:
        return flat
    keep = np.empty(flat.size, dtype=bool)
    keep[0] = True
    np.not_equal(flat[1:], flat[:-1], out=keep[1:])
    return flat[keep]


def max_label(arr) -> int | None:
    top = arr.attrs.get("max_label") if hasattr(arr, "attrs") else None
    return None if top is None else int(top)
