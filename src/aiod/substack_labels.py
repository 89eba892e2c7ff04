"""Per-substack label files: what a SEGMENT task writes and MERGE reads (format `aiod-substack/2`).

One zarr v3 group per substack:

    <path>/                 attrs: format, aiod_substack (index), max_label (n), the writer's
                            (timings); with the plan also core_labels (m), box and the plan's
                            spatial_shape, grid and overlap
    <path>/labels           the box's labels, renumbered 1..n (0 = background) in the smallest
                            unsigned type that holds n
    <path>/shared           with the plan: a copy of the labels on box ∩ box(t) for every
                            substack t whose box overlaps this one's (what the merge compares),
                            flattened (C order) one after the other, each starting on a chunk
                            boundary: at attrs shared_offsets[str(t)]

Renumbering keeps the order of the model's ids (the merge numbers objects by (substack, local
id), so the merged mask does not change) and puts the labels that own core voxels first: they
are exactly 1..m, and m+1..n are seen only in the halo. With the plan, `labels` is indexed in
image coordinates (shape: the box's stop; nothing is stored outside the box), so its chunks lie
on the image's grid, as the merged output's do; without it (`plan=None`) it is box-shaped and
the merge finds the core's labels itself and cuts shared regions from `labels`: slower, same
result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import zarr

from aiod.boxes import SLAB_VOXELS, intersect, rel, shape_of  # SLAB_VOXELS: also the shared regions' chunk
from aiod.errors import AiodError
from aiod.planner import Plan

FORMAT = "aiod-substack/2"
CHUNK_EDGE = {2: 512, 3: 128}  # divides the output's chunks (ngff.DEFAULT_CHUNKS)
LUT_IDS = 1 << 24  # model ids below this are renumbered through a table, others by sorted search


def run_starts(flat: np.ndarray) -> np.ndarray:
    """Indices where a new run of equal values starts in the 1-d `flat`."""
    keep = np.empty(flat.size, dtype=bool)
    keep[:1] = True
    np.not_equal(flat[1:], flat[:-1], out=keep[1:])
    return np.flatnonzero(keep)


def runs(labels: np.ndarray) -> np.ndarray:
    """The values of `labels` (C order) with consecutive repeats dropped: every distinct value
    is there, and label images shrink by their run length."""
    flat = labels.reshape(-1)
    return flat[run_starts(flat)] if flat.size > 1 else flat


def distinct(labels: np.ndarray) -> np.ndarray:
    """Sorted distinct nonzero values of `labels`, found a slab of the first axis at a time."""
    step = max(1, SLAB_VOXELS // max(1, math.prod(labels.shape[1:])))
    found = [np.unique(runs(labels[i : i + step])) for i in range(0, labels.shape[0], step)]
    values = np.unique(np.concatenate([np.zeros(1, labels.dtype), *found]))
    return values[values != 0]


def unsigned(top: int) -> np.dtype:
    """The smallest unsigned integer type that holds `top`."""
    return next(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max)


def renumber(labels: np.ndarray, core: tuple[slice, ...] | None = None) -> tuple[np.ndarray, int, int | None]:
    """(labels renumbered 1..n in the order of their values, n, m): with `core` (slices of
    `labels`), the m labels with voxels in it come first, those only outside it after."""
    values = distinct(labels)
    order, m = values, None
    if core is not None:
        owned = distinct(labels[core])
        order, m = np.concatenate([owned, np.setdiff1d(values, owned, assume_unique=True)]), len(owned)
    n = len(order)
    dtype = unsigned(n)
    new = np.arange(1, n + 1, dtype=dtype)
    if not n:
        return np.zeros(labels.shape, dtype), 0, m
    if values[0] > 0 and values[-1] < LUT_IDS:
        lut = np.zeros(int(values[-1]) + 1, dtype)
        lut[order] = new
        return lut[labels], n, m
    # large or negative ids: look up one value per run, then expand the runs again
    key = np.argsort(order)
    flat = labels.reshape(-1)
    starts = run_starts(flat)
    found = np.minimum(np.searchsorted(order[key], flat[starts]), n - 1)
    mapped = np.where(flat[starts] == 0, 0, new[key][found]).astype(dtype)
    return np.repeat(mapped, np.diff(starts, append=flat.size)).reshape(labels.shape), n, m


def _create(group, name: str, shape, dtype, chunks):
    return group.create_array(name, shape=shape, dtype=dtype, chunks=tuple(max(1, min(c, n)) for c, n in zip(chunks, shape)),
                              compressors=zarr.codecs.ZstdCodec(level=3), fill_value=0)


def shared_regions(plan: Plan, index: int) -> dict[int, tuple]:
    """{t: box(index) ∩ box(t)} for every substack t whose box overlaps this one's."""
    box = plan.substacks[index].box
    regions = {t: intersect(box, plan.substacks[t].box) for t in plan.neighbours(index)}
    return {t: r for t, r in regions.items() if r is not None}


