"""Instance-segmentation metrics, computed chunk by chunk so big masks never sit in memory.

Everything starts from the *contingency*: the voxel count of every (gt label, pred label) pair
that overlaps, background (0) included, accumulated block by block over numpy or zarr arrays.

`match_labels` follows `stardist.matching.matching` (criterion "iou"): IoU between every true
and predicted object, an optimal one-to-one assignment (`scipy.optimize.linear_sum_assignment`
on the cost -(iou >= thresh) - iou / (2 * min(n_true, n_pred))), a match counts as a true
positive when its IoU >= thresh, and the same definitions of precision, recall, accuracy, f1,
mean_matched_score and panoptic_quality. The assignment is solved per connected group of
overlapping objects, which gives the same optimum as one dense matrix without its n^2 memory.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from aiod.errors import AiodError

BLOCK_VOXELS = 1 << 24  # voxels read at a time from each array
THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # IoU 0.5, 0.55, ..., 0.95


@dataclass
class Contingency:
    gt: np.ndarray  # label of each overlapping pair (background 0 included)
    pred: np.ndarray
    count: np.ndarray  # voxels in gt == gt[i] & pred == pred[i]

    def sizes(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, voxel counts) of the gt or pred objects, background included."""
        lab = self.gt if which == "gt" else self.pred
        ids, inv = np.unique(lab, return_inverse=True)
        return ids, np.bincount(inv, weights=self.count).astype(np.int64)


def _block_shape(arr) -> tuple[int, ...]:
    shape = tuple(arr.shape)
    block = list(getattr(arr, "chunks", None) or shape)
    block = [min(b, s) for b, s in zip(block, shape)]
    while math.prod(block) > BLOCK_VOXELS and max(block) > 1:
        k = int(np.argmax(block))
        block[k] = (block[k] + 1) // 2
    for k in range(len(block)):  # grow along leading axes in whole chunks
        while block[k] < shape[k] and math.prod(block) * 2 <= BLOCK_VOXELS:
            block[k] = min(shape[k], block[k] * 2)
    return tuple(block)


