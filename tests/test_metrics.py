"""Instance-segmentation metrics on small hand-made label images, with exact expected values."""

import numpy as np
import pytest
import zarr

from aiod import metrics
from aiod.errors import AiodError


def two_squares():
    gt = np.zeros((10, 10), dtype=np.uint16)
    gt[0:4, 0:4] = 1  # 16 px
    gt[6:10, 6:10] = 2  # 16 px
    return gt


def test_identical_labels_match_perfectly_whatever_the_ids():
    gt = two_squares()
    pred = np.where(gt == 1, 7, np.where(gt == 2, 3, 0))
    m = metrics.match_labels(gt, pred)
    assert (m.tp, m.fp, m.fn, m.f1, m.mean_matched_score, m.panoptic_quality) == (2, 0, 0, 1.0, 1.0, 1.0)


def test_iou_at_threshold_counts_as_a_match():
    gt = two_squares()
    pred = np.zeros_like(gt)
    pred[0:4, 0:2] = 1  # half of object 1: IoU 8/16 = 0.5
    m = metrics.match_labels(gt, pred, thresh=0.5)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)
    assert m.mean_matched_score == 0.5
    assert m.precision == 1.0 and m.recall == 0.5 and m.accuracy == 0.5
    assert m.f1 == pytest.approx(2 / 3)
    assert m.panoptic_quality == pytest.approx(0.5 / 1.5)


def test_iou_below_threshold_is_a_false_positive_and_a_false_negative():
    gt = two_squares()
    pred = np.zeros_like(gt)
    pred[0:4, 0:1] = 5  # IoU 4/16
    m = metrics.match_labels(gt, pred, thresh=0.5)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (0, 1, 2, 2, 1)
    assert m.f1 == 0.0 and m.mean_matched_score == 0.0
    assert metrics.match_labels(gt, pred, thresh=0.25).tp == 1


def test_shifted_object_iou_is_exact():
    gt = two_squares()
    pred = np.zeros_like(gt)
    pred[1:5, 0:4] = 1  # shifted one row: 12 shared, union 20
    pred[6:10, 6:10] = 2
    m = metrics.match_labels(gt, pred)
    assert m.tp == 2 and m.mean_matched_score == pytest.approx((0.6 + 1.0) / 2)


def test_assignment_is_one_to_one():
    gt = np.zeros((4, 8), dtype=np.uint8)
    gt[:, 0:4], gt[:, 4:8] = 1, 2
    pred = np.ones_like(gt)  # one object over both: IoU 0.5 with each
    m = metrics.match_labels(gt, pred, thresh=0.5)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)


def test_empty_images_score_zero_without_dividing_by_zero():
    z = np.zeros((5, 5), dtype=np.uint8)
    m = metrics.match_labels(z, z)
    assert (m.tp, m.fp, m.fn, m.f1, m.precision, m.panoptic_quality) == (0, 0, 0, 0.0, 0.0, 0.0)


def test_pixel_scores_are_foreground_dice_and_iou():
    gt = two_squares()
    pred = np.zeros_like(gt)
    pred[0:4, 0:4] = 9  # 16 shared of 32 + 16
    s = metrics.pixel_scores(gt, pred)
    assert s["dice"] == pytest.approx(2 * 16 / 48) and s["iou"] == pytest.approx(16 / 32)


def test_split_and_fused_counts_follow_majority_overlap():
    gt = np.zeros((4, 12), dtype=np.uint8)
    gt[:, 0:4], gt[:, 4:8], gt[:, 8:12] = 1, 2, 3
    pred = np.zeros_like(gt)
    pred[:, 0:2], pred[:, 2:4] = 1, 2  # gt 1 split in two
    pred[:, 4:12] = 3  # gt 2 and 3 fused
    assert metrics.split_fused(gt, pred) == (1, 1)


def test_a_sliver_is_not_a_split():
    gt = np.zeros((4, 8), dtype=np.uint8)
    gt[:, 0:4] = 1
    pred = gt.copy()
    pred[:, 3:6] = 2  # mostly background: belongs to no true object
    assert metrics.split_fused(gt, pred) == (0, 0)


