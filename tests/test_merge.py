"""The merge: split an image into substacks, segment each box with a stand-in model, merge.

A *perfect* local model (ground truth cropped to the box, relabelled by connected pieces, ids
shuffled) must give back the ground truth object for object. A *noisy* one (each object eroded,
kept or dilated by one voxel, independently per substack) must score like the same noisy model
run on the whole image.
"""

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from aiod import boxes, merge, metrics, seams, substack_labels, synthetic
from aiod.errors import AiodError
from aiod.planner import plan_substacks
from pipeline_helpers import same_partition


def split_and_merge(tmp_path, gt, grid, halo, model, seed=0, output=None, with_plan=True, **kw):
    """Segment every box with `model`, write the label files as SEGMENT does (with the plan,
    or without it: `with_plan=False`), merge them."""
    axes = "ZYX"[-gt.ndim :]
    plan = plan_substacks(gt.shape, axes, grid, (halo,) * gt.ndim, bytes_per_voxel=1, memory_budget=None)
    rng = np.random.default_rng(seed)
    paths = []
    for sub in plan.substacks:
        path = tmp_path / f"sub{sub.index}_{seed}_{with_plan}.zarr"
        substack_labels.write_substack_labels(path, model(gt, sub.box_slices, rng), sub.index,
                                              plan=plan if with_plan else None)
        paths.append(path)
    holder = {}

    def create(dtype):
        holder["out"] = np.zeros(gt.shape, dtype=dtype) if output is None else output(dtype)
        return holder["out"]

    stats = merge.merge_substacks(plan, paths[::-1], create, **kw)
    return np.asarray(holder["out"][...]), stats


def nuclei_2d():
    # centres on the corners where 4 substacks meet for 2x2 and 4x4 grids of 256 x 256
    corners = [(y, x) for y in (64, 128, 192) for x in (64, 128, 192)]
    return synthetic.touching_nuclei((256, 256), n=140, radius=(6, 12), seed=3, centres=corners)


@pytest.fixture(scope="module")
def nuclei3d():
    return synthetic.touching_nuclei((64, 64, 64), n=60, radius=(5, 9), seed=4, centres=[(32, 32, 32)])


@pytest.mark.parametrize("halo", [16, 32])
@pytest.mark.parametrize("grid", [(2, 2), (4, 4)])
def test_perfect_model_gives_back_every_object_2d(tmp_path, grid, halo):
    gt = nuclei_2d()
    out, stats = split_and_merge(tmp_path, gt, grid, halo, synthetic.perfect_local_model)
    assert same_partition(gt, out)
    assert stats.n_objects == len(np.unique(gt)) - 1


@pytest.mark.parametrize("halo", [16, 32])
def test_perfect_model_gives_back_every_object_on_an_8x8_grid(tmp_path, halo):
    gt = synthetic.touching_nuclei((512, 512), n=500, radius=(6, 12), seed=6)
    out, stats = split_and_merge(tmp_path, gt, (8, 8), halo, synthetic.perfect_local_model)
    assert same_partition(gt, out) and stats.n_substacks == 64


@pytest.mark.parametrize("halo", [16, 32])
@pytest.mark.parametrize("grid", [(2, 2, 2), (4, 4, 4)])
def test_perfect_model_gives_back_every_object_3d(tmp_path, nuclei3d, grid, halo):
    out, _ = split_and_merge(tmp_path, nuclei3d, grid, halo, synthetic.perfect_local_model)
    assert same_partition(nuclei3d, out)


