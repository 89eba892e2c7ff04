"""SAM 2 automatic mask generation through its adapter, in its own environment.

The first tests need no environment: they pin the adapter's own logic (grey to RGB, masks to
labels with overlaps resolved by predicted IoU, SAM's small-region clean-up, slice-to-slice
linking in 3D). The family tests run a random-weight Hiera-tiny checkpoint
(tests/families/build_sam2.py, `{"model": state_dict}` as published) with the package's own
Hydra config and a 4x4 point grid; random weights say nothing about accuracy, so they check the
plumbing: shapes, uint32 ids 1..n with one score each, determinism, substack-sized boxes, ids
linked through z, nothing written into $HOME or the artifact's folder, nothing downloaded.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import tifffile

from aiod import splitcheck
from aiod.imageio import open_image
from aiod.models import params_namespace, resolve, sam2
from family_artifacts import built_artifact, contract_run, trained_artifact  # noqa: F401
from family_envs import nuclei_data  # noqa: F401


def record(mask, iou, stability=0.9):
    ys, xs = np.nonzero(mask)
    return {"segmentation": np.asarray(mask, bool), "predicted_iou": iou, "stability_score": stability,
            "bbox": [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]}


def box_mask(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_sam2_grey_becomes_rgb_by_clipping_never_wrapping():
    rgb = sam2.to_rgb(np.array([[[-0.5], [0.0], [0.5], [1.0], [1.2]]], dtype=np.float32))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 128, 255, 255])
    assert (rgb == rgb[..., :1]).all()


def test_sam2_two_channels_fill_red_and_green():
    rgb = sam2.to_rgb(np.array([[[1.0, 0.5]]], dtype=np.float32))
    np.testing.assert_array_equal(rgb[0, 0], [255, 128, 0])


def test_sam2_overlap_goes_to_the_mask_with_the_higher_predicted_iou():
    a, b = box_mask((8, 8), 0, 4, 0, 6), box_mask((8, 8), 2, 8, 2, 8)
    labels, scores = sam2.masks_to_labels([record(a, 0.7), record(b, 0.9)], (8, 8), 0, decode=np.asarray)
    assert scores == {1: 0.9, 2: 0.7}  # numbered in order of predicted IoU
    assert (labels[b] == 1).all()
    np.testing.assert_array_equal(labels[a & ~b], 2)


def test_sam2_equal_predicted_iou_is_decided_by_stability_then_order():
    a, b = box_mask((6, 6), 0, 4, 0, 4), box_mask((6, 6), 2, 6, 2, 6)
    labels, _ = sam2.masks_to_labels([record(a, 0.8, 0.9), record(b, 0.8, 0.95)], (6, 6), 0, decode=np.asarray)
    assert labels[3, 3] == 1 and labels[0, 0] == 2  # b: more stable
    labels, _ = sam2.masks_to_labels([record(a, 0.8), record(b, 0.8)], (6, 6), 0, decode=np.asarray)
    assert labels[3, 3] == 1 and labels[5, 5] == 2  # a: first


def test_sam2_mask_hidden_by_better_masks_is_dropped():
    a = box_mask((6, 6), 0, 6, 0, 6)
    labels, scores = sam2.masks_to_labels([record(a, 0.9), record(box_mask((6, 6), 1, 3, 1, 3), 0.5)], (6, 6), 0,
                                          decode=np.asarray)
    assert scores == {1: 0.9} and (labels == 1).all()


def test_sam2_min_mask_region_area_fills_small_holes_and_removes_small_islands():
    mask = box_mask((12, 12), 0, 7, 0, 7)
    mask[3, 3] = False  # a 1-pixel hole
    mask[10, 10] = True  # a 1-pixel island
    labels, _ = sam2.masks_to_labels([record(mask, 0.9)], (12, 12), 4, decode=np.asarray)
    np.testing.assert_array_equal(labels, box_mask((12, 12), 0, 7, 0, 7).astype(np.uint32))


def test_sam2_masks_smaller_than_min_mask_region_area_are_dropped():
    labels, scores = sam2.masks_to_labels([record(box_mask((8, 8), 0, 2, 0, 2), 0.9)], (8, 8), 5, decode=np.asarray)
    assert scores == {} and not labels.any()


def slices_of(*planes):
    return [(np.asarray(p, np.uint32), {i: 0.5 + 0.1 * i for i in np.unique(p) if i}) for p in planes]


def test_sam2_object_overlapping_through_slices_keeps_one_id():
    plane = box_mask((6, 6), 1, 5, 1, 5).astype(np.uint32)
    moved = box_mask((6, 6), 1, 5, 2, 6).astype(np.uint32)
    volume, scores = sam2.link_slices(slices_of(plane, moved, plane), (3, 6, 6), 0.25)
    assert set(np.unique(volume)) == {0, 1}
    assert scores == {1: pytest.approx(0.6)}


def test_sam2_slice_objects_take_the_previous_ids_by_best_overlap_one_to_one():
    first = np.zeros((4, 8), np.uint32)
    first[:, :4], first[:, 4:] = 1, 2
    second = np.zeros((4, 8), np.uint32)  # local ids in another order; 3 straddles both (IoU 0.2 each)
    second[:, 4:] = 1
    second[:, :4] = 2
    second[:, 3:5] = 3
    volume, _ = sam2.link_slices(slices_of(first, second), (2, 4, 8), 0.25)
    np.testing.assert_array_equal(volume[1, 0], [1, 1, 1, 3, 3, 2, 2, 2])


def test_sam2_object_split_in_two_keeps_its_id_in_the_better_overlapping_part_only():
    first = np.ones((4, 8), np.uint32)
    second = np.ones((4, 8), np.uint32)
    second[:, 5:] = 2  # IoU 0.625 and 0.375 with the object above: both above link_iou
    volume, _ = sam2.link_slices(slices_of(first, second), (2, 4, 8), 0.25)
    np.testing.assert_array_equal(volume[1, 0], [1, 1, 1, 1, 1, 2, 2, 2])


def test_sam2_objects_overlapping_less_than_link_iou_start_new_ids():
    a = box_mask((8, 8), 0, 4, 0, 4).astype(np.uint32)
    b = box_mask((8, 8), 3, 8, 3, 8).astype(np.uint32)  # IoU with a: 1/40
    volume, scores = sam2.link_slices(slices_of(a, b), (2, 8, 8), 0.25)
    assert volume[0].max() == 1 and volume[1].max() == 2 and set(scores) == {1, 2}


class Piece:
    """A piece of a labelled array, cut out lazily: what the stand-in decoder gives."""

    def __init__(self, pieces, k):
        self.pieces, self.k = pieces, k

    def __getitem__(self, box):
        return self.pieces[box] == self.k


class WindowDependentGenerator:
    """Records as SAM 2's generator gives them, by a rule that depends on the array it is handed:
    the connected pieces brighter than the array's own mean (or than `level`, a rule that does
    not), scored by their mean brightness (a record's "segmentation" is (pieces, its number),
    decoded by the stand-in below)."""

    def __init__(self, level=None):
        self.level = level

    def generate(self, rgb):
        from scipy import ndimage as ndi

        grey = rgb[..., 0].astype(float)
        pieces, n = ndi.label(grey > (grey.mean() if self.level is None else self.level))
        means = ndi.mean(grey, pieces, np.arange(1, n + 1))
        return [{"segmentation": (pieces, k), "predicted_iou": float(means[k - 1] / 255), "stability_score": 0.9,
                 "bbox": [xs.start, ys.start, xs.stop - 1 - xs.start, ys.stop - 1 - ys.start]}
                for k, (ys, xs) in enumerate(ndi.find_objects(pieces), 1)]


@pytest.fixture
def stand_in_decoder(monkeypatch):
    """sam2.utils.amg.rle_to_mask, where the test environment has no sam2: decodes a Piece."""
    amg = types.ModuleType("sam2.utils.amg")
    amg.rle_to_mask = lambda seg: Piece(*seg)
    for name, module in (("sam2", types.ModuleType("sam2")), ("sam2.utils", types.ModuleType("sam2.utils")),
                         ("sam2.utils.amg", amg)):
        monkeypatch.setitem(sys.modules, name, module)


def test_sam2_windows_give_a_rule_that_sees_no_window_its_whole_image_objects(nuclei_data, stand_in_decoder):  # noqa: F811
    # a fixed threshold: each nucleus lies whole in the window nearest it, away from its inner
    # edges, so the windows' masks, placed in the image, are those of the rule run on the image
    grey = np.tile(tifffile.imread(nuclei_data / "nuclei_2d.tif"), (1, 6))[:, :2688]
    params = params_namespace(resolve("sam2", None, None, {"min_mask_region_area": 4}))
    prepared = {"channels": [{"p_low": 0.0, "p_high": float(grey.max())}], "shape": list(grey.shape)}
    windowed, scores = sam2.segment(WindowDependentGenerator(level=100), grey, params, prepared, None)
    whole, _ = sam2.segment_library(WindowDependentGenerator(level=100), grey, params, prepared, None)
    assert len(scores) > 200 and splitcheck.same_objects(whole, windowed)


def test_sam2_windows_on_the_image_grid_make_a_split_give_the_whole_image_objects(nuclei_data, tmp_path,  # noqa: F811
                                                                                   stand_in_decoder):
    # real nuclei, 512x2688, lit unevenly: four 512x1024 windows (every 768 px); split 1x2 with
    # the halo of 1280 px, each box holds three of them. A generator that depends on the array it
    # is handed (SAM 2's resizes it to 1024 px and spreads its prompts over it) gives other
    # objects for a box than for the whole image (F1 0.96); on the windows it does not
    path = tmp_path / "nuclei_512x2688.tif"
    tiled = np.tile(tifffile.imread(nuclei_data / "nuclei_2d.tif"), (1, 6))[:, :2688].astype(np.float32)
    tifffile.imwrite(path, (tiled * np.linspace(0.5, 1.5, 2688)).astype(np.uint16))  # uneven illumination
    image = open_image(path)
    params = params_namespace(resolve("sam2", None, None, {"min_mask_region_area": 4}))
    prepared = sam2.prepare(image, None, params)
    assert [sam2.windows(n) for n in image.spatial_shape] == [[0], [0, 768, 1536, 1664]]
    run = splitcheck.check(sam2, WindowDependentGenerator(), image, params, prepared, (1, 2), tmp_path / "run",
                           library=True)
    assert run["halo"] == [1280, 1280] and run["starts"] == [[0, 0], [0, 64]], run
    assert run["whole_objects"] > 300, run
    assert run["aligned"]["same"] and run["aligned"]["f1"] == 1.0, run
    assert not run["library"]["same"], run  # the generator on each box, as before the windows


@pytest.fixture(scope="module")
def sam2_run(contract_run):  # noqa: F811
    # its contract's run (tests/test_adapter_contract.py), shared: a random network's masks have
    # predicted IoU ~0.5 and stability ~0, so its parameters keep them all
    return contract_run("sam2")


def assert_one_score_per_object(run, labels):
    scores = {int(k): v for k, v in run["scores"].items()}
    assert set(scores) == set(np.unique(labels[labels > 0]).tolist())
    assert all(0.0 <= s <= 1.0 for s in scores.values())  # predicted IoUs


@pytest.mark.families
def test_sam2_gives_one_predicted_iou_score_per_object_in_2d_and_3d(sam2_run):
    for name in ("image_0", "volume_0"):
        assert_one_score_per_object(sam2_run["record"]["runs"][name], sam2_run["runs"][name])

