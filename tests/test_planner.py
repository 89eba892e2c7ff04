"""Substack planning: cores partition the image, boxes are cores plus halo, `auto` fits memory."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiod.errors import PlanError
from aiod.planner import Plan, parse_num_substacks, parse_overlap, plan_substacks


@st.composite
def plans(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(1, 60)) for _ in range(ndim))
    grid = tuple(draw(st.integers(1, min(n, 6))) for n in shape)
    overlap = tuple(draw(st.sampled_from([0, 1, 3, 8, 0.25, 0.5])) for _ in range(ndim))
    align = tuple(draw(st.sampled_from([1, 1, 2, 8, 16])) for _ in range(ndim))
    axes = "ZYX"[-ndim:]
    return plan_substacks(shape, axes, grid, overlap, bytes_per_voxel=1, memory_budget=None, align=align)


@settings(max_examples=60, deadline=None)
@given(plans())
def test_cores_partition_the_image(plan):
    seen = np.zeros(plan.spatial_shape, dtype=np.int32)
    for sub in plan.substacks:
        seen[sub.core_slices] += 1
    assert np.all(seen == 1)


@settings(max_examples=60, deadline=None)
@given(plans())
def test_core_sizes_along_an_axis_differ_by_at_most_one(plan):
    for k in range(len(plan.spatial_shape)):
        sizes = {b - a for a, b in (s.core[k] for s in plan.substacks)}
        assert max(sizes) - min(sizes) <= 1


@settings(max_examples=60, deadline=None)
@given(plans())
def test_box_is_core_grown_by_overlap_start_aligned_and_clipped(plan):
    for sub in plan.substacks:
        for (c0, c1), (b0, b1), h, n, al in zip(sub.core, sub.box, plan.overlap, plan.spatial_shape, plan.align):
            assert 0 <= b0 <= c0 < c1 <= b1 <= n
            assert b0 % al == 0 and b0 <= max(0, c0 - h) < b0 + al  # moved down by less than one step
            assert b1 == min(n, c1 + h)
        inner = np.zeros(sub.box_shape, dtype=bool)
        inner[sub.core_in_box] = True
        assert inner.sum() == math.prod(b - a for a, b in sub.core)


@settings(max_examples=60, deadline=None)
@given(plans())
def test_plan_round_trips_through_dict(plan):
    assert Plan.from_dict(plan.to_dict()) == plan


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(16, 400), st.integers(16, 400), st.integers(16, 400)),
    budget=st.integers(20_000, 20_000_000),
    overlap=st.integers(0, 8),
)
def test_auto_respects_the_memory_budget(shape, budget, overlap):
    try:
        plan = plan_substacks(shape, "ZYX", "auto", (overlap,) * 3, bytes_per_voxel=2, memory_budget=budget)
    except PlanError:
        return
    assert all(math.prod(s.box_shape) * 2 <= budget for s in plan.substacks)


def test_auto_uses_one_substack_when_the_image_fits():
    plan = plan_substacks((64, 64), "YX", "auto", (8, 8), bytes_per_voxel=4, memory_budget=10**6)
    assert plan.grid == (1, 1) and plan.substacks[0].box == ((0, 64), (0, 64))


def test_auto_splits_the_longest_axis_first():
    plan = plan_substacks((100, 1000, 1000), "ZYX", "auto", (0, 0, 0), bytes_per_voxel=1, memory_budget=50_000_000)
    assert plan.grid == (1, 2, 1)


def test_auto_takes_the_fewest_substacks_that_fit():
    budget = 3 * 300 * 300  # three 300 x 300 cores' worth, no halo
    plan = plan_substacks((900, 900), "YX", "auto", (0, 0), bytes_per_voxel=1, memory_budget=budget)
    assert plan.grid in {(2, 2), (3, 1), (1, 3)}
    assert math.prod(plan.grid) <= 4


def test_auto_without_a_budget_is_one_substack():
    plan = plan_substacks((50, 70), "YX", "auto", (4, 4), bytes_per_voxel=1, memory_budget=None)
    assert plan.grid == (1, 1)


def test_auto_raises_when_even_small_boxes_do_not_fit():
    with pytest.raises(PlanError, match=r"num_substacks: 'auto' cannot fit .* needs 2.2 KB per substack, more than substack_memory 1000 B"):
        plan_substacks((64, 64), "YX", "auto", (16, 16), bytes_per_voxel=1, memory_budget=1000)


def test_requested_count_that_does_not_fit_names_the_grid_that_does():
    # 1,1: one 1024 x 1024 box of 4 bytes = 4.0 MB; budget 1.5 MB
    with pytest.raises(PlanError, match=r"^num_substacks 1,1 needs 4.0 MB per substack, more than "
                       r"substack_memory 1.5 MB; 2,2 or more fits, or use auto$"):
        plan_substacks((1024, 1024), "YX", (1, 1), (0, 0), bytes_per_voxel=4, memory_budget=1536 * 1024)
    plan = plan_substacks((1024, 1024), "YX", (2, 2), (0, 0), bytes_per_voxel=4, memory_budget=1536 * 1024)
    assert plan.grid == (2, 2)


def test_requested_count_counts_the_halo():
    with pytest.raises(PlanError, match=r"num_substacks 2,2 needs"):  # 2,2 boxes are 48 x 48
        plan_substacks((64, 64), "YX", (2, 2), (16, 16), bytes_per_voxel=1, memory_budget=2000)


def test_requested_count_without_any_grid_that_fits_says_so():
    with pytest.raises(PlanError, match=r"num_substacks 1,1 needs .*; no grid fits: raise the memory"):
        plan_substacks((64, 64), "YX", (1, 1), (16, 16), bytes_per_voxel=1, memory_budget=1000)


@given(
    shape=st.tuples(st.integers(16, 400), st.integers(16, 400)),
    budget=st.integers(20_000, 2_000_000),
    fixed=st.integers(0, 1_000_000),
)
def test_auto_fits_boxes_in_what_the_fixed_part_leaves(shape, budget, fixed):
    try:
        plan = plan_substacks(shape, "YX", "auto", (4, 4), bytes_per_voxel=3, memory_budget=budget, fixed_bytes=fixed)
    except PlanError:
        return
    assert all(fixed + math.prod(s.box_shape) * 3 <= budget for s in plan.substacks)


def test_the_fixed_part_of_a_task_makes_auto_split_more():
    without = plan_substacks((1000, 1000), "YX", "auto", (0, 0), bytes_per_voxel=1, memory_budget=1_200_000)
    loaded = plan_substacks((1000, 1000), "YX", "auto", (0, 0), bytes_per_voxel=1, memory_budget=1_200_000,
                            fixed_bytes=900_000)  # 300k voxels left: 4 cores of 250k
    assert without.grid == (1, 1) and math.prod(loaded.grid) == 4


def test_a_requested_count_says_how_much_of_its_need_is_the_model():
    with pytest.raises(PlanError, match=r"^num_substacks 1,1 needs 2.0 MB per substack \(1.0 MB of it the model "
                       r"and its libraries\), more than substack_memory 1.5 MB; 2,1 or more fits, or use auto$"):
        plan_substacks((1024, 1024), "YX", (1, 1), (0, 0), bytes_per_voxel=1, memory_budget=1536 * 1024,
                       fixed_bytes=1024 * 1024)


def test_a_budget_the_model_alone_fills_is_refused():
    with pytest.raises(PlanError, match=r"^substack_memory 2.0 GB leaves nothing for the image: the model and its "
                       r"libraries alone take 2.5 GB per task; raise substack_memory$"):
        plan_substacks((64, 64), "YX", "auto", (0, 0), bytes_per_voxel=1, memory_budget=2 * 1024**3,
                       fixed_bytes=int(2.5 * 1024**3))


def test_gpu_memory_limits_auto_when_it_is_the_smaller_budget():
    cpu_only = plan_substacks((512, 512), "YX", "auto", (0, 0), bytes_per_voxel=1, memory_budget=10**9)
    on_gpu = plan_substacks((512, 512), "YX", "auto", (0, 0), bytes_per_voxel=1, memory_budget=10**9,
                            gpu_memory_budget=256 * 256 * 10, gpu_bytes_per_voxel=10)
    assert cpu_only.grid == (1, 1) and on_gpu.grid == (2, 2)


def test_requested_count_that_does_not_fit_the_gpu_names_the_gpu():
    with pytest.raises(PlanError, match=r"^num_substacks 1,1 needs 2.5 MB per substack, more than "
                       r"GPU memory 640.0 KB; 2,2 or more fits, or use auto$"):
        plan_substacks((512, 512), "YX", (1, 1), (0, 0), bytes_per_voxel=1, memory_budget=10**9,
                       gpu_memory_budget=256 * 256 * 10, gpu_bytes_per_voxel=10)


def test_without_a_gpu_budget_the_gpu_factor_is_ignored():
    plan = plan_substacks((512, 512), "YX", "auto", (0, 0), bytes_per_voxel=1, memory_budget=10**9,
                          gpu_bytes_per_voxel=1000)
    assert plan.grid == (1, 1)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(16, 300), st.integers(16, 300)),
    budget=st.integers(5_000, 2_000_000),
    gpu=st.integers(5_000, 2_000_000),
    overlap=st.integers(0, 8),
)
def test_auto_respects_host_and_gpu_budgets(shape, budget, gpu, overlap):
    try:
        plan = plan_substacks(shape, "YX", "auto", (overlap,) * 2, bytes_per_voxel=2, memory_budget=budget,
                              gpu_memory_budget=gpu, gpu_bytes_per_voxel=3)
    except PlanError:
        return
    assert all(math.prod(s.box_shape) * 2 <= budget and math.prod(s.box_shape) * 3 <= gpu for s in plan.substacks)
    # and the same grid, asked for by name, is accepted
    plan_substacks(shape, "YX", plan.grid, (overlap,) * 2, bytes_per_voxel=2, memory_budget=budget,
                   gpu_memory_budget=gpu, gpu_bytes_per_voxel=3)


def test_requested_count_larger_than_the_axis_is_an_error():
    with pytest.raises(PlanError, match=r"num_substacks: 20 substacks along X .* use 1 to 10"):
        plan_substacks((64, 10), "YX", (1, 20), (0, 0), bytes_per_voxel=1, memory_budget=None)


def test_near_equal_split():
    plan = plan_substacks((10,), "X", (3,), (2,), bytes_per_voxel=1, memory_budget=None)
    assert [s.core for s in plan.substacks] == [((0, 4),), ((4, 7),), ((7, 10),)]
    assert [s.box for s in plan.substacks] == [((0, 6),), ((2, 9),), ((5, 10),)]


def test_box_starts_move_down_to_the_networks_stride_and_keep_at_least_the_overlap():
    plan = plan_substacks((1000, 60), "YX", (3, 1), (40, 40), bytes_per_voxel=1, memory_budget=None, align=(16, 1))
    assert [s.core[0] for s in plan.substacks] == [(0, 334), (334, 667), (667, 1000)]
    # unaligned, the boxes would start at 294 and 627
    assert [s.box[0] for s in plan.substacks] == [(0, 374), (288, 707), (624, 1000)]
    assert plan.align == (16, 1) and plan.to_dict()["align"] == [16, 1]


def test_auto_counts_the_growth_of_aligned_boxes():
    # 100 voxels in 2 cores of 50 with overlap 2: boxes of 52; aligned to 32 the second starts at
    # 32 and holds 68, more than a budget of 60 allows, so auto cuts one more substack
    assert plan_substacks((100,), "X", "auto", (2,), bytes_per_voxel=1, memory_budget=60).grid == (2,)
    aligned = plan_substacks((100,), "X", "auto", (2,), bytes_per_voxel=1, memory_budget=60, align=32)
    assert aligned.grid == (3,) and max(s.box_shape[0] for s in aligned.substacks) <= 60


def test_a_plan_written_before_alignment_loads_as_unaligned():
    d = plan_substacks((40, 50), "YX", (2, 2), (4, 4), bytes_per_voxel=1, memory_budget=None).to_dict()
    del d["align"]
    assert Plan.from_dict(d).align == (1, 1)


@pytest.mark.parametrize("align", [0, (8, 8, 8), (8, -1)])
def test_a_bad_alignment_from_an_adapter_is_refused(align):
    with pytest.raises(PlanError, match="align: .* is not one step >= 1 or 2 of them"):
        plan_substacks((40, 50), "YX", (2, 2), (4, 4), bytes_per_voxel=1, memory_budget=None, align=align)


def test_fractional_overlap_is_a_fraction_of_the_core():
    plan = plan_substacks((100, 200), "YX", (2, 2), (0.1, 0.1), bytes_per_voxel=1, memory_budget=None)
    assert plan.overlap == (5, 10)


def test_neighbours_include_faces_edges_and_corners():
    plan = plan_substacks((30, 30, 30), "ZYX", (3, 3, 3), (1, 1, 1), bytes_per_voxel=1, memory_budget=None)
    centre = next(s.index for s in plan.substacks if s.grid_pos == (1, 1, 1))
    corner = next(s.index for s in plan.substacks if s.grid_pos == (0, 0, 0))
    assert len(plan.neighbours(centre)) == 26 and len(plan.neighbours(corner)) == 7


def test_plan_saves_and_loads_json(tmp_path):
    plan = plan_substacks((40, 50), "YX", (2, 3), (4, 4), bytes_per_voxel=1, memory_budget=None)
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan
    assert '"format": "aiod-plan/1"' in (tmp_path / "plan.json").read_text()


def test_plan_with_wrong_format_is_refused():
    with pytest.raises(PlanError, match="'format' is 'other/1', expected 'aiod-plan/1'"):
        Plan.from_dict({"format": "other/1"})


def test_edited_plan_whose_boxes_disagree_is_refused():
    d = plan_substacks((40, 50), "YX", (2, 2), (4, 4), bytes_per_voxel=1, memory_budget=None).to_dict()
    d["substacks"][0]["box"][0] = [0, 30]
    with pytest.raises(PlanError, match="do not match"):
        Plan.from_dict(d)


@pytest.mark.parametrize(
    ("text", "ndim", "expected"),
    [("auto", 3, "auto"), ("AUTO", 2, "auto"), ("4", 3, (4, 4, 4)), ("1,2,2", 3, (1, 2, 2)), (" 2, 3 ", 2, (2, 3))],
)
def test_parse_num_substacks(text, ndim, expected):
    assert parse_num_substacks(text, ndim) == expected


@pytest.mark.parametrize("text", ["1,2", "two", "0", "-1", "2,,2", "1.5"])
def test_bad_num_substacks_names_the_parameter_and_the_form(text):
    with pytest.raises(PlanError, match=r"^num_substacks: .*expected 'auto', one integer >= 1, or 3 comma"):
        parse_num_substacks(text, 3)


@pytest.mark.parametrize(
    ("text", "ndim", "expected"),
    [("32", 2, (32.0, 32.0)), ("8,32,32", 3, (8.0, 32.0, 32.0)), ("0.1", 2, (0.1, 0.1)), ("0", 2, (0.0, 0.0))],
)
def test_parse_overlap(text, ndim, expected):
    assert parse_overlap(text, ndim) == expected


@pytest.mark.parametrize("text", ["1,2", "-3", "x", "nan"])
def test_bad_overlap_names_the_parameter_and_the_form(text):
    with pytest.raises(PlanError, match=r"^overlap: .*expected one number >= 0 or 3 comma"):
        parse_overlap(text, 3)
