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
4. **Write.** Each substack's core is mapped local -> global (a dense lookup table when the
   local ids are small) and written in pieces cut at the output's chunk boundaries, by a few
   threads: within a substack no two pieces share an output chunk, and substacks are written
   one after the other, so no chunk ever has two writers at once.

Reads: pass 1 reads every core once, pass 2 reads every shared region R once per neighbour
pair (the seam band is cut from it), pass 4 reads every core once more. Memory is a few
pieces of a core, or two copies of one R, per thread, plus the node table; never the image.
"""

from __future__ import annotations

import itertools
import math
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

from aiod.errors import AiodError
from aiod.metrics import pair_counts
from aiod.planner import Plan

UINT32_MAX_OBJECTS = int(np.iinfo(np.uint32).max)  # more objects than this -> uint64 ids
CHUNK_EDGE = {2: 512, 3: 128}
# Nodes whose owned voxels come this close across a seam are candidates for a link: 1 is
# plain adjacency; 2 also bridges the one-voxel gap left where one substack's model draws an
# object's boundary a voxel inside and the other's a voxel outside.
SEAM_REACH = 2
SLAB_VOXELS = 1 << 22  # voxels a worker reads, maps and writes at a time
PIECE_VOXELS = 1 << 20  # voxels whose label pairs are counted at a time
DENSE_LABELS = 1 << 22  # local labels below this are mapped through a dense table


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


def _contains(outer, inner) -> bool:
    return all(a0 <= b0 and b1 <= a1 for (a0, a1), (b0, b1) in zip(outer, inner))


def _crop(labels: np.ndarray, origin, region) -> np.ndarray:
    return labels[_rel(region, origin)]


def _seam_pairs(plan: Plan, arrays, s: int, t: int, r: int, shared=None, held=None) -> np.ndarray:
    """Unique (a, b): local labels of s and t with core voxels within r voxels of each other
    (chessboard distance) across the seam. The band along the seam is cut from `held` (the
    two substacks' labels on the region `shared`) when it lies inside it, else read."""
    cs, ct = plan.substacks[s], plan.substacks[t]
    band = tuple(
        (max(0, max(a0, b0) - r), min(n, min(a1, b1) + r))
        for (a0, a1), (b0, b1), n in zip(cs.core, ct.core, plan.spatial_shape)
    )
    inside = held is not None and _contains(shared, band)
    shape = tuple(b - a for a, b in band)
    layers = []
    for k, (sub, arr) in enumerate(((cs, arrays[s]), (ct, arrays[t]))):
        lab = np.zeros(shape, dtype=held[k].dtype if inside else arr.dtype)
        own = np.zeros(shape, dtype=bool)
        region = _intersect(sub.core, band)
        if region is not None:
            lab[_rel(region, band)] = _crop(held[k], shared, region) if inside else _read(arr, sub, region)
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
        if keep.any():  # a pair as one number: a * 2**32 + b (labels below 2**32), else rows
            a, b = a[keep].astype(np.uint64), b[keep].astype(np.uint64)
            if max(int(a.max()), int(b.max())) < 1 << 32:
                found.append(np.unique((a << np.uint64(32)) | b))
            else:
                found.append(np.unique(np.stack([a, b], 1), axis=0))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    flat = [np.stack([f >> np.uint64(32), f & np.uint64(0xFFFFFFFF)], 1) if f.ndim == 1 else f for f in found]
    return np.unique(np.concatenate(flat), axis=0).astype(np.int64)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == q] for each q (keys sorted), 0 where q is not a key."""
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], 0)


def _overlap_counts(x: np.ndarray, y: np.ndarray):
    """(x labels, y labels, voxel counts) of the label pairs of two equal-shape arrays, sorted
    by (x, y); counted PIECE_VOXELS at a time so the int64 temporaries stay small."""
    x, y = x.reshape(-1), y.reshape(-1)
    parts = []
    for i in range(0, len(x), PIECE_VOXELS):
        xs, ys = x[i : i + PIECE_VOXELS].astype(np.uint64), y[i : i + PIECE_VOXELS].astype(np.uint64)
        if len(xs) and max(int(xs.max()), int(ys.max())) < 1 << 32:
            k, c = np.unique((xs << np.uint64(32)) | ys, return_counts=True)
            pa, pb = k >> np.uint64(32), k & np.uint64(0xFFFFFFFF)
        else:
            pa, pb, c = pair_counts(xs.astype(np.int64), ys.astype(np.int64))
        parts.append(np.stack([pa.astype(np.int64), pb.astype(np.int64), c.astype(np.int64)], 1))
    table = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    keys, inv = np.unique(table[:, :2], axis=0, return_inverse=True)
    counts = np.bincount(inv.ravel(), weights=table[:, 2], minlength=len(keys)).astype(np.int64)
    return keys[:, 0], keys[:, 1], counts


def _candidates_and_links(plan, arrays, s, t, threshold):
    """Candidate node pairs (a, b) of s and t (near each other across the seam), and those
    among them that overlap enough in R = box(s) ∩ box(t) to be linked. R is read once from
    each substack; the seam band is cut from it."""
    shared = _intersect(plan.substacks[s].box, plan.substacks[t].box)
    if shared is None:  # no overlap, nothing to compare: every adjacent pair is linked
        cand = _seam_pairs(plan, arrays, s, t, 1)
        return cand, cand
    held = (_read(arrays[s], plan.substacks[s], shared), _read(arrays[t], plan.substacks[t], shared))
    cand = _seam_pairs(plan, arrays, s, t, SEAM_REACH, shared, held)
    if not len(cand):
        return cand, cand
    pa, pb, cxy = _overlap_counts(*held)
    del held
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


def _pieces(core, chunks, origin, limit: int) -> list[tuple[slice, ...]]:
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


def _in_box(sub, piece: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(r.start - b0, r.stop - b0) for r, (b0, _) in zip(piece, sub.box))


def _core_labels(sub, arr) -> np.ndarray:
    """Sorted nonzero labels in the substack's core, read a piece at a time."""
    top = arr.attrs.get("max_label")
    seen = np.zeros(int(top) + 1, dtype=bool) if top is not None and int(top) < DENSE_LABELS else None
    found = [np.zeros(0, dtype=np.int64)]
    origin = tuple(a for a, _ in sub.box)
    for piece in _pieces(sub.core, getattr(arr, "chunks", None), origin, SLAB_VOXELS):
        lab = np.asarray(arr[_in_box(sub, piece)])
        if seen is not None and lab.size and int(lab.max()) < len(seen):
            seen[lab.ravel()] = True
        else:
            found.append(np.unique(lab).astype(np.int64))
    if seen is not None:
        found.append(np.flatnonzero(seen))
    labs = np.unique(np.concatenate(found))
    return labs[labs != 0]


