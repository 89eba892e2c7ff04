"""Generated data: what the merge tests and the demo rely on."""

import time

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import filters, measure, segmentation
from skimage.feature import peak_local_max

from aiod import metrics, synthetic


def pieces_per_object(labels):
    full = np.ones((3,) * labels.ndim, dtype=bool)
    return [ndi.label(labels[sl] == i, full)[1] for i, sl in enumerate(ndi.find_objects(labels), 1) if sl]


@pytest.fixture(scope="module")
def nuclei2d():
    return synthetic.touching_nuclei((256, 256), n=150, radius=(6, 11), seed=1)


def test_nuclei_are_dense_consecutive_and_one_piece_each(nuclei2d):
    assert nuclei2d.dtype == np.uint32
    assert np.array_equal(np.unique(nuclei2d), np.arange(nuclei2d.max() + 1))
    assert nuclei2d.max() >= 120
    assert set(pieces_per_object(nuclei2d)) == {1}


def test_many_nuclei_touch_a_neighbour(nuclei2d):
    grown = ndi.grey_dilation(nuclei2d, size=(3, 3))
    touching = np.unique(nuclei2d[(grown != nuclei2d) & (nuclei2d != 0) & (grown != 0)])
    assert len(touching) >= 0.4 * nuclei2d.max()


def test_same_seed_same_nuclei_other_seed_other_nuclei():
    a = synthetic.touching_nuclei((64, 64), n=10, radius=(4, 8), seed=3)
    assert np.array_equal(a, synthetic.touching_nuclei((64, 64), n=10, radius=(4, 8), seed=3))
    assert not np.array_equal(a, synthetic.touching_nuclei((64, 64), n=10, radius=(4, 8), seed=4))


def test_requested_centres_hold_a_nucleus():
    lab = synthetic.touching_nuclei((96, 96), n=20, radius=(6, 9), seed=0, centres=[(48, 48), (0, 95)])
    assert lab[48, 48] != 0 and lab[0, 95] != 0


def test_demo_volumes_generate_fast():
    t0 = time.perf_counter()
    vol = synthetic.touching_nuclei((48, 160, 160), n=250, radius=(5, 9), seed=0, spacing=(2, 1, 1))
    img = synthetic.render_nuclei(vol, seed=0)
    for k in range(3):
        synthetic.render_nuclei(synthetic.touching_nuclei((256, 256), n=150, radius=(6, 11), seed=k), seed=k)
    assert time.perf_counter() - t0 < 5
    assert img.shape == vol.shape and img.dtype == np.uint16
    assert set(pieces_per_object(vol)) == {1}


def test_rendering_is_brighter_inside_nuclei(nuclei2d):
    img = synthetic.render_nuclei(nuclei2d, seed=1).astype(float)
    assert img[nuclei2d > 0].mean() > 3 * img[nuclei2d == 0].mean()


def test_classical_watershed_separates_most_touching_nuclei(nuclei2d):
    img = filters.gaussian(synthetic.render_nuclei(nuclei2d, seed=2).astype(float), 1)
    fg = img > filters.threshold_otsu(img)
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=4, labels=measure.label(fg), exclude_border=False)
    markers = np.zeros(fg.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    pred = segmentation.watershed(-dist, markers, mask=fg)
    assert metrics.match_labels(nuclei2d, pred).f1 >= 0.9


@pytest.mark.parametrize("shape", [(256, 256), (48, 128, 128)])
def test_long_and_nonconvex_has_long_bars_and_u_shapes(shape):
    halo = 16
    lab = synthetic.long_and_nonconvex(shape, seed=0, halo=halo)
    props = measure.regionprops(lab)
    longest = max(max(b - a for a, b in zip(p.bbox[: lab.ndim], p.bbox[lab.ndim :])) for p in props)
    assert longest >= 4 * halo
    assert any(p.solidity < 0.7 for p in props)  # a U fills much less than its convex hull
    assert set(pieces_per_object(lab)) == {1}
    grown = ndi.grey_dilation(lab, size=(3,) * lab.ndim)
    assert np.any((grown != lab) & (lab != 0) & (grown != 0))  # some objects touch


def test_perfect_local_model_is_the_crop_relabelled_by_pieces():
    gt = np.zeros((10, 10), dtype=np.uint32)
    gt[2:8, 2:4] = gt[2:8, 6:8] = gt[6:8, 2:8] = 4  # U opening upwards
    box = (slice(0, 6), slice(0, 10))  # cuts the base off: two arms
    local = synthetic.perfect_local_model(gt, box, np.random.default_rng(0))
    ids = np.unique(local[local != 0])
    assert len(ids) == 2 and np.array_equal(local != 0, gt[box] != 0)
    assert local[3, 2] != local[3, 6]


def test_noisy_local_model_moves_each_boundary_by_at_most_one_voxel(nuclei2d):
    box = (slice(20, 200), slice(30, 230))
    local = synthetic.noisy_local_model(nuclei2d, box, np.random.default_rng(5))
    crop = nuclei2d[box]
    near = segmentation.find_boundaries(crop, connectivity=1, mode="thick")  # both sides
    changed = (local != 0) != (crop != 0)
    assert changed.any() and not np.any(changed & ~near)
    m = metrics.match_labels(crop, local)
    assert m.f1 == 1.0 and m.mean_matched_score > 0.75