@pytest.mark.parametrize("halo", [16, 32])
def test_long_and_u_shaped_objects_are_neither_split_nor_fused_3d(tmp_path, halo):
    gt = synthetic.long_and_nonconvex((64, 160, 160), seed=7, halo=halo // 2)
    out, _ = split_and_merge(tmp_path, gt, (4, 4, 4), halo, synthetic.perfect_local_model)
    assert same_partition(gt, out)


def test_object_crossing_corner_of_four_substacks_stays_one_object(tmp_path):
    gt = np.zeros((64, 64), dtype=np.uint32)
    yy, xx = np.mgrid[:64, :64]
    gt[(yy - 32) ** 2 + (xx - 32) ** 2 <= 64] = 7
    out, stats = split_and_merge(tmp_path, gt, (2, 2), 4, synthetic.perfect_local_model)
    assert stats.n_objects == 1 and stats.n_nodes == 4
    assert np.array_equal(out, (gt != 0).astype(np.uint32))


def test_object_crossing_corner_of_eight_substacks_stays_one_object(tmp_path, nuclei3d):
    out, _ = split_and_merge(tmp_path, nuclei3d, (2, 2, 2), 8, synthetic.perfect_local_model)
    assert len(np.unique(out[31:33, 31:33, 31:33])) == 1 and out[32, 32, 32] != 0
    assert same_partition(nuclei3d, out)


@pytest.mark.parametrize("halo", [16, 32])
@pytest.mark.parametrize("grid", [(2, 2), (4, 4)])
def test_long_and_u_shaped_objects_are_neither_split_nor_fused(tmp_path, grid, halo):
    gt = synthetic.long_and_nonconvex((256, 256), seed=5, halo=halo)
    out, _ = split_and_merge(tmp_path, gt, grid, halo, synthetic.perfect_local_model)
    assert same_partition(gt, out)


def test_u_seen_as_two_pieces_by_one_substack_is_one_object(tmp_path):
    gt = np.zeros((64, 64), dtype=np.uint32)
    gt[10:50, 20:26] = gt[10:50, 40:46] = gt[44:50, 20:46] = 3  # U, base at the bottom
    plan_halo = 4  # the top substack's box (rows 0..36) cuts the base off: it sees two arms
    out, stats = split_and_merge(tmp_path, gt, (2, 1), plan_halo, synthetic.perfect_local_model)
    assert stats.n_nodes == 3 and stats.n_objects == 1
    assert same_partition(gt, out)


def test_touching_objects_across_a_seam_stay_apart(tmp_path):
    gt = np.zeros((64, 64), dtype=np.uint32)
    gt[10:32, 10:50] = 1  # ends exactly on the seam at row 32
    gt[32:54, 10:50] = 2  # starts on the other side, touching along the whole seam
    out, stats = split_and_merge(tmp_path, gt, (2, 1), 8, synthetic.perfect_local_model)
    assert stats.n_objects == 2 and stats.n_candidates == 1 and stats.n_links == 0
    assert same_partition(gt, out)


def test_bar_many_times_longer_than_halo_is_one_object(tmp_path):
    gt = np.zeros((32, 256), dtype=np.uint32)
    gt[12:20, 4:252] = 9
    out, stats = split_and_merge(tmp_path, gt, (1, 8), 4, synthetic.perfect_local_model)
    assert stats.n_nodes == 8 and stats.n_objects == 1
    assert np.array_equal(out, (gt != 0).astype(np.uint32))


def score(gt, pred):
    return metrics.match_labels(gt, pred, 0.5).f1, metrics.split_fused(gt, pred)[1]


@pytest.mark.parametrize("halo", [16, 32])
@pytest.mark.parametrize("grid", [(2, 2), (4, 4)])
def test_noisy_model_scores_like_whole_image_2d(tmp_path, grid, halo):
    gt = nuclei_2d()
    whole = synthetic.noisy_local_model(gt, (slice(None),) * 2, np.random.default_rng(9))
    f1_whole, fused_whole = score(gt, whole)
    for seed in range(3):
        out, _ = split_and_merge(tmp_path, gt, grid, halo, synthetic.noisy_local_model, seed)
        f1, fused = score(gt, out)
        assert f1 >= f1_whole - 0.002 and fused <= fused_whole


@pytest.mark.parametrize("halo", [16, 32])
@pytest.mark.parametrize("grid", [(2, 2, 2), (4, 4, 4)])
def test_noisy_model_scores_like_whole_image_3d(tmp_path, nuclei3d, grid, halo):
    whole = synthetic.noisy_local_model(nuclei3d, (slice(None),) * 3, np.random.default_rng(9))
    f1_whole, fused_whole = score(nuclei3d, whole)
    out, _ = split_and_merge(tmp_path, nuclei3d, grid, halo, synthetic.noisy_local_model)
    f1, fused = score(nuclei3d, out)
    assert f1 >= f1_whole - 0.002 and fused <= fused_whole


def test_same_inputs_give_byte_identical_output(tmp_path):
    gt = nuclei_2d()

    def zarr_out(dtype):
        return zarr.create_array(store={}, shape=gt.shape, dtype=dtype, chunks=(100, 100))

    a, _ = split_and_merge(tmp_path, gt, (4, 4), 16, synthetic.noisy_local_model, 1, zarr_out)
    b, _ = split_and_merge(tmp_path, gt, (4, 4), 16, synthetic.noisy_local_model, 1, zarr_out)
    assert a.dtype == np.uint32 and a.tobytes() == b.tobytes()


def test_ids_are_consecutive_from_one(tmp_path):
    out, stats = split_and_merge(tmp_path, nuclei_2d(), (4, 4), 16, synthetic.noisy_local_model)
    ids = np.unique(out)
    assert np.array_equal(ids, np.arange(stats.n_objects + 1))


def test_ids_follow_smallest_substack_then_local_label(tmp_path):
    gt = np.zeros((16, 16), dtype=np.uint8)
    gt[1:3, 4:6], gt[1:3, 1:3], gt[12:14, 1:3] = 5, 9, 2  # 5 and 9 in substack 0, 2 in 2

    def identity(g, box, rng):
        return g[box]

    out, _ = split_and_merge(tmp_path, gt, (2, 2), 2, identity)
    assert out[1, 4] == 1 and out[1, 1] == 2 and out[12, 1] == 3


def test_more_than_uint32_objects_switch_to_uint64(tmp_path, monkeypatch):
    monkeypatch.setattr(merge, "UINT32_MAX_OBJECTS", 10)
    gt = nuclei_2d()
    out, stats = split_and_merge(tmp_path, gt, (2, 2), 16, synthetic.perfect_local_model)
    assert out.dtype == np.uint64 and stats.dtype == "uint64"
    assert same_partition(gt, out)


def test_missing_substack_is_named(tmp_path):
    plan = plan_substacks((32, 32), "YX", (2, 1), (4, 4), bytes_per_voxel=1, memory_budget=None)
    substack_labels.write_substack_labels(tmp_path / "a.zarr", np.zeros(plan.substacks[0].box_shape, np.uint8), 0)
    with pytest.raises(AiodError, match=r"substacks \[1\] are missing"):
        merge.merge_substacks(plan, [tmp_path / "a.zarr"], lambda d: np.zeros((32, 32), d))


def test_substack_of_wrong_shape_is_named(tmp_path):
    plan = plan_substacks((32, 32), "YX", (2, 1), (4, 4), bytes_per_voxel=1, memory_budget=None)
    for i in range(2):
        substack_labels.write_substack_labels(tmp_path / f"{i}.zarr", np.zeros((5, 5), np.uint8), i)
    paths = [tmp_path / "0.zarr", tmp_path / "1.zarr"]
    with pytest.raises(AiodError, match=r"0.zarr: substack 0 has shape \(5, 5\), its box is \(20, 32\)"):
        merge.merge_substacks(plan, paths, lambda d: np.zeros((32, 32), d))


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    grid=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    halo=st.integers(2, 24),
)
def test_perfect_model_on_any_nuclei_grid_and_halo_gives_back_the_objects(tmp_path_factory, seed, grid, halo):
    gt = synthetic.touching_nuclei((128, 128), n=60, radius=(4, 10), seed=seed)
    out, _ = split_and_merge(tmp_path_factory.mktemp("m"), gt, grid, halo, synthetic.perfect_local_model, seed)
    assert same_partition(gt, out)


