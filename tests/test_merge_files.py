"""The per-substack label files (substack_labels.py): what SEGMENT writes so that MERGE is fast,
and what the merge refuses.

Written with the plan, a file holds the labels renumbered 1..n (the core's first, in the
model's order) at image coordinates, plus copies of the regions shared with every neighbour;
written without it, the same labels box-shaped. Either way the merge gives the same bytes.
"""

import numpy as np
import pytest
import zarr

from aiod import boxes, substack_labels, synthetic
from aiod.errors import AiodError
from aiod.planner import plan_substacks
from test_merge import nuclei_2d, split_and_merge


def two_substacks(halo=4):
    return plan_substacks((32, 32), "YX", (2, 1), (halo, halo), bytes_per_voxel=1, memory_budget=None)


def shuffled_box(plan, index, seed=0):
    """Box-shaped labels with large, shuffled ids: some objects in the core, some only in the halo."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(plan.substacks[index].box_shape, dtype=np.int64)
    for k, (y, x) in enumerate([(0, 0), (6, 10), (12, 20), (17, 5), (18, 25)]):  # rows 16..19: halo of 0
        labels[y : y + 2, x : x + 3] = int(rng.integers(1, 10**12))
    return labels


def test_label_file_renumbers_ids_in_their_order_with_the_cores_labels_first(tmp_path):
    plan = two_substacks()
    labels = shuffled_box(plan, 0)
    n = substack_labels.write_substack_labels(tmp_path / "s.zarr", labels, 0, plan=plan)
    index, lab = substack_labels.open_substack_labels(tmp_path / "s.zarr")
    got = lab.read(plan.substacks[0].box)
    core = labels[plan.substacks[0].core_in_box]
    in_core = np.unique(core[core != 0])
    halo_only = np.setdiff1d(np.unique(labels[labels != 0]), in_core)
    assert index == 0 and n == lab.max_label == 5 and lab.core_labels == len(in_core) == 3
    assert got.dtype == np.uint8
    for new, old in enumerate([*in_core, *halo_only], start=1):  # each in the order of its values
        assert np.array_equal(got == new, labels == old)
    assert np.array_equal(got == 0, labels == 0)


def test_label_file_holds_the_box_at_image_coordinates_and_copies_of_the_shared_regions(tmp_path):
    plan = two_substacks()
    substack_labels.write_substack_labels(tmp_path / "s.zarr", shuffled_box(plan, 1), 1, plan=plan)
    _, lab = substack_labels.open_substack_labels(tmp_path / "s.zarr")
    box = plan.substacks[1].box
    assert tuple(lab.array.shape) == tuple(b for _, b in box) and lab.origin == (0, 0)
    assert not lab.array[: box[0][0]].any()  # nothing outside the box
    shared = boxes.intersect(box, plan.substacks[0].box)
    assert np.array_equal(lab.read_shared(0, shared), lab.read(shared))


def test_files_written_without_the_plan_merge_to_the_same_bytes(tmp_path):
    for gt, grid, halo in [(nuclei_2d(), (4, 4), 16),
                           (synthetic.touching_nuclei((48, 48, 48), n=30, radius=(4, 8), seed=1), (2, 2, 2), 6)]:
        a, sa = split_and_merge(tmp_path, gt, grid, halo, synthetic.noisy_local_model, 3)
        b, sb = split_and_merge(tmp_path, gt, grid, halo, synthetic.noisy_local_model, 3, with_plan=False)
        assert a.tobytes() == b.tobytes() and sa == sb


@pytest.mark.parametrize("ids", ["large", "negative"])
def test_large_or_negative_model_ids_merge_to_the_same_bytes_as_small_ones(tmp_path, ids):
    def model(gt, box, rng):
        lab = synthetic.noisy_local_model(gt, box, rng).astype(np.int64)
        if ids == "large":
            return np.where(lab != 0, lab * 7919 + 5_000_000_000, 0)
        return np.where(lab % 2 == 1, -lab, lab)  # order: negatives first, as the values sort

    def ranked(gt, box, rng):  # the same labels renumbered by hand in the order of `model`'s ids
        lab = model(gt, box, rng)
        values = np.unique(lab[lab != 0])
        return np.where(lab != 0, np.searchsorted(values, lab) + 1, 0).astype(np.uint32)

    gt = nuclei_2d()
    a, sa = split_and_merge(tmp_path, gt, (3, 3), 12, model, 4)
    b, sb = split_and_merge(tmp_path, gt, (3, 3), 12, ranked, 4)
    assert a.tobytes() == b.tobytes() and sa == sb


def test_labels_that_do_not_fit_the_box_are_refused_when_written(tmp_path):
    plan = two_substacks()
    with pytest.raises(AiodError, match=r"s.zarr: labels have shape \(5, 5\), substack 0's box is \(20, 32\)"):
        substack_labels.write_substack_labels(tmp_path / "s.zarr", np.zeros((5, 5), np.uint8), 0, plan=plan)
    assert not (tmp_path / "s.zarr").exists()


def test_a_file_written_for_another_plan_is_named(tmp_path):
    written, merged = two_substacks(halo=4), two_substacks(halo=6)
    substack_labels.write_substack_labels(tmp_path / "s.zarr", shuffled_box(written, 0), 0, plan=written)
    with pytest.raises(AiodError, match="s.zarr: written for another plan"):
        substack_labels.open_all(merged, [tmp_path / "s.zarr"])


def test_a_label_array_of_the_older_format_is_named(tmp_path):
    arr = zarr.create_array(store=str(tmp_path / "old.zarr"), shape=(20, 32), dtype=np.uint16)
    arr.attrs["aiod_substack"] = 0
    with pytest.raises(AiodError, match="old.zarr: written by an older aiod"):
        substack_labels.open_substack_labels(tmp_path / "old.zarr")