def test_zarr_input_is_read_in_blocks_and_gives_the_same_numbers(monkeypatch):
    rng = np.random.default_rng(0)
    gt = np.repeat(np.repeat(rng.integers(0, 30, (8, 8)), 8, 0), 8, 1).astype(np.uint32)
    pred = np.roll(gt, 2, axis=1)
    za = zarr.create_array(store={}, shape=gt.shape, dtype=gt.dtype, chunks=(16, 16))
    zb = zarr.create_array(store={}, shape=gt.shape, dtype=gt.dtype, chunks=(16, 16))
    za[...], zb[...] = gt, pred
    whole = metrics.match_labels(gt, pred)
    monkeypatch.setattr(metrics, "BLOCK_VOXELS", 256)  # 16 blocks of 16 x 16
    assert metrics.match_labels(za, zb) == whole
    table = metrics.contingency(za, zb)
    assert table.count.sum() == gt.size


def test_shape_mismatch_is_named():
    with pytest.raises(AiodError, match=r"ground truth shape \(4, 4\) != prediction shape \(4, 5\)"):
        metrics.match_labels(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))


@pytest.fixture(scope="module")
def nuclei_and_rotated():
    # stardist is part of the test environment (envs/test.txt): its absence is a failure
    from scipy.ndimage import rotate
    from stardist.data import test_image_nuclei_2d

    y = test_image_nuclei_2d(return_mask=True)[1]
    return y, rotate(y, 2, order=0, reshape=False)


def test_stardist_nuclei_against_themselves_rotated_2_degrees_give_the_published_numbers(nuclei_and_rotated):
    m = metrics.match_labels(*nuclei_and_rotated, thresh=0.5)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (37, 88, 88, 125, 125)
    assert m.accuracy == pytest.approx(0.17370892018779344, abs=1e-12)
    assert m.mean_matched_score == pytest.approx(0.65847, abs=1e-5)  # stardist: 0.6584725766568571 (float32 IoUs)


@pytest.mark.parametrize("thresh", [0.5, 0.75, 0.9])
def test_matching_reproduces_stardist_matching(nuclei_and_rotated, thresh):
    from stardist.matching import matching

    ours = metrics.match_labels(*nuclei_and_rotated, thresh=thresh)
    theirs = matching(*nuclei_and_rotated, thresh=thresh, criterion="iou")
    for name in ("tp", "fp", "fn", "n_true", "n_pred"):
        assert getattr(ours, name) == int(getattr(theirs, name)), name
    for name in ("precision", "recall", "accuracy", "f1"):
        assert getattr(ours, name) == pytest.approx(float(getattr(theirs, name)), abs=1e-12), name
    # stardist sums the matched IoUs in float32, we in float64
    for name in ("mean_matched_score", "panoptic_quality"):
        assert getattr(ours, name) == pytest.approx(float(getattr(theirs, name)), rel=1e-6), name


def test_thresholds_from_one_table_equal_each_threshold_alone(nuclei_and_rotated):
    table = metrics.contingency(*nuclei_and_rotated)
    swept = metrics.match_thresholds(None, None, metrics.THRESHOLDS, table=table)
    assert [m.thresh for m in swept] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    for m in swept:
        assert m == metrics.match_labels(None, None, m.thresh, table=table)


def test_pooled_scores_reproduce_stardist_matching_dataset(nuclei_and_rotated):
    """Three image pairs (rotated, shifted, half the objects dropped) pooled over images at every
    threshold: the same counts and scores as stardist's matching_dataset(by_image=False)."""
    from stardist.matching import matching_dataset

    y, rotated = nuclei_and_rotated
    shifted = np.roll(y, (3, -2), axis=(0, 1))
    dropped = np.where(np.isin(y, np.unique(y)[1::2]), 0, y)
    pairs = [(y, rotated), (y, shifted), (y, dropped)]
    per_image = [metrics.match_thresholds(t, p) for t, p in pairs]
    theirs = matching_dataset([t for t, _ in pairs], [p for _, p in pairs], thresh=metrics.THRESHOLDS,
                              criterion="iou", by_image=False, show_progress=False)
    for k, their in enumerate(theirs):
        ours = metrics.pool([m[k] for m in per_image])
        assert ours.thresh == pytest.approx(their.thresh)
        for name in ("tp", "fp", "fn", "n_true", "n_pred"):
            assert getattr(ours, name) == int(getattr(their, name)), (their.thresh, name)
        for name in ("precision", "recall", "accuracy", "f1"):
            assert getattr(ours, name) == pytest.approx(float(getattr(their, name)), abs=1e-12), (their.thresh, name)
        for name in ("mean_matched_score", "panoptic_quality"):  # stardist sums IoUs in float32
            assert getattr(ours, name) == pytest.approx(float(getattr(their, name)), rel=1e-5), (their.thresh, name)
    assert theirs[0].tp > theirs[-1].tp > 0  # the thresholds really differ on these pairs


