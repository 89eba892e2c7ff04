"""Links across seams: which objects of two neighbouring substacks are one object.

Step 2 of the merge (see merge.py). For two substacks s, t whose cores touch, the candidates
are the node pairs (s, a), (t, b) whose core voxels come within SEAM_REACH voxels of each
other across the seam; a candidate is linked when |a ∩ b| >= threshold * min(|a ∩ R|, |b ∩ R|)
and |a ∩ b| > 0 in the shared region R = box(s) ∩ box(t). R is read once from each substack
(the copy its label file holds), and the seam band is cut from it; offsets are compared only
where the two shifted cores meet, and pairs are counted with dense ids (labels are 1..n in
every file) and np.bincount rather than sorting.
"""

from __future__ import annotations

import itertools

import numpy as np

from aiod.planner import Plan
from aiod.boxes import intersect, rel
from aiod.substack_labels import SubstackLabels, runs

# Nodes whose owned voxels come this close across a seam are candidates for a link: 1 is
# plain adjacency; 2 also bridges the one-voxel gap left where one substack's model draws an
# object's boundary a voxel inside and the other's a voxel outside.
SEAM_REACH = 2
PIECE_VOXELS = 1 << 20  # voxels whose label pairs are counted at a time
PAIR_TABLE = 1 << 20  # candidate pairs counted in a dense table up to this many, else sorted
SEEN_TABLE = 1 << 22  # label pairs marked in a dense table up to this many, else sorted


def _contains(outer, inner) -> bool:
    return all(a0 <= b0 and b1 <= a1 for (a0, a1), (b0, b1) in zip(outer, inner))


