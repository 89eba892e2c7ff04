"""How work is grouped into tasks (aiod.batches): PLAN tasks of images, SEGMENT tasks of substacks."""

import pytest

from aiod import batches
from aiod.batches import BatchRule, Work, parse_batch, plan_groups, segment_batches
from aiod.errors import PlanError


@pytest.mark.parametrize("text, rule", [
    ("auto", BatchRule(voxels=batches.AUTO_VOXELS, seconds=batches.AUTO_SECONDS)), ("1", BatchRule(count=1)), (" 20 ", BatchRule(count=20)),
    ("64M", BatchRule(voxels=64 * 2**20)), ("2g", BatchRule(voxels=2 * 2**30)), ("500K", BatchRule(voxels=500 * 1024)),
])
def test_batch_sizes_are_read_as_counts_or_voxels(text, rule):
    assert parse_batch(text) == rule


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "lots", "", "8 GB"])
def test_a_batch_size_that_is_not_one_is_refused_with_what_is_accepted(text):
    with pytest.raises(PlanError, match=r"batch: .* is not 'auto', a number of substacks per task"):
        parse_batch(text)


def test_many_small_fields_share_a_few_segment_tasks_and_ask_for_the_largest_box():
    fields = [Work(f"f{i}", [256 * 256], fixed=100.0, per_voxel=2.0) for i in range(1000)]
    out = segment_batches(fields, parse_batch("auto"), prefix="p0.")
    assert [len(b["items"]) for b in out] == [256, 256, 256, 232]
    assert [b["name"] for b in out] == ["p0.1", "p0.2", "p0.3", "p0.4"]
    assert [item for b in out for item in b["items"]] == [[f"f{i}", 0, 1] for i in range(1000)]
    assert all(b["memory"] == 100 + 2 * 256 * 256 for b in out)  # one box at a time, not their sum


def test_a_large_image_s_boxes_spread_over_tasks_and_small_images_fill_the_next():
    big = Work("big", [2**24, 2**24, 2**23, 2**23, 2**23], fixed=0.0, per_voxel=1.0)
    small = Work("small", [1000], fixed=0.0, per_voxel=1.0)
    out = segment_batches([big, small], parse_batch("auto"))
    assert [b["items"] for b in out] == [[["big", 0, 5]], [["big", 1, 5]], [["big", 2, 5], ["big", 3, 5]],
                                         [["big", 4, 5], ["small", 0, 1]]]
    assert [b["memory"] for b in out] == [2**24, 2**24, 2**23, 2**23]


def test_auto_keeps_a_costly_models_task_to_minutes_of_work():
    # a model at 2700 CPU seconds per megavoxel (44 s per 128x128 field): 16 M voxels of it would be
    # 12 hours in one task
    fields = [Work(f"f{i}", [128 * 128], fixed=0.0, per_voxel=1.0, seconds_per_voxel=2700 / 1e6) for i in range(100)]
    out = segment_batches(fields, parse_batch("auto"))
    assert [len(b["items"]) for b in out] == [21, 21, 21, 21, 16]  # 21 x 44 s >= 900 s
    assert len(segment_batches(fields, parse_batch("16M"))) == 1  # a voxel count given: voxels only


def test_a_count_batches_substacks_by_number_whatever_their_size():
    works = [Work("a", [10, 10, 10], 0.0, 1.0), Work("b", [5], 0.0, 1.0)]
    assert [[i[:2] for i in b["items"]] for b in segment_batches(works, parse_batch("1"))] == [
        [["a", 0]], [["a", 1]], [["a", 2]], [["b", 0]]]
    assert [len(b["items"]) for b in segment_batches(works, parse_batch("3"))] == [3, 1]
    assert segment_batches([], parse_batch("auto")) == []


def test_images_are_planned_in_groups_by_count_and_by_voxels_in_samplesheet_order():
    assert plan_groups([10] * (2 * batches.PLAN_IMAGES + 1)) == [0] * batches.PLAN_IMAGES + [1] * batches.PLAN_IMAGES + [2]
    assert plan_groups([batches.PLAN_VOXELS, 1, 1, batches.PLAN_VOXELS // 2, batches.PLAN_VOXELS // 2, 1]) == [0, 1, 1, 1, 1, 2]
    assert plan_groups([None, None]) == [0, 0] and plan_groups([]) == []
