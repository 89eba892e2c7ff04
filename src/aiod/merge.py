"""Seam-free merge of per-substack labels into one image of globally unique object ids.

Each substack was segmented on its box (core + halo); its labels have the box's shape, any
integer dtype, 0 = background, local ids arbitrary. The merge:

1. **Ownership.** Every output voxel takes its label from the substack whose *core* holds it
   (the one that saw it with the most context). A *node* is (substack, local label) for every
   local label with at least one voxel in its own core.
2. **Links.** For every pair of substacks s, t whose cores touch (face, edge or corner), the
   candidates are the node pairs (s, a), (t, b) whose core voxels come within `SEAM_REACH`
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
4. **Write.** Each substack's core is mapped local -> global and written to the output, one
   substack at a time.

Memory is one substack box (plus a band along a seam) and the node table, never the image.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from aiod.errors import AiodError
from aiod.metrics import pair_counts
from aiod.planner import Plan

UINT32_MAX_OBJECTS = int(np.iinfo(np.uint32).max)  # more objects than this -> uint64 ids
CHUNK_EDGE = {2: 512, 3: 128}
# Nodes whose owned voxels come this close across a seam are candidates for a link: 1 is
# plain adjacency; 2 also bridges the one-voxel gap left where one substack's model draws an
# object's boundary a voxel inside and the other's a voxel outside.
SEAM_REACH = 2


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


def _intersect(r1, r2):
    out = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(r1, r2))
    return None if any(a >= b for a, b in out) else out


def _rel(region, origin) -> tuple[slice, ...]:
    return tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(region, origin))


def _read(arr, sub, region) -> np.ndarray:
    """Labels of `sub` on `region` (image coordinates, inside its box)."""
    return np.asarray(arr[_rel(region, sub.box)])


def _open_all(plan: Plan, paths: Sequence) -> list:
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


def _seam_pairs(plan: Plan, arrays, s: int, t: int, r: int) -> np.ndarray:
    """Unique (a, b): local labels of s and t with core voxels within r voxels of each other
    (chessboard distance) across the seam."""
    cs, ct = plan.substacks[s], plan.substacks[t]
    band = tuple(
        (max(0, max(a0, b0) - r), min(n, min(a1, b1) + r))
        for (a0, a1), (b0, b1), n in zip(cs.core, ct.core, plan.spatial_shape)
    )
    shape = tuple(b - a for a, b in band)
    layers = []
    for sub, arr in ((cs, arrays[s]), (ct, arrays[t])):
        lab = np.zeros(shape, dtype=arr.dtype)
        own = np.zeros(shape, dtype=bool)
        region = _intersect(sub.core, band)
        if region is not None:
            lab[_rel(region, band)] = _read(arr, sub, region)
            own[_rel(region, band)] = True
        layers.append((lab, own))
    (ls, ms), (lt, mt) = layers
    found = []
    for off in itertools.product(range(-r, r + 1), repeat=len(shape)):
        if not any(off):
            continue
        src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(off, shape))
        dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(off, shape))
        a, b = ls[src], lt[dst]
        keep = ms[src] & mt[dst] & (a != 0) & (b != 0)
        if keep.any():
            found.append(np.stack([a[keep].astype(np.int64), b[keep].astype(np.int64)], 1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found), axis=0)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == q] for each q (keys sorted), 0 where q is not a key."""
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], 0)


def _candidates_and_links(plan, arrays, s, t, threshold):
    """Candidate node pairs (a, b) of s and t (near each other across the seam), and those
    among them that overlap enough in R = box(s) ∩ box(t) to be linked."""
    shared = _intersect(plan.substacks[s].box, plan.substacks[t].box)
    if shared is None:  # no overlap, nothing to compare: every adjacent pair is linked
        cand = _seam_pairs(plan, arrays, s, t, 1)
        return cand, cand
    cand = _seam_pairs(plan, arrays, s, t, SEAM_REACH)
    if not len(cand):
        return cand, cand
    x = _read(arrays[s], plan.substacks[s], shared).ravel().astype(np.int64)
    y = _read(arrays[t], plan.substacks[t], shared).ravel().astype(np.int64)
    pa, pb, cxy = pair_counts(x, y)
    ua, ia = np.unique(pa, return_inverse=True)
    ub, ib = np.unique(pb, return_inverse=True)
    size_a = _lookup(ua, np.bincount(ia.ravel(), weights=cxy), cand[:, 0])
    size_b = _lookup(ub, np.bincount(ib.ravel(), weights=cxy), cand[:, 1])
    # (pa, pb) come sorted, so their ranks in (ua, ub) give sorted keys
    keys = ia.ravel().astype(np.int64) * len(ub) + np.searchsorted(ub, pb)
    want = np.searchsorted(ua, cand[:, 0]).astype(np.int64) * len(ub) + np.searchsorted(ub, cand[:, 1])
    inter = np.where((size_a > 0) & (size_b > 0), _lookup(keys, cxy, want), 0)
    ok = (inter > 0) & (inter >= threshold * np.minimum(size_a, size_b))
    return cand, cand[ok]


def merge_substacks(
    plan: Plan,
    substack_paths: Sequence,
    create_output: Callable[[np.dtype], Any],
    *,
    link_threshold: float = 0.5,
) -> MergeStats:
    """Merge the substacks' labels into `create_output(dtype)` (shape `plan.spatial_shape`)."""
    if not 0.0 <= link_threshold <= 1.0:
        raise AiodError(f"merge: link_threshold {link_threshold} must be between 0 and 1")
    arrays = _open_all(plan, [Path(p) for p in substack_paths])
    subs = plan.substacks

    # 1. nodes: local labels owning core voxels, in (substack, label) order
    nodes = []
    for sub, arr in zip(subs, arrays):
        labs = np.unique(np.asarray(arr[sub.core_in_box]))
        nodes.append(labs[labs != 0])
    offsets = np.concatenate([[0], np.cumsum([len(n) for n in nodes])]).astype(np.int64)
    n_nodes = int(offsets[-1])

    # 2. links across every seam between touching cores
    edges, n_cand = [], 0
    for s in range(len(subs)):
        for t in plan.neighbours(s):
            if t < s:
                continue
            cand, linked = _candidates_and_links(plan, arrays, s, t, link_threshold)
            n_cand += len(cand)
            ga = offsets[s] + np.searchsorted(nodes[s], linked[:, 0].astype(nodes[s].dtype))
            gb = offsets[t] + np.searchsorted(nodes[t], linked[:, 1].astype(nodes[t].dtype))
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

    # 4. write every core, one substack at a time
    out = create_output(dtype)
    for k, (sub, arr) in enumerate(zip(subs, arrays)):
        core = np.asarray(arr[sub.core_in_box])
        mapped = np.zeros(core.shape, dtype=dtype)
        fg = core != 0
        if fg.any():
            mapped[fg] = global_id[offsets[k] + np.searchsorted(nodes[k], core[fg])]
        out[sub.core_slices] = mapped
    return MergeStats(
        n_objects=int(n_objects),
        dtype=dtype.name,
        n_links=int(len(edges_arr)),
        n_substacks=len(subs),
        n_nodes=n_nodes,
        n_candidates=int(n_cand),
    )