def _reduce(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uk, inv = np.unique(keys, axis=0, return_inverse=True)
    return uk, np.bincount(inv.ravel(), weights=counts).astype(np.int64)


def pair_counts(x: np.ndarray, y: np.ndarray):
    """(x labels, y labels, voxel counts) of the label pairs in two flat int64 arrays."""
    ux, uy = np.unique(x), np.unique(y)
    key = np.searchsorted(ux, x).astype(np.int64) * len(uy) + np.searchsorted(uy, y)
    if len(ux) * len(uy) <= 1 << 22:
        dense = np.bincount(key, minlength=len(ux) * len(uy))
        k = np.flatnonzero(dense)
        counts = dense[k]
    else:
        k, counts = np.unique(key, return_counts=True)
    return ux[k // len(uy)], uy[k % len(uy)], counts.astype(np.int64)


def contingency(gt, pred) -> Contingency:
    """Overlap counts of every (gt, pred) label pair, read block by block."""
    if tuple(gt.shape) != tuple(pred.shape):
        raise AiodError(f"metrics: ground truth shape {gt.shape} != prediction shape {pred.shape}")
    block = _block_shape(gt)
    keys, counts = np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = [range(0, s, b) for s, b in zip(gt.shape, block)]
    for corner in itertools.product(*starts):
        sl = tuple(slice(c, c + b) for c, b in zip(corner, block))
        g = np.asarray(gt[sl]).ravel().astype(np.int64)
        p = np.asarray(pred[sl]).ravel().astype(np.int64)
        bg, bp, bc = pair_counts(g, p)
        bk = np.stack([bg, bp], 1)
        keys, counts = _reduce(np.concatenate([keys, bk]), np.concatenate([counts, bc]))
    return Contingency(keys[:, 0], keys[:, 1], counts)


@dataclass
class Match:
    thresh: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    accuracy: float  # tp / (tp + fp + fn)
    mean_matched_score: float  # mean IoU of the true positives
    panoptic_quality: float
    n_true: int
    n_pred: int
    sum_matched_score: float = 0.0  # summed IoU of the true positives, for pooling over images

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _scores(thresh: float, tp: int, fp: int, fn: int, n_true: int, n_pred: int, score_sum: float) -> Match:
    return Match(
        thresh=float(thresh),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=_div(tp, tp + fp),
        recall=_div(tp, tp + fn),
        f1=_div(2 * tp, 2 * tp + fp + fn),
        accuracy=_div(tp, tp + fp + fn),
        mean_matched_score=_div(score_sum, tp),
        panoptic_quality=_div(score_sum, tp + fp / 2 + fn / 2),
        n_true=n_true,
        n_pred=n_pred,
        sum_matched_score=score_sum,
    )


def pool(matches: list[Match]) -> Match:
    """Several images' matches at one threshold as one: summed counts and matched IoUs, as
    `stardist.matching.matching_dataset(by_image=False)` pools them."""
    if len({m.thresh for m in matches}) > 1:
        raise ValueError("pool: matches at different thresholds")
    total = {k: sum(getattr(m, k) for m in matches) for k in ("tp", "fp", "fn", "n_true", "n_pred", "sum_matched_score")}
    return _scores(matches[0].thresh if matches else 0.5, total["tp"], total["fp"], total["fn"], total["n_true"],
                   total["n_pred"], total["sum_matched_score"])


def _div(a: float, b: float) -> float:
    return float(a) / b if b > 0 else 0.0


def _iou_pairs(c: Contingency):
    """Object pairs with overlap: (gt index, pred index, iou), plus the object counts."""
    gid, gsize = c.sizes("gt")
    pid, psize = c.sizes("pred")
    gsize, psize = gsize[gid != 0], psize[pid != 0]
    gid, pid = gid[gid != 0], pid[pid != 0]
    fg = (c.gt != 0) & (c.pred != 0)
    gi = np.searchsorted(gid, c.gt[fg])
    pi = np.searchsorted(pid, c.pred[fg])
    inter = c.count[fg]
    iou = inter / (gsize[gi] + psize[pi] - inter)
    return gi, pi, iou, len(gid), len(pid)


def match_labels(gt, pred, thresh: float = 0.5, *, table: Contingency | None = None) -> Match:
    """Optimal one-to-one matching on IoU, as `stardist.matching.matching` computes it."""
    return match_thresholds(gt, pred, (thresh,), table=table)[0]


def match_thresholds(gt, pred, thresholds=THRESHOLDS, *, table: Contingency | None = None) -> list[Match]:
    """`match_labels` at each IoU threshold, from one contingency table and one IoU list."""
    c = table if table is not None else contingency(gt, pred)
    gi, pi, iou, n_true, n_pred = _iou_pairs(c)
    groups = []  # index arrays of the pairs in each connected group of overlapping objects
    if len(gi):
        graph = coo_matrix((np.ones(len(gi)), (gi, n_true + pi)), shape=(n_true + n_pred,) * 2)
        _, comp = connected_components(graph, directed=False)
        order = np.argsort(comp[gi], kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(comp[gi][order])) + 1)
    return [_match_groups(gi, pi, iou, n_true, n_pred, groups, float(t)) for t in thresholds]


def _match_groups(gi, pi, iou, n_true: int, n_pred: int, groups, thresh: float) -> Match:
    n_matched = min(n_true, n_pred)
    tp, score_sum = 0, 0.0
    if n_matched > 0:
        for grp in groups:
            if not np.any(iou[grp] >= thresh):
                continue
            rows, r = np.unique(gi[grp], return_inverse=True)
            cols, q = np.unique(pi[grp], return_inverse=True)
            scores = np.zeros((len(rows), len(cols)))
            scores[r, q] = iou[grp]
            cost = -(scores >= thresh).astype(float) - scores / (2 * n_matched)
            ti, pj = linear_sum_assignment(cost)
            ok = scores[ti, pj] >= thresh
            tp += int(np.count_nonzero(ok))
            score_sum += float(np.sum(scores[ti, pj][ok]))
    return _scores(thresh, tp, n_pred - tp, n_true - tp, n_true, n_pred, score_sum)


def pixel_scores(gt, pred, *, table: Contingency | None = None) -> dict:
    """Foreground (label != 0) Dice and IoU."""
    c = table if table is not None else contingency(gt, pred)
    n_gt = int(c.count[c.gt != 0].sum())
    n_pred = int(c.count[c.pred != 0].sum())
    both = int(c.count[(c.gt != 0) & (c.pred != 0)].sum())
    return pixel_dice(n_gt, n_pred, both)


def pixel_dice(fg_true: int, fg_pred: int, fg_both: int) -> dict:
    """Foreground Dice and IoU from voxel counts (summed over images to pool them)."""
    return {
        "dice": _div(2 * fg_both, fg_true + fg_pred),
        "iou": _div(fg_both, fg_true + fg_pred - fg_both),
        "fg_true": fg_true,
        "fg_pred": fg_pred,
        "fg_both": fg_both,
    }


def split_fused(gt, pred, *, table: Contingency | None = None) -> tuple[int, int]:
    """(split, fused) object counts, by majority overlap.

    A predicted object *belongs to* the true object that holds more than half of its voxels;
    a true object is *split* when more than one predicted object belongs to it. Symmetrically,
    a true object belongs to the predicted object that holds more than half of its voxels; a
    predicted object is *fused* when more than one true object belongs to it.
    """
    c = table if table is not None else contingency(gt, pred)
    fg = (c.gt != 0) & (c.pred != 0)

    def count(owner: np.ndarray, member: np.ndarray, which: str) -> int:
        ids, size = c.sizes(which)
        msize = size[np.searchsorted(ids, member[fg])]
        major = 2 * c.count[fg] > msize
        owners, n = np.unique(owner[fg][major], return_counts=True)
        return int(np.count_nonzero(n > 1))

    return count(c.gt, c.pred, "pred"), count(c.pred, c.gt, "gt")
