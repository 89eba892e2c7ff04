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
pair (the seam band is cut from it), pass 4 reads every core once more; cores are read and
written one output chunk (SLAB_VOXELS) at a time. Memory is one chunk-sized piece, or one R
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
from aiod.planner import Plan
from aiod.substack_labels import open_all

UINT32_MAX_OBJECTS = int(np.iinfo(np.uint32).max)  # more objects than this -> uint64 ids
# Nodes whose owned voxels come this close across a seam are candidates for a link: 1 is
# plain adjacency; 2 also bridges the one-voxel gap left where one substack's model draws an
# object's boundary a voxel inside and the other's a voxel outside.
SEAM_REACH = 2
SLAB_VOXELS = 1 << 21  # voxels a worker reads, maps and writes at a time (one 128³ chunk)
MALLOC_THRESHOLD = 1 << 25  # malloc's fixed mmap and trim thresholds (see bound_malloc)
PIECE_VOXELS = 1 << 18  # voxels whose label pairs are counted at a time
DENSE_LABELS = 1 << 22  # local labels below this are mapped through a dense table
PAIR_TABLE = 1 << 20  # candidate pairs counted in a dense table up to this many, else sorted
SEEN_TABLE = 1 << 22  # label pairs marked in a dense table up to this many, else sorted


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


def _contains(outer, inner) -> bool:
    return all(a0 <= b0 and b1 <= a1 for (a0, a1), (b0, b1) in zip(outer, inner))


def _crop(labels: np.ndarray, origin, region) -> np.ndarray:
    return labels[_rel(region, origin)]


def _runs(labels: np.ndarray) -> np.ndarray:
    """The values of `labels` (C order) with consecutive repeats dropped: every distinct value
    is there, and label images shrink by their run length."""
    flat = labels.reshape(-1)
    if flat.size < 2:
        return flat
    keep = np.empty(flat.size, dtype=bool)
    keep[0] = True
    np.not_equal(flat[1:], flat[:-1], out=keep[1:])
    return flat[keep]