def _dense(labels: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values of `labels` and 0, sorted; each voxel's index in them)."""
    seen = np.zeros(top + 1, dtype=bool)
    seen[0] = True
    seen[runs(labels)] = True
    uniq = np.flatnonzero(seen)
    lut = np.zeros(top + 1, dtype=np.intp)
    lut[uniq] = np.arange(len(uniq))
    return uniq, np.take(lut, labels)


def _seam_pairs(plan: Plan, labels, s: int, t: int, r: int, shared=None, held=None) -> np.ndarray:
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
    rs, rt = intersect(cs.core, band), intersect(ct.core, band)
    if rs is None or rt is None:
        return np.zeros((0, 2), dtype=np.int64)
    ls = held[0][rel(rs, shared)] if inside else labels[s].read(rs)
    lt = held[1][rel(rt, shared)] if inside else labels[t].read(rt)
    # thinnest axis first, so that numpy's inner loops run along the seam, not across it
    order = sorted(range(len(band)), key=lambda k: (rs[k][1] - rs[k][0], k))
    ls, lt = np.ascontiguousarray(ls.transpose(order)), np.ascontiguousarray(lt.transpose(order))
    rs, rt = tuple(rs[k] for k in order), tuple(rt[k] for k in order)
    ua, ia = _dense(ls, labels[s].max_label)
    ub, ib = _dense(lt, labels[t].max_label)
    nb = len(ub)
    table = np.zeros(len(ua) * nb, dtype=bool) if len(ua) * nb <= SEEN_TABLE else None
    ia *= nb  # a * nb + b: the pair's key (intp: it scatters fastest)
    found = []
    for off in itertools.product(range(-r, r + 1), repeat=len(rs)):
        meet = intersect(rs, tuple((a0 - o, a1 - o) for (a0, a1), o in zip(rt, off)))
        if meet is None:  # includes off == 0: cores are disjoint
            continue
        key = ia[rel(meet, rs)] + ib[tuple(slice(p0 + o - t0, p1 + o - t0) for (p0, p1), o, (t0, _) in zip(meet, off, rt))]
        if table is not None:
            table[key.reshape(-1)] = True
        else:
            found.append(np.unique(runs(key)))
    keys = np.flatnonzero(table) if table is not None else np.unique(np.concatenate([np.zeros(0, np.int64), *found]))
    pa, pb = ua[keys // nb], ub[keys % nb]
    keep = (pa != 0) & (pb != 0)
    return np.stack([pa[keep], pb[keep]], 1).astype(np.int64)


def _positions(keys: np.ndarray, top: int) -> np.ndarray:
    """A table of 1 + the index of each label 0..top in `keys` (sorted), 0 where it is not one."""
    lut = np.zeros(top + 1, dtype=np.intp)
    lut[keys] = np.arange(1, len(keys) + 1)
    return lut


def _link_counts(x: np.ndarray, y: np.ndarray, cand: np.ndarray, tops):
    """|a ∩ R|, |b ∩ R| and |a ∩ b| for each candidate pair (a, b), counted on x and y (the
    two substacks' labels on R; labels 0..tops[0] and 0..tops[1]). Runs of equal (x, y) along
    the rows are counted once, weighted by their length; labels map to dense candidate ids
    and pairs to candidate slots (a table, or a sorted search when there are too many
    pairs), counted by np.bincount, PIECE_VOXELS at a time; no sorting of voxels."""
    ca, cb = np.unique(cand[:, 0]), np.unique(cand[:, 1])
    lut_a, lut_b = _positions(ca, tops[0]), _positions(cb, tops[1])
    n1 = len(cb) + 1
    want = (np.searchsorted(ca, cand[:, 0]) + 1) * n1 + np.searchsorted(cb, cand[:, 1]) + 1
    order = np.argsort(want)
    if (len(ca) + 1) * n1 <= PAIR_TABLE:
        slot = np.zeros((len(ca) + 1) * n1, dtype=np.int32)
        slot[want] = np.arange(1, len(cand) + 1)
    sums = [np.zeros(len(ca) + 1), np.zeros(n1), np.zeros(len(cand) + 1)]  # float: np.bincount's weights
    x, y = x.reshape(-1), y.reshape(-1)
    start = np.empty(min(len(x), PIECE_VOXELS), dtype=bool)
    for i in range(0, len(x), PIECE_VOXELS):
        xs, ys = x[i : i + PIECE_VOXELS], y[i : i + PIECE_VOXELS]
        new = start[: len(xs)]
        new[:1] = True
        np.not_equal(xs[1:], xs[:-1], out=new[1:])
        new[1:] |= ys[1:] != ys[:-1]
        first = np.flatnonzero(new)
        length = np.diff(first, append=len(xs))
        ia, ib = np.take(lut_a, xs[first]), np.take(lut_b, ys[first])
        both = (ia != 0) & (ib != 0)
        key = ia[both] * n1 + ib[both]
        if (len(ca) + 1) * n1 <= PAIR_TABLE:
            which = np.take(slot, key)
        else:
            pos = np.minimum(np.searchsorted(want, key, sorter=order), len(want) - 1)
            which = np.where(want[order[pos]] == key, order[pos] + 1, 0)
        for total, index, weight in zip(sums, (ia, ib, which), (length, length, length[both])):
            total += np.bincount(index, weights=weight, minlength=len(total))
    size_a, size_b, inter = (v.astype(np.int64) for v in sums)
    return size_a[want // n1], size_b[want % n1], inter[1:]


def candidates_and_links(plan: Plan, labels: list[SubstackLabels], s: int, t: int, threshold: float):
    """Candidate node pairs (a, b) of s and t (near each other across the seam), and those
    among them that overlap enough in R = box(s) ∩ box(t) to be linked. R is read once from
    each substack; the seam band is cut from it."""
    shared = intersect(plan.substacks[s].box, plan.substacks[t].box)
    if shared is None:  # no overlap, nothing to compare: every adjacent pair is linked
        cand = _seam_pairs(plan, labels, s, t, 1)
        return cand, cand
    held = (labels[s].read_shared(t, shared), labels[t].read_shared(s, shared))
    cand = _seam_pairs(plan, labels, s, t, SEAM_REACH, shared, held)
    if not len(cand):
        return cand, cand
    size_a, size_b, inter = _link_counts(*held, cand, (labels[s].max_label, labels[t].max_label))
    del held
    inter = np.where((size_a > 0) & (size_b > 0), inter, 0)
    ok = (inter > 0) & (inter >= threshold * np.minimum(size_a, size_b))
    return cand, cand[ok]