def _write_shared(group, plan: Plan, index: int, renumbered: np.ndarray) -> dict[str, int]:
    """Copies of the labels on every shared region, flattened into one array; their offsets."""
    regions = shared_regions(plan, index)
    offsets, total = {}, 0
    for t, region in regions.items():
        offsets[str(t)] = total
        total += -(-math.prod(shape_of(region)) // SLAB_VOXELS) * SLAB_VOXELS  # next chunk boundary
    arr = _create(group, "shared", (total,), renumbered.dtype, (SLAB_VOXELS,))
    for t, region in regions.items():
        flat = renumbered[rel(region, plan.substacks[index].box)].reshape(-1)
        arr[offsets[str(t)] : offsets[str(t)] + flat.size] = flat
    return offsets


def write_substack_labels(path, labels: np.ndarray, index: int, attrs: dict | None = None, *, plan: Plan | None = None) -> int:
    """Write one substack's labels (box-shaped, any integers, 0 = background) and return the
    number of objects in them. With `plan`, also what makes the merge fast: the core's labels
    numbered first, labels on the image's chunk grid, copies of the shared regions. `attrs`
    (JSON values, e.g. timings) are stored beside them."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise AiodError(f"{path}: substack labels must be integers, got {labels.dtype}")
    sub = plan.substacks[index] if plan is not None else None
    if sub is not None and labels.shape != sub.box_shape:
        raise AiodError(f"{path}: labels have shape {labels.shape}, substack {index}'s box is {sub.box_shape}")
    renumbered, n, m = renumber(labels, sub.core_in_box if sub is not None else None)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    meta = {"format": FORMAT, "aiod_substack": int(index), "max_label": n}
    edge = (CHUNK_EDGE.get(labels.ndim, 64),) * labels.ndim
    if sub is None:
        _create(group, "labels", labels.shape, renumbered.dtype, edge)[...] = renumbered
    else:
        _create(group, "labels", tuple(b for _, b in sub.box), renumbered.dtype, edge)[sub.box_slices] = renumbered
        meta.update(core_labels=m, box=[list(r) for r in sub.box], spatial_shape=list(plan.spatial_shape),
                    grid=list(plan.grid), overlap=list(plan.overlap),
                    shared_offsets=_write_shared(group, plan, index, renumbered))
    # one write of the group's zarr.json: attrs.update rewrites it once per key (19 times,
    # 15 ms of each small field's 66 ms in a batch of many)
    group.update_attributes({**(attrs or {}), **meta})
    return n


@dataclass(frozen=True)
class SubstackLabels:
    """One substack's label file, opened lazily."""

    path: str
    index: int
    group: zarr.Group
    array: zarr.Array  # the labels
    max_label: int  # labels are 0..max_label
    core_labels: int | None  # 1..core_labels are the labels owning core voxels (None: not known)
    origin: tuple[int, ...] | None  # image coordinates of the array's index 0 (None: box-local, origin unknown)
    shared: zarr.Array | None  # the flattened shared regions (written with the plan)

    @property
    def attrs(self):
        return self.group.attrs

    def read(self, region) -> np.ndarray:
        """Labels on `region` ([start, stop) per axis, image coordinates, inside the box)."""
        return np.asarray(self.array[rel(region, self.origin)])

    def read_shared(self, t: int, region) -> np.ndarray:
        """Labels on `region` = this box ∩ box(t): the stored copy when there is one."""
        if self.shared is None:
            return self.read(region)
        start = self.attrs["shared_offsets"][str(t)]
        return np.asarray(self.shared[start : start + math.prod(shape_of(region))]).reshape(shape_of(region))


def open_substack_labels(path) -> tuple[int, SubstackLabels]:
    """(substack index, labels) of a file written by `write_substack_labels`."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # zarr raises several types for a missing or foreign store
        try:
            zarr.open_array(str(path), mode="r")
        except Exception as exc:
            raise AiodError(f"{path}: not a substack label file ({exc})") from None
        raise AiodError(f"{path}: written by an older aiod (a bare array); write it again with "
                        f"substack_labels.write_substack_labels") from None
    if group.attrs.get("format") != FORMAT or "aiod_substack" not in group.attrs:
        raise AiodError(f"{path}: format {group.attrs.get('format')!r}, expected {FORMAT!r}; not written by "
                        "this aiod's substack_labels.write_substack_labels")
    box = group.attrs.get("box")
    core = group.attrs.get("core_labels")
    labels = SubstackLabels(str(path), int(group.attrs["aiod_substack"]), group, group["labels"],
                            int(group.attrs["max_label"]), None if core is None else int(core),
                            None if box is None else (0,) * len(box), None if box is None else group["shared"])
    return labels.index, labels


def open_all(plan: Plan, paths: Sequence) -> list[SubstackLabels]:
    """The labels of every substack of `plan`, in plan order, checked against it."""
    found: list = [None] * len(plan.substacks)
    for p in paths:
        idx, lab = open_substack_labels(p)
        if not 0 <= idx < len(found):
            raise AiodError(f"{p}: substack {idx} is not in the plan (0..{len(found) - 1})")
        if found[idx] is not None:
            raise AiodError(f"{p}: substack {idx} is given twice")
        sub = plan.substacks[idx]
        if lab.origin is None:  # written without the plan: box-shaped
            if tuple(lab.array.shape) != sub.box_shape:
                raise AiodError(f"{p}: substack {idx} has shape {lab.array.shape}, its box is {sub.box_shape}")
            lab = replace(lab, origin=tuple(a for a, _ in sub.box))
        else:
            written = [lab.attrs.get(k) for k in ("spatial_shape", "grid", "overlap", "box")]
            want = [list(plan.spatial_shape), list(plan.grid), list(plan.overlap), [list(r) for r in sub.box]]
            if written != want:
                raise AiodError(f"{p}: written for another plan (spatial_shape, grid, overlap, box "
                                f"{written}; this plan's are {want})")
        found[idx] = lab
    missing = [i for i, a in enumerate(found) if a is None]
    if missing:
        raise AiodError(f"merge: labels of substacks {missing} are missing")
    return found

