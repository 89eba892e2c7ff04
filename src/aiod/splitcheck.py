"""Split against whole: one adapter run on a whole image and on its substacks, merged as the
pipeline merges them, in one process (for the family tests and bench/split_vs_whole.py).

    run = split_and_whole(adapter, model, image, params, prepared, grid, workdir, align=None)
    run.whole, run.split          uint32 labels of the whole image (one box) and of the merge
    run.plan                      the substack plan (boxes on the adapter's stride unless `align`)
    run.whole_seconds, run.split_seconds
    check(adapter, model, image, params, prepared, grid, workdir, ...) -> dict
                                  the same, compared: F1 and "same objects" of the aligned split
                                  (and with `unaligned`, of box starts on any pixel; with
                                  `peer`, of StarDist's own predict_instances_big) against whole

The split run goes through the pipeline's own pieces: the planner (halo at least the adapter's
min_halo, box starts on its `align`), one `segment()` per box, the label files SEGMENT writes and
the merge. The labels are held in memory: this is a check for images of test and benchmark size,
not a step of the pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import merge, planner, substack_labels
from .metrics import match_labels
from .models import halo_floor


@dataclass
class SplitRun:
    whole: np.ndarray
    split: np.ndarray
    plan: planner.Plan
    whole_seconds: float
    split_seconds: float


def split_and_whole(adapter, model, image, params, prepared, grid, workdir: Path, *, artifact=None,
                    config: dict | None = None, overlap: int = 0, align=None, segment=None) -> SplitRun:
    """`image` is an open aiod.imageio image; `align` None takes the adapter's own, `segment`
    None the adapter's."""
    segment = segment or adapter.segment
    config = config or {}
    ndim = len(image.spatial_shape)
    spacing = image.scale or (1.0,) * ndim
    halo = tuple(max(int(overlap), f) for f in halo_floor(adapter, artifact, config, params, image.spatial_axes))
    if align is None:
        align = adapter.align(artifact, config, params)
    the_plan = planner.plan_substacks(image.spatial_shape, image.spatial_axes, tuple(grid), halo,
                                      bytes_per_voxel=1, memory_budget=None, align=align)
    started = time.time()
    whole, _ = segment(model, image.read(tuple(slice(0, n) for n in image.spatial_shape)), params, prepared, spacing)
    whole_seconds = time.time() - started
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    started = time.time()
    for sub in the_plan.substacks:
        labels, _ = segment(model, image.read(sub.box_slices), params, prepared, spacing,
                            origin=tuple(a for a, _ in sub.box))
        paths.append(workdir / f"substack_{sub.index}.zarr")
        substack_labels.write_substack_labels(paths[-1], labels, sub.index, plan=the_plan)
    holder = {}

    def create(dtype):
        holder["out"] = np.zeros(image.spatial_shape, dtype=dtype)
        return holder["out"]

    merge.merge_substacks(the_plan, paths, create)
    split_seconds = time.time() - started
    return SplitRun(np.asarray(whole, np.uint32), holder["out"].astype(np.uint32), the_plan, whole_seconds,
                    split_seconds)


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """The same objects up to their ids: each label of one is exactly one label of the other,
    background to background (no object split, fused, grown or shrunk)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return bool(np.array_equal(a != 0, b != 0) and pairs.shape[1] == len(np.unique(a)) == len(np.unique(b)))


def compare(whole: np.ndarray, other: np.ndarray) -> dict:
    return {"f1": match_labels(whole, other, 0.5).f1, "same": same_objects(whole, other),
            "objects": int(len(np.unique(other)) - 1)}


def check(adapter, model, image, params, prepared, grid, workdir: Path, *, artifact=None, config=None,
          unaligned: bool = False, peer: bool = False, library: bool = False) -> dict:
    """Whole against split (and the variants asked for), as one JSON-able record. `library`:
    also the adapter's `segment_library` (the library's own evaluation of each box, as before its
    evaluation was anchored to the image), split against its own whole, and its whole against
    the adapter's."""
    common = dict(artifact=artifact, config=config)
    aligned = split_and_whole(adapter, model, image, params, prepared, grid, Path(workdir) / "aligned", **common)
    out = {"align": list(aligned.plan.align), "halo": list(aligned.plan.overlap),
           "starts": [[a for a, _ in s.box] for s in aligned.plan.substacks],
           "whole_objects": int(len(np.unique(aligned.whole)) - 1), "aligned": compare(aligned.whole, aligned.split),
           "seconds": {"whole": aligned.whole_seconds, "split": aligned.split_seconds}}
    if unaligned:
        loose = split_and_whole(adapter, model, image, params, prepared, grid, Path(workdir) / "unaligned", align=1,
                                **common)
        out["unaligned"] = compare(aligned.whole, loose.split)
        out["unaligned_starts"] = [[a for a, _ in s.box] for s in loose.plan.substacks]
    if library:
        own = split_and_whole(adapter, model, image, params, prepared, grid, Path(workdir) / "library",
                              segment=adapter.segment_library, **common)
        out["library"] = compare(own.whole, own.split)
        out["library_whole"] = compare(aligned.whole, own.whole)
        out["seconds"].update(library_whole=own.whole_seconds, library_split=own.split_seconds)
    if peer:
        started = time.time()
        out["peer"] = compare(aligned.whole, stardist_big(model, image, prepared, params, grid))
        out["seconds"]["peer"] = time.time() - started
    return out


def stardist_big(model, image, prepared, params, grid) -> np.ndarray:
    """StarDist's own big-image prediction (`predict_instances_big`) on the normalised image, in
    blocks of about the substacks' size: context its receptive field, overlap 64 px (larger than
    nuclei), both on its stride. It needs every block at least overlap + 2 x context + one stride."""
    from .models import runtime

    x = runtime.normalise(image.read(tuple(slice(0, n) for n in image.spatial_shape)), prepared)
    axes = "ZYX"[-x.ndim:]
    div = model._axes_div_by(axes)

    def up(v, d):
        return int(np.ceil(v / d)) * d

    context = [up(c, d) for c, d in zip(model._axes_tile_overlap(axes), div)]
    overlap = [up(min(64, n // 4), d) for n, d in zip(x.shape, div)]
    block = [up(max(n / g, o + 2 * c + d), d) for n, g, o, c, d in zip(x.shape, grid, overlap, context, div)]
    labels, _ = model.predict_instances_big(x, axes=axes, block_size=block, min_overlap=overlap, context=context,
                                            labels_out_dtype=np.uint32, show_progress=False, normalizer=None,
                                            prob_thresh=params.prob_thresh, nms_thresh=params.nms_thresh)
    return np.asarray(labels, np.uint32)
