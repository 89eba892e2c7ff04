"""Links across seams: which objects of two neighbouring substacks are one object.

Step 2 of the merge (see merge.py). For two substacks s, t whose cores touch, the candidates
are the node pairs (s, a), (t, b) whose core voxels come within SEAM_REACH voxels of each
other across the seam; a candidate is linked when |a ∩ b| >= threshold * min(|a ∩ R|, |b ∩ R|)
and |a ∩ b| > 0 in the shared region R = box(s) ∩ box(t). R is read once from each substack,
in the smallest unsigned type that holds its labels, and the seam band is cut from it; offsets
are compared only where the two shifted cores meet, and pairs are counted with dense ids and
np.bincount rather than sorting.
"""

from __future__ import annotations

import itertools

import numpy as np

from aiod import substack_labels
from aiod.planner import Plan
from aiod.substack_labels import in_box, max_label, pieces, runs

# Nodes whose owned voxels come this close across a seam are candidates for a link: 1 is
# plain adjacency; 2 also bridges the one-voxel gap left where one substack's model draws an
# object's boundary a voxel inside and the other's a voxel outside.
SEAM_REACH = 2
PIECE_VOXELS = 1 << 18  # voxels whose label pairs are counted at a time
PAIR_TABLE = 1 << 20  # candidate pairs counted in a dense table up to this many, else sorted
SEEN_TABLE = 1 << 22  # label pairs marked in a dense table up to this many, else sorted


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


def _dense(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values of `labels` and 0, sorted; each voxel's index in them)."""
    uniq = np.unique(np.concatenate([runs(labels), np.zeros(1, dtype=labels.dtype)]))
    top = int(uniq[-1]) if len(uniq) else 0
    if int(uniq[0]) >= 0 and top < substack_labels.DENSE_LABELS and top <= 8 * labels.size:
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
            found.append(np.unique(runs(key)))
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
    if top is not None and 0 <= top < substack_labels.DENSE_LABELS and (not len(keys) or int(keys[0]) >= 0):
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


def _read_held(arr, sub, region) -> np.ndarray:
    """Labels of `sub` on `region`, read substack_labels.SLAB_VOXELS at a time (cut at the array's chunk
    boundaries) into one array of the smallest unsigned type that holds `max_label`."""
    top, dtype = max_label(arr), np.dtype(arr.dtype)
    if top is not None and dtype.kind == "u":
        dtype = np.dtype(np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else dtype)
    held = np.empty(tuple(b - a for a, b in region), dtype=dtype)
    origin = tuple(a for a, _ in sub.box)
    for piece in pieces(region, getattr(arr, "chunks", None), origin, substack_labels.SLAB_VOXELS):
        held[tuple(slice(p.start - a, p.stop - a) for p, (a, _) in zip(piece, region))] = arr[in_box(sub, piece)]
    return held


def candidates_and_links(plan, arrays, s, t, threshold):
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
    size_a, size_b, inter = _link_counts(*held, cand, (max_label(arrays[s]), max_label(arrays[t])))
    del held
    inter = np.where((size_a > 0) & (size_b > 0), inter, 0)
    ok = (inter > 0) & (inter >= threshold * np.minimum(size_a, size_b))
    return cand, cand[ok]