def test_pooling_refuses_mixed_thresholds():
    gt = two_squares()
    with pytest.raises(ValueError, match="different thresholds"):
        metrics.pool([metrics.match_labels(gt, gt, 0.5), metrics.match_labels(gt, gt, 0.7)])


def test_a_tie_at_iou_one_half_is_assigned_once_as_stardist_does():
    from stardist.matching import matching

    gt = np.zeros((4, 4), np.uint16)
    gt[0:2, 0:2] = 1
    pred = np.zeros((4, 4), np.uint16)
    pred[0:1, 0:2], pred[1:2, 0:2] = 1, 2  # each half of the true object: IoU 0.5 with both
    ours, theirs = metrics.match_labels(gt, pred, 0.5), matching(gt, pred, thresh=0.5, criterion="iou")
    assert (ours.tp, ours.fp, ours.fn) == (int(theirs.tp), int(theirs.fp), int(theirs.fn)) == (1, 1, 0)
    assert ours.mean_matched_score == pytest.approx(0.5)


def test_cells_that_tile_the_image_match_as_stardist_matches_them():
    """Every cell touches its neighbours, so all objects form one overlap group: the case that
    must not become one dense matrix; the counts and scores are still stardist's."""
    from stardist.matching import matching

    yy, xx = np.mgrid[0:192, 0:192]
    gt = (yy // 12) * 16 + xx // 12 + 1
    wy = (yy + np.rint(3 * np.sin(xx / 7.0))).clip(0, 191).astype(np.int64)
    wx = (xx + np.rint(3 * np.cos(yy / 5.0))).clip(0, 191).astype(np.int64)
    wavy = (wy // 12) * 16 + wx // 12 + 1
    for thresh in (0.5, 0.6, 0.7):
        ours, theirs = metrics.match_labels(gt, wavy, thresh), matching(gt, wavy, thresh=thresh, criterion="iou")
        assert (ours.tp, ours.fp, ours.fn) == (int(theirs.tp), int(theirs.fp), int(theirs.fn)), thresh
        assert ours.mean_matched_score == pytest.approx(float(theirs.mean_matched_score), rel=1e-6), thresh
    assert [metrics.match_labels(gt, wavy, t).tp for t in (0.5, 0.6, 0.7)] == [204, 76, 7]  # of 256 cells


@pytest.mark.parametrize("dense_pairs, pack_bits, high", [(1 << 20, 63, 50), (0, 63, 50), (0, 0, 50), (1 << 20, 63, 1 << 40),
                                                      (0, 63, 1 << 40)])
def test_pair_counts_by_counting_by_sorting_by_sparse_matrix_and_for_ids_spread_wide_agree_with_a_plain_count(
        monkeypatch, dense_pairs, pack_bits, high):
    from collections import Counter

    from aiod import metrics as m
    monkeypatch.setattr(m, "DENSE_PAIRS", dense_pairs)
    monkeypatch.setattr(m, "PACK_BITS", pack_bits)
    rng = np.random.default_rng(3)
    x = np.repeat(rng.integers(0, high, 400, dtype=np.int64), rng.integers(1, 9, 400))
    y = np.repeat(rng.integers(0, 30, len(x) // 3 + 1, dtype=np.int64), 3)[: len(x)]
    gx, gy, counts = m.pair_counts(x, y)
    assert Counter(dict(zip(zip(gx.tolist(), gy.tolist()), counts.tolist()))) == Counter(zip(x.tolist(), y.tolist()))
