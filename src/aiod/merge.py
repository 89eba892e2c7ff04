"""Seam-free merge of per-substack labels into one image of globally unique object ids.

Each substack was segmented on its box (core + halo); its labels have the box's shape, any
integer dtype, 0 = background, local ids arbitrary. The merge:

1. **Ownership.** Every output voxel takes its label from the substack whose *core* holds it
   (the one that saw it with the most context). A *node* is (substack, local label) for every
   local label with at least one voxel in its own core.
2. **Links** (seams.py). For every pair of substacks s, t whose cores touch (face, edge or corner), the
   candidates are the node pairs (s, a), (t, b) whose core voxels come within `seams.SEAM_REACH`
   (2) voxels of each other across the seam (chessboard distance: adjacency, plus the
   one-voxel gap that a boundary drawn a voxel in by one model and a voxel out by the other
   leaves). It is enough to read a band of 2 * SEAM_REACH voxels along the seam. A candidate
   is linked when, in the shared region R = box(s) ∩ box(t) that both substacks labelled,
   |a ∩ b| >= link_threshold * min(|a ∩ R|, |b ∩ R|) and |a ∩ b| > 0, counted on the two
   label arrays cropped to R. An object crossing a seam is seen by both and overlaps itself; touching
   objects share only a thin boundary. Chains of links join objects longer than the halo and
   non-convex objects that one substack sees as two pieces. (With zero overlap R is empty:
   then the candidates are the pairs adjacent across the seam, and all of them are linked.)
3. **Ids.** Connected components of the link graph get ids 1..n in the order of their
   smallest (substack index, local label); uint32, or uint64 beyond 2**32 - 1 objects.
4. **Write.** Each substack's core is mapped local -> global (a dense lookup table when the
   local ids are small) and written in pieces cut at the output's chunk boundaries, by a few
   threads: within a substack no two pieces share an output chunk, and substacks are written
   one after the other, so no chunk ever has two writers at once.

Reads: pass 1 reads every core once, pass 2 reads every shared region R once per neighbour
pair (the seam band is cut from it), pass 4 reads every core once more; cores are read and
written one output chunk (`SLAB_VOXELS`) at a time. Memory is one chunk-sized piece, or one R
per thread (held in the smallest unsigned type that holds the substack's labels), plus the
node table; never the image.

Cost, without changing the result: seam candidates compare each offset only where the two
shifted cores meet, on dense ids, and mark pairs in a table instead of sorting them; the
overlap counts in R map labels to dense candidate ids, collapse runs of equal label pairs
along rows, and count with np.bincount instead of sorting; glibc's malloc is kept from
hoarding freed slabs (`bound_malloc`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
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

from aiod import seams, substack_labels
from aiod.errors import AiodError
from aiod.planner import Plan
from aiod.substack_labels import in_box, max_label, open_all, pieces, runs

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


def _core_labels(sub, arr) -> np.ndarray:
    """Sorted nonzero labels in the substack's core, read a piece at a time."""
    top = max_label(arr)
    seen = np.zeros(top + 1, dtype=bool) if top is not None and top < substack_labels.DENSE_LABELS else None
    found = [np.zeros(0, dtype=np.int64)]
    origin = tuple(a for a, _ in sub.box)
    for piece in pieces(sub.core, getattr(arr, "chunks", None), origin, substack_labels.SLAB_VOXELS):
        lab = np.asarray(arr[in_box(sub, piece)])
        vals = runs(lab)
        if seen is not None and vals.size and int(vals.max()) < len(seen) and int(vals.min()) >= 0:
            seen[vals] = True
        else:
            found.append(np.unique(vals).astype(np.int64))
    if seen is not None:
        found.append(np.flatnonzero(seen))
    labs = np.unique(np.concatenate(found))
    return labs[labs != 0]


def _write_core(sub, arr, node_labels, ids, out, pool) -> None:
    """Map one substack's core local -> global and write it in pieces, in parallel; pieces
    are cut at the output's chunk boundaries, so no two write the same chunk."""
    top = int(node_labels[-1]) if len(node_labels) else 0
    lut = None
    if top < substack_labels.DENSE_LABELS:
        lut = np.zeros(top + 1, dtype=ids.dtype)
        lut[node_labels] = ids

    def one(piece):
        lab = np.asarray(arr[in_box(sub, piece)])
        if lut is not None:
            mapped = lut[lab]  # every label in the core is a node, so <= top (faster than np.take)
        else:
            mapped = np.zeros(lab.shape, dtype=ids.dtype)
            fg = lab != 0
            mapped[fg] = ids[np.searchsorted(node_labels, lab[fg])]
        out[piece] = mapped

    chunks = getattr(out, "chunks", None)
    list(pool.map(one, pieces(sub.core, chunks, (0,) * len(sub.core), substack_labels.SLAB_VOXELS)))


def bound_malloc() -> None:
    """Keep glibc's malloc from hoarding freed slabs. By default it gives every thread (ours
    and zarr's decoding threads) an arena of its own and raises its mmap threshold to the
    largest block freed so far; the slabs and decoded chunks that come and go then pile up in
    several arenas and resident memory grows to twice or more what is live. One arena, with
    fixed mmap and trim thresholds of MALLOC_THRESHOLD (above one slab, so slabs are reused
    rather than faulted in afresh each time; a lower trim threshold doubles the merge's wall
    time), keeps it near what is live. Process-wide and lasting, so merge_substacks does not
    call it: the pipeline's merge step (steps.merge_result), a process of its own, does. A
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
) -> MergeStats:
    """Merge the substacks' labels into `create_output(dtype)` (shape `plan.spatial_shape`).

    `workers` threads (default: the CPU count, at most 2) read, link and write in parallel;
    each holds at most one slab, or one shared region (in the smallest unsigned type that
    holds the substack's labels), at a time."""
    if not 0.0 <= link_threshold <= 1.0:
        raise AiodError(f"merge: link_threshold {link_threshold} must be between 0 and 1")
    arrays = open_all(plan, [Path(p) for p in substack_paths])
    subs = plan.substacks
    workers = workers or min(2, os.cpu_count() or 1)
    # zarr decodes and encodes one chunk at a time per call; the workers are the parallelism
    with zarr.config.set({"async.concurrency": 1}), ThreadPoolExecutor(workers) as pool:
        # 1. nodes: local labels owning core voxels, in (substack, label) order
        nodes = list(pool.map(_core_labels, subs, arrays))
        offsets = np.concatenate([[0], np.cumsum([len(n) for n in nodes])]).astype(np.int64)
        n_nodes = int(offsets[-1])

        # 2. links across every seam between touching cores
        pairs = [(s, t) for s in range(len(subs)) for t in plan.neighbours(s) if t > s]
        found = pool.map(lambda st: seams.candidates_and_links(plan, arrays, *st, link_threshold), pairs)
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

        # 4. write every core, one substack at a time (chunks on a core's rim are shared with
        # the next substack, so substacks never write at the same time)
        out = create_output(dtype)
        for k, (sub, arr) in enumerate(zip(subs, arrays)):
            _write_core(sub, arr, nodes[k], global_id[offsets[k] : offsets[k + 1]], out, pool)
    return MergeStats(
        n_objects=int(n_objects),
        dtype=dtype.name,
        n_links=int(len(edges_arr)),
        n_substacks=len(subs),
        n_nodes=n_nodes,
        n_candidates=int(n_cand),
    )
