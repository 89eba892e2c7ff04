"""Cellpose 3 through its adapter, in its own environment, on real annotated nuclei.

The model is trained briefly in the session from random weights (tests/families/train_cellpose.py,
on the real 512x512 nuclei image) and loaded from its file, as the registry hands over a
published model file; the same file segments 2D images and, with do_3D or per-slice stitching,
volumes. Nothing is downloaded: the tests run with HOME pointing to an empty folder.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from aiod.metrics import match_labels
from family_envs import nuclei_data, run_in_family, segment_in_family, split_vs_whole, trained_artifact  # noqa: F401

pytestmark = pytest.mark.families

# F1@0.5 against the bundled ground truth (tests/families/train_cellpose.py: 120 epochs from
# random weights, the last 50 with a decaying learning rate; CPU, seeded, deterministic kernels).
# Training is not bit-reproducible across CPUs, so the floors sit well under the spread measured
# on a 2-core machine of the CI kind (seed x torch threads -> 2D F1; per-slice stitching: objects,
# median slices per object; training seconds on a machine loaded by other jobs):
#   seed 0, 1 thread:  0.912 (tp 109, fp 5, fn 16); 34 objects, median 10.5; 932 s
#   seed 1, 2 threads: 0.885 (tp 104, fp 6, fn 21); stitching not measured; 1414 s
# Before the learning-rate decay (100 epochs at a constant rate) the same seed and thread count
# gave 0.744, 0.870 and 0.905 on three such machines: the 0.744 failed the 2D floor. The
# synthetic volume with do_3D at diameter 11 (the 2D model on 3D) gave 0.693 (100 epochs).
F1_FLOOR_2D = 0.75
F1_FLOOR_3D = 0.5
VOLUME_DIAMETER = 11.0  # mean equivalent diameter of the 3D volume's annotated nuclei


def test_cellpose_2d_gives_uint32_labels_that_find_the_annotated_nuclei(trained_artifact, nuclei_data, tmp_path):  # noqa: F811
    labels, record = segment_in_family("cellpose", "nuclei", trained_artifact("cellpose"),
                                       nuclei_data / "nuclei_2d.tif", tmp_path / "labels.npy")
    assert labels.shape == (512, 512)
    assert labels.dtype == np.uint32
    assert record["scores"] is None  # cellpose has no per-object score
    truth = tifffile.imread(nuclei_data / "nuclei_2d_mask.tif")
    matched = match_labels(truth, labels, 0.5)
    assert matched.f1 >= F1_FLOOR_2D, matched


def test_cellpose_do_3d_segments_a_volume_with_the_2d_model(trained_artifact, nuclei_data, tmp_path):  # noqa: F811
    labels, _ = segment_in_family("cellpose", "nuclei", trained_artifact("cellpose", 3), nuclei_data / "nuclei_3d.tif",
                                  tmp_path / "labels.npy", params={"diameter": VOLUME_DIAMETER, "do_3D": True})
    truth = tifffile.imread(nuclei_data / "nuclei_3d_mask.tif")
    assert labels.shape == truth.shape == (31, 61, 57)
    assert labels.dtype == np.uint32
    assert match_labels(truth, labels, 0.5).f1 >= F1_FLOOR_3D


def test_cellpose_per_slice_with_stitching_links_slices_into_3d_objects(trained_artifact, nuclei_data, tmp_path):  # noqa: F811
    labels, _ = segment_in_family("cellpose", "nuclei", trained_artifact("cellpose", 3), nuclei_data / "nuclei_3d.tif",
                                  tmp_path / "labels.npy",
                                  params={"diameter": VOLUME_DIAMETER, "do_3D": False, "stitch_threshold": 0.2})
    assert labels.shape == (31, 61, 57) and labels.dtype == np.uint32
    ids = np.unique(labels)[1:]
    slices_per_object = [len(np.unique(np.nonzero(labels == i)[0])) for i in ids]
    assert len(ids) > 10  # measured 34 (see above)
    assert np.median(slices_per_object) >= 3  # nuclei span several slices: one id through them (measured 10.5)


def test_cellpose_3d_without_do_3d_or_stitching_is_refused(trained_artifact, nuclei_data, tmp_path):  # noqa: F811
    proc = run_in_family("cellpose", "segment.py", "cellpose", "nuclei", trained_artifact("cellpose", 3),
                         nuclei_data / "nuclei_3d.tif", tmp_path / "labels.npy", "--params", '{"do_3D": false}',
                         cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "a 3D substack needs do_3D, or a stitch_threshold above 0" in proc.stderr


def test_cellpose_split_in_four_gives_the_whole_image_objects_at_a_rescaled_diameter(
        trained_artifact, nuclei_data, tmp_path):  # noqa: F811
    # the real nuclei tiled 2x2 (1024x1024, ~450 nuclei) at diameter 17: cellpose upscales by
    # 30/17 and tiles; the boxes start on pixels no stride divides and see ~66% of the image
    image = tmp_path / "nuclei_1024.tif"
    tifffile.imwrite(image, np.tile(tifffile.imread(nuclei_data / "nuclei_2d.tif"), (2, 2)))
    run = split_vs_whole("cellpose", "nuclei", trained_artifact("cellpose"), image, (2, 2), tmp_path / "run",
                         params={"diameter": 17})
    starts = [s for box in run["starts"] for s in box]
    assert any(s % 16 for s in starts) and 0 < max(starts) < 512, run
    assert run["whole_objects"] > 300
    assert run["aligned"]["same"] and run["aligned"]["f1"] == 1.0, run


def test_cellpose_do_3d_split_in_two_gives_the_whole_volume_objects(trained_artifact, nuclei_data, tmp_path):  # noqa: F811
    # the volume 12 times along X (31x61x684) at diameter 30 (no resize; halo 288): the second box
    # starts at X 54 and holds 92% of the volume; every plane of the three orientations is tiled
    image = tmp_path / "nuclei_3d_x12.tif"
    tifffile.imwrite(image, np.tile(tifffile.imread(nuclei_data / "nuclei_3d.tif"), (1, 1, 12)), metadata={"axes": "ZYX"})
    run = split_vs_whole("cellpose", "nuclei", trained_artifact("cellpose", 3), image, (1, 1, 2), tmp_path / "run",
                         params={"diameter": 30, "do_3D": True})
    assert run["starts"][1][2] == 54, run
    assert run["whole_objects"] > 200
    assert run["aligned"]["same"] and run["aligned"]["f1"] == 1.0, run


def test_cellpose_missing_model_file_is_an_error_not_a_download(nuclei_data, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    proc = run_in_family("cellpose", "segment.py", "cellpose", "cyto3", tmp_path / "cyto3",
                         nuclei_data / "nuclei_2d.tif", tmp_path / "labels.npy", cwd=tmp_path, check=False,
                         env={"HOME": str(home)})
    assert proc.returncode != 0
    assert "does not exist (cellpose would download cyto3 instead)" in proc.stderr
    assert not (home / ".cellpose").exists()
    assert not (tmp_path / "labels.npy").exists()