def _dense(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values of `labels` and 0, sorted; each voxel's index in them)."""
    uniq = np.unique(np.concatenate([_runs(labels), np.zeros(1, dtype=labels.dtype)]))
    top = int(uniq[-1]) if len(uniq) else 0
    if int(uniq[0]) >= 0 and top < DENSE_LABELS and top <= 8 * labels.size:
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[uniq] = np.arange(len(uniq))
        return uniq, lut[labels]
    return uniq, np.searchsorted(uniq, labels)


def _seam_pairs(plan: Plan, arrays, s: int, t: int, r: int, shared=None, held=None) -> np.ndarray:
    """Unique (a, b), sorted: local labels of s and t with core voxels within r voxels of each
    other (chessboard distance) across the seam. Only the cores' parts in the band of r voxels
    along the seam are read; they are cut from `held` (the two substacks' labels on the region
    `shared`) when the band lies inside it. Each offset is compared only where the shifted
    cores meet, on dense ids, and pairs are marked in a table rather than sorted."""
    cs, ct = plan.substacks[s], plan.substacks[t]
    band = tuple(
        (max(0, max(a0, b0) - r), min(n, min(a1, b1) + r))
        for (a0, a1), (b0, b1), n in zip(cs.core, ct.core, plan.spatial_shape)
    )
    inside = held is not None and _contains(shared, band)
    rs, rt = _intersect(cs.core, band), _intersect(ct.core, band)
    if rs is None or rt is None:
        return np.zeros((0, 2), dtype=np.int64)
    ls = _crop(held[0], shared, rs) if inside else _read(arrays[s], cs, rs)
    lt = _crop(held[1], shared, rt) if inside else _read(arrays[t], ct, rt)
    ua, ia = _dense(ls)
    ub, ib = _dense(lt)
    nb = len(ub)
    table = np.zeros(len(ua) * nb, dtype=bool) if len(ua) * nb <= SEEN_TABLE else None
    found = []
    for off in itertools.product(range(-r, r + 1), repeat=len(band)):
        meet = _intersect(rs, tuple((a0 - o, a1 - o) for (a0, a1), o in zip(rt, off)))
        if meet is None:  # includes off == 0: cores are disjoint
            continue
        a = ia[_rel(meet, rs)]
        b = ib[tuple(slice(p0 + o - t0, p1 + o - t0) for (p0, p1), o, (t0, _) in zip(meet, off, rt))]
        key = a * nb + b
        if table is not None:
            table[key.reshape(-1)] = True
        else:
            found.append(np.unique(_runs(key)))
    keys = np.flatnonzero(table) if table is not None else np.unique(np.concatenate([np.zeros(0, np.int64), *found]))
    pa, pb = ua[keys // nb], ub[keys % nb]
    keep = (pa != 0) & (pb != 0)
    return np.stack([pa[keep], pb[keep]], 1).astype(np.int64)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == q] for each q (keys sorted), 0 where q is not a key."""
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], 0)


def _positions(keys: np.ndarray, labels: np.ndarray, top: int | None) -> np.ndarray:
    """1 + the index of each label in `keys` (sorted), 0 where it is not a key. A dense table
    when the labels are small (`top`: their maximum, when known)."""
    if top is not None and 0 <= top < DENSE_LABELS and (not len(keys) or int(keys[0]) >= 0):
        lut = np.zeros(top + 2, dtype=np.int64)  # the last entry catches labels above `top`
        lut[keys[keys <= top]] = np.flatnonzero(keys <= top) + 1
        return np.take(lut, labels, mode="clip")
    pos = np.minimum(np.searchsorted(keys, labels), max(len(keys) - 1, 0))
    return np.where(keys[pos] == labels, pos + 1, 0) if len(keys) else np.zeros(labels.shape, np.int64)


def _link_counts(x: np.ndarray, y: np.ndarray, cand: np.ndarray, tops=(None, None)):
    """|a ∩ R|, |b ∩ R| and |a ∩ b| for each candidate pair (a, b), counted on x and y (the
    two substacks' labels on R). Labels are mapped to dense candidate ids (0: not one), and
    counted by np.bincount, PIECE_VOXELS at a time; no sorting."""
    ca, cb = np.unique(cand[:, 0]), np.unique(cand[:, 1])
    n1 = len(cb) + 1
    n_pairs = (len(ca) + 1) * n1
    size_a = np.zeros(len(ca) + 1, dtype=np.int64)
    size_b = np.zeros(n1, dtype=np.int64)
    inter = np.zeros(n_pairs, dtype=np.int64) if n_pairs <= PAIR_TABLE else None
    parts = []
    x, y = x.reshape(-1), y.reshape(-1)
    for i in range(0, len(x), PIECE_VOXELS):
        xs, ys = x[i : i + PIECE_VOXELS], y[i : i + PIECE_VOXELS]
        # runs of equal (x, y) along the rows: one entry each, weighted by its length
        start = np.empty(len(xs), dtype=bool)
        start[:1] = True
        np.not_equal(xs[1:], xs[:-1], out=start[1:])
        start[1:] |= ys[1:] != ys[:-1]
        first = np.flatnonzero(start)
        length = np.diff(first, append=len(xs))
        ia = _positions(ca, xs[first], tops[0])
        ib = _positions(cb, ys[first], tops[1])
        size_a += np.bincount(ia, weights=length, minlength=len(size_a)).astype(np.int64)
        size_b += np.bincount(ib, weights=length, minlength=n1).astype(np.int64)
        both = (ia != 0) & (ib != 0)
        key, length = ia[both] * n1 + ib[both], length[both]
        if inter is not None:
            inter += np.bincount(key, weights=length, minlength=n_pairs).astype(np.int64)
        else:
            uk, inv = np.unique(key, return_inverse=True)
            parts.append((uk, np.bincount(inv.ravel(), weights=length, minlength=len(uk)).astype(np.int64)))
    qa = np.searchsorted(ca, cand[:, 0]) + 1
    qb = np.searchsorted(cb, cand[:, 1]) + 1
    want = qa * n1 + qb
    if inter is not None:
        both = inter[want]
    else:
        keys = np.concatenate([np.zeros(0, np.int64), *(k for k, _ in parts)])
        counts = np.concatenate([np.zeros(0, np.int64), *(c for _, c in parts)])
        uk, inv = np.unique(keys, return_inverse=True)
        total = np.bincount(inv.ravel(), weights=counts, minlength=len(uk)).astype(np.int64)
        both = _lookup(uk, total, want) if len(uk) else np.zeros(len(want), np.int64)
    return size_a[qa], size_b[qb], both


def _max_label(arr) -> int | None:
    top = arr.attrs.get("max_label") if hasattr(arr, "attrs") else None
    return None if top is None else int(top)


def _read_held(arr, sub, region) -> np.ndarray:
    """Labels of `sub` on `region`, read SLAB_VOXELS at a time (cut at the array's chunk
    boundaries) into one array of the smallest unsigned type that holds `max_label`."""
    top, dtype = _max_label(arr), np.dtype(arr.dtype)
    if top is not None and dtype.kind == "u":
        dtype = np.dtype(np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else dtype)
    held = np.empty(tuple(b - a for a, b in region), dtype=dtype)
    origin = tuple(a for a, _ in sub.box)
    for piece in _pieces(region, getattr(arr, "chunks", None), origin, SLAB_VOXELS):
        held[tuple(slice(p.start - a, p.stop - a) for p, (a, _) in zip(piece, region))] = arr[_in_box(sub, piece)]
    return held


def _candidates_and_links(plan, arrays, s, t, threshold):
    """Candidate node pairs (a, b) of s and t (near each other across the seam), and those
    among them that overlap enough in R = box(s) ∩ box(t) to be linked. R is read once from
    each substack; the seam band is cut from it."""
    shared = _intersect(plan.substacks[s].box, plan.substacks[t].box)
    if shared is None:  # no overlap, nothing to compare: every adjacent pair is linked
        cand = _seam_pairs(plan, arrays, s, t, 1)
        return cand, cand
    held = (_read_held(arrays[s], plan.substacks[s], shared), _read_held(arrays[t], plan.substacks[t], shared))
    cand = _seam_pairs(plan, arrays, s, t, SEAM_REACH, shared, held)
    if not len(cand):
        return cand, cand
    size_a, size_b, inter = _link_counts(*held, cand, (_max_label(arrays[s]), _max_label(arrays[t])))
    del held
    inter = np.where((size_a > 0) & (size_b > 0), inter, 0)
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
        vals = _runs(lab)
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
    if top < DENSE_LABELS:
        lut = np.zeros(top + 1, dtype=ids.dtype)
        lut[node_labels] = ids

    def one(piece):
        lab = np.asarray(arr[_in_box(sub, piece)])
        if lut is not None:
            mapped = lut[lab]  # every label in the core is a node, so <= top (faster than np.take)
        else:
            mapped = np.zeros(lab.shape, dtype=ids.dtype)
            fg = lab != 0
            mapped[fg] = ids[np.searchsorted(node_labels, lab[fg])]
        out[piece] = mapped

    chunks = getattr(out, "chunks", None)
    list(pool.map(one, _pieces(sub.core, chunks, (0,) * len(sub.core), SLAB_VOXELS)))


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