def _write_core(sub, arr, node_labels, ids, out, pool) -> None:
    """Map one substack's core local -> global and write it in pieces, in parallel; pieces
    are cut at the output's chunk boundaries, so no two write the same chunk."""
    top = int(node_labels[-1]) if len(node_labels) else 0
    lut = None
    if top < DENSE_LABELS:
        lut = np.zeros(top + 1, dtype=ids.dtype)
        lut[node_labels] = ids

    def one(piece):
        lab = np.asarray(arr[_in_box(sub, piece)])
        if lut is not None:
            mapped = np.take(lut, lab)  # every label in the core is a node, so <= top
        else:
            mapped = np.zeros(lab.shape, dtype=ids.dtype)
            fg = lab != 0
            mapped[fg] = ids[np.searchsorted(node_labels, lab[fg])]
        out[piece] = mapped

    chunks = getattr(out, "chunks", None)
    list(pool.map(one, _pieces(sub.core, chunks, (0,) * len(sub.core), SLAB_VOXELS)))


def merge_substacks(
    plan: Plan,
    substack_paths: Sequence,
    create_output: Callable[[np.dtype], Any],
    *,
    link_threshold: float = 0.5,
    workers: int | None = None,
) -> MergeStats:
    """Merge the substacks' labels into `create_output(dtype)` (shape `plan.spatial_shape`).

    `workers` threads (default: the CPU count, at most 4) read, link and write in parallel;
    each holds at most one slab or one shared region at a time."""
    if not 0.0 <= link_threshold <= 1.0:
        raise AiodError(f"merge: link_threshold {link_threshold} must be between 0 and 1")
    arrays = _open_all(plan, [Path(p) for p in substack_paths])
    subs = plan.substacks
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        # 1. nodes: local labels owning core voxels, in (substack, label) order
        nodes = list(pool.map(_core_labels, subs, arrays))
        offsets = np.concatenate([[0], np.cumsum([len(n) for n in nodes])]).astype(np.int64)
        n_nodes = int(offsets[-1])

        # 2. links across every seam between touching cores
        pairs = [(s, t) for s in range(len(subs)) for t in plan.neighbours(s) if t > s]
        found = pool.map(lambda st: _candidates_and_links(plan, arrays, *st, link_threshold), pairs)
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