def test_empty_image_merges_to_zero_objects(tmp_path):
    gt = np.zeros((32, 32), dtype=np.uint16)
    out, stats = split_and_merge(tmp_path, gt, (2, 2), 4, synthetic.perfect_local_model)
    assert stats.n_objects == 0 and out.dtype == np.uint32 and not out.any()


def test_without_overlap_objects_touching_across_a_seam_are_joined(tmp_path):
    gt = np.zeros((16, 16), dtype=np.uint32)
    gt[2:8, 4:12], gt[8:14, 4:12] = 1, 2  # touch along the seam at row 8
    out, stats = split_and_merge(tmp_path, gt, (2, 1), 0, synthetic.perfect_local_model)
    assert stats.n_objects == 1  # no shared region to tell them apart: documented behaviour


def test_neighbour_outside_the_shared_region_is_not_joined_to_an_object_crossing_the_seam(tmp_path):
    gt = np.zeros((16, 16), dtype=np.uint32)
    gt[4:12, 2:7] = 1  # ends one column before the shared region (columns 7 and 8)
    gt[4:12, 7:13] = 2  # touches it and crosses the seam at column 8
    out, stats = split_and_merge(tmp_path, gt, (1, 2), 1, synthetic.perfect_local_model)
    assert stats.n_objects == 2
    assert same_partition(gt, out)


def test_sorted_fallbacks_for_many_candidates_give_the_same_mask(tmp_path, monkeypatch):
    """Dense tables (pair marks and counts) and their sorted fallbacks for many candidates
    must merge to the same bytes."""
    gt = nuclei_2d()
    a, sa = split_and_merge(tmp_path, gt, (4, 4), 16, synthetic.noisy_local_model, 2)
    for name in ("PAIR_TABLE", "SEEN_TABLE"):
        monkeypatch.setattr(seams, name, 0)
    b, sb = split_and_merge(tmp_path, gt, (4, 4), 16, synthetic.noisy_local_model, 2)
    assert a.tobytes() == b.tobytes() and sa == sb


def test_links_are_those_of_the_sorted_overlap_count(tmp_path):
    """Candidates and links of the dense, run-length pair counting equal a plain count of
    every label pair in the shared region."""
    gt = synthetic.touching_nuclei((64, 64, 64), n=60, radius=(5, 9), seed=4)
    plan = plan_substacks(gt.shape, "ZYX", (2, 2, 2), (8,) * 3, bytes_per_voxel=1, memory_budget=None)
    rng = np.random.default_rng(3)
    for sub in plan.substacks:
        labels = synthetic.noisy_local_model(gt, sub.box_slices, rng)
        substack_labels.write_substack_labels(tmp_path / f"{sub.index}.zarr", labels, sub.index, plan=plan)
    files = substack_labels.open_all(plan, [tmp_path / f"{sub.index}.zarr" for sub in plan.substacks])
    for s in range(len(plan.substacks)):
        for t in [t for t in plan.neighbours(s) if t > s]:
            cand, linked = seams.candidates_and_links(plan, files, s, t, 0.5)
            shared = boxes.intersect(plan.substacks[s].box, plan.substacks[t].box)
            x, y = files[s].read(shared).ravel(), files[t].read(shared).ravel()
            want = [
                (a, b) for a, b in cand
                if 0 < np.count_nonzero((x == a) & (y == b)) >= 0.5 * min(np.count_nonzero(x == a), np.count_nonzero(y == b))
            ]
            assert [tuple(p) for p in linked] == want
