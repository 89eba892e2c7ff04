"""Seam-free merge of per-substack labels into one image of globally unique object ids.

Each substack was segmented on its box (core + halo); its label file (substack_labels.py)
holds those labels renumbered 1..n in the order of the model's ids, 0 = background. The merge:

1. **Ownership.** Every output voxel takes its label from the substack whose *core* holds it
   (the one that saw it with the most context). A *node* is (substack, local label) for every
   local label with at least one voxel in its own core: labels 1..m, as the file records.
2. **Links** (seams.py). For every pair of substacks s, t whose cores touch (face, edge or
   corner), the candidates are the node pairs (s, a), (t, b) whose core voxels come within
   `seams.SEAM_REACH` (2) voxels of each other across the seam (chessboard distance:
   adjacency, plus the one-voxel gap that a boundary drawn a voxel in by one model and a voxel
   out by the other leaves). It is enough to read a band of 2 * SEAM_REACH voxels along the
   seam. A candidate is linked when, in the shared region R = box(s) ∩ box(t) that both
   substacks labelled, |a ∩ b| >= link_threshold * min(|a ∩ R|, |b ∩ R|) and |a ∩ b| > 0,
   counted on the two label arrays cropped to R. An object crossing a seam is seen by both and
   overlaps itself; touching objects share only a thin boundary. Chains of links join objects
   longer than the halo and non-convex objects that one substack sees as two pieces. (With
   zero overlap R is empty: then the candidates are the pairs adjacent across the seam, and
   all of them are linked.)
3. **Ids.** Connected components of the link graph get ids 1..n in the order of their
   smallest (substack index, local label); uint32, or uint64 beyond 2**32 - 1 objects.
   Renumbering the local ids in their order (as the label files do) changes none of this.
4. **Write.** Every output chunk is written once, by a few threads in parallel: its voxels
   come from the cores that hold them, each mapped local -> global through a lookup table.

Reads: every shared region R once from each side (the copy the label file keeps; the seam
band is cut from it), then every core once, one output chunk at a time (the files' chunks lie
on the image's grid, so a chunk of output reads whole chunks of labels). Memory is one
chunk-sized piece, or one R, per thread, plus the node table; never the image.

Cost, without changing the result: seam candidates compare each offset only where the two
shifted cores meet, thinnest axis first, and mark pairs in a table instead of sorting them;
the overlap counts in R collapse runs of equal label pairs along rows and count them into
the candidates' slots with np.bincount; glibc's malloc is kept from hoarding freed slabs
(`bound_malloc`).
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from aiod import seams
from aiod.boxes import SLAB_VOXELS, intersect, pieces, rel, shape_of
from aiod.errors import AiodError
from aiod.planner import Plan
from aiod.substack_labels import SubstackLabels, open_all, runs

UINT32_MAX_OBJECTS = int(np.iinfo(np.uint32).max)  # more objects than this -> uint64 ids
MALLOC_THRESHOLD = 1 << 25  # malloc's fixed mmap and trim thresholds (see bound_malloc)


@dataclass
class MergeStats:
    n_objects: int  # objects in the output
    dtype: str  # output dtype
    n_links: int  # node pairs joined across seams
    n_substacks: int
    n_nodes: int  # (substack, local label) pairs owning core voxels
    n_candidates: int  # node pairs tested for a link (adjacent across a seam or overlapping)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def label_dtype(n_objects: int) -> np.dtype:
    return np.dtype(np.uint32 if n_objects <= UINT32_MAX_OBJECTS else np.uint64)


def _nodes(sub, lab: SubstackLabels) -> np.ndarray:
    """Sorted labels owning core voxels: 1..m when the file says so, else found by reading the
    core a piece at a time."""
    if lab.core_labels is not None:
        return np.arange(1, lab.core_labels + 1, dtype=np.int64)
    seen = np.zeros(lab.max_label + 1, dtype=bool)
    for piece in pieces(sub.core, lab.array.chunks, lab.origin, SLAB_VOXELS):
        seen[runs(lab.read(tuple((p.start, p.stop) for p in piece)))] = True
    seen[0] = False
    return np.flatnonzero(seen)


def _owners(plan: Plan):
    """(region -> indices of the substacks whose cores meet it): the cores form a grid."""
    starts = [sorted({s.core[k][0] for s in plan.substacks}) for k in range(len(plan.grid))]

    def owners(region) -> list[int]:
        spans = [range(bisect.bisect_right(st, a) - 1, bisect.bisect_left(st, b)) for st, (a, b) in zip(starts, region)]
        return [int(np.ravel_multi_index(pos, plan.grid)) for pos in itertools.product(*spans)]

    return owners


def _write(plan: Plan, labels: list[SubstackLabels], luts: list[np.ndarray], out, dtype, pool, on_block=None) -> None:
    """Write every output chunk once, in parallel: its voxels from the cores that hold them,
    mapped local -> global; then `on_block(block, piece)` (from the same worker thread)."""
    owners = _owners(plan)

    def one(piece):
        region = tuple((p.start, p.stop) for p in piece)
        parts = [(k, intersect(plan.substacks[k].core, region)) for k in owners(region)]
        if len(parts) == 1:  # np.take: faster than luts[k][...] on small integer labels
            block = np.take(luts[parts[0][0]], labels[parts[0][0]].read(region))
        else:
            block = np.empty(shape_of(region), dtype=dtype)
            for k, part in parts:
                block[rel(part, region)] = np.take(luts[k], labels[k].read(part))
        out[piece] = block
        if on_block is not None:
            on_block(block, piece)

    whole = tuple((0, n) for n in plan.spatial_shape)
    chunks = getattr(out, "chunks", None)
    list(pool.map(one, pieces(whole, chunks, (0,) * len(whole), SLAB_VOXELS)))


def bound_malloc() -> None:
    """Keep glibc's malloc from hoarding freed slabs. By default it gives every thread (ours
    and zarr's decoding threads) an arena of its own and raises its mmap threshold to the
    largest block freed so far; the slabs and decoded chunks that come and go then pile up in
    several arenas and resident memory grows to twice or more what is live. One arena, with
    fixed mmap and trim thresholds of MALLOC_THRESHOLD (above one slab, so slabs are reused
    rather than faulted in afresh each time; a lower trim threshold doubles the merge's wall
    time), keeps it near what is live. Process-wide and lasting, so merge_substacks does not
    call it: the pipeline's merge step (steps.merge.merge_result), a process of its own, does. A
    no-op without glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(ctypes.c_int(-8), ctypes.c_int(1))  # M_ARENA_MAX: one arena for all threads
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(MALLOC_THRESHOLD))  # M_MMAP_THRESHOLD
        libc.mallopt(ctypes.c_int(-1), ctypes.c_int(MALLOC_THRESHOLD))  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def merge_substacks(
    plan: Plan,
    substack_paths: Sequence,
    create_output: Callable[[np.dtype], Any],
    *,
    link_threshold: float = 0.5,
    workers: int | None = None,
    on_block: Callable | None = None,
) -> MergeStats:
    """Merge the substacks' labels into `create_output(dtype)` (shape `plan.spatial_shape`).

    `workers` threads (default: the CPU count, at most 2) read, link and write in parallel;
    each holds at most one slab, or one shared region (in the smallest unsigned type that
    holds the substack's labels), at a time. `on_block(block, piece)` sees every output block
    once, as written (the object table is made from it: steps/merge.py)."""
    if not 0.0 <= link_threshold <= 1.0:
        raise AiodError(f"merge: link_threshold {link_threshold} must be between 0 and 1")
    labels = open_all(plan, [Path(p) for p in substack_paths])
    subs = plan.substacks
    workers = workers or min(2, os.cpu_count() or 1)
    # zarr decodes and encodes one chunk at a time per call; the workers are the parallelism
    with zarr.config.set({"async.concurrency": 1}), ThreadPoolExecutor(workers) as pool:
        # 1. nodes: local labels owning core voxels, in (substack, label) order
        nodes = list(pool.map(_nodes, subs, labels))
        offsets = np.concatenate([[0], np.cumsum([len(n) for n in nodes])]).astype(np.int64)
        n_nodes = int(offsets[-1])

        # 2. links across every seam between touching cores
        pairs = [(s, t) for s in range(len(subs)) for t in plan.neighbours(s) if t > s]
        found = pool.map(lambda st: seams.candidates_and_links(plan, labels, *st, link_threshold), pairs)
        edges, n_cand = [], 0
        for (s, t), (cand, linked) in zip(pairs, found):
            n_cand += len(cand)
            ga = offsets[s] + np.searchsorted(nodes[s], linked[:, 0])
            gb = offsets[t] + np.searchsorted(nodes[t], linked[:, 1])
            edges.append(np.stack([ga, gb], 1))
        edges_arr = np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int64)

        # 3. global ids: components numbered by their smallest node (substack, local label)
        graph = coo_matrix(
            (np.ones(len(edges_arr), dtype=np.int8), (edges_arr[:, 0], edges_arr[:, 1])),
            shape=(n_nodes, n_nodes),
        )
        n_objects, comp = connected_components(graph, directed=False)
        if n_nodes == 0:
            n_objects = 0
        _, first = np.unique(comp, return_index=True)
        rank = np.empty(n_objects, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(n_objects)
        dtype = label_dtype(n_objects)
        global_id = (rank[comp] + 1).astype(dtype)
        luts = []  # local label -> global id, per substack (0 for labels seen only in the halo)
        for k, lab in enumerate(labels):
            lut = np.zeros((int(nodes[k][-1]) if len(nodes[k]) else 0) + 1, dtype=dtype)
            lut[nodes[k]] = global_id[offsets[k] : offsets[k + 1]]
            luts.append(lut)

        # 4. write every output chunk once
        _write(plan, labels, luts, create_output(dtype), dtype, pool, on_block)
    return MergeStats(
        n_objects=int(n_objects),
        dtype=dtype.name,
        n_links=int(len(edges_arr)),
        n_substacks=len(subs),
        n_nodes=n_nodes,
        n_candidates=int(n_cand),
    )
