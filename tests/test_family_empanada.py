"""Empanada (MitoNet architecture) through its adapter and empanada-napari's engines, headless, in
its own environment.

The model is MitoNet's architecture with random weights (tests/families/build_empanada.py), saved
as TorchScript with MitoNet_v1's config, loaded as the registry hands it over. Random weights
segment nothing meaningful, so these tests check the plumbing, not accuracy: shapes, uint32
instance ids 1..n, deterministic output, substack-sized crops, objects tracked through z (stack
mode) and the ortho-plane consensus, nothing written into $HOME or the artifact's folder, nothing
downloaded. The first tests need no environment: the conversion of panoptic ids to instances.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from aiod.models import empanada
from family_artifacts import (CONTRACT, assert_instance_labels, assert_left_no_trace, built_artifact,  # noqa: F401
                              contract_run, family_images, family_run, trained_artifact)
from family_envs import nuclei_data, split_vs_whole  # noqa: F401

D = empanada.LABEL_DIVISOR
# Small objects of the random network are kept (min_size 10), and 3D objects need only span 2
# voxels in each direction (min_extent 2): the 4-slice test volume is thin.
PARAMS = CONTRACT["empanada"]["params"]
ORTHO_BOX = [[0, 4], [0, 16], [0, 24]]


def test_empanada_panoptic_ids_become_instances_numbered_from_one():
    pan = np.array([[0, D + 7, D + 7], [D + 3, D + 3, 0], [2 * D, 0, D + 9]], dtype=np.int32)  # 2*D: class 2, no instance
    labels = empanada.instances_2d(pan, thing_list=[1], min_size=0)
    np.testing.assert_array_equal(labels, [[0, 2, 2], [1, 1, 0], [0, 0, 3]])
    assert labels.dtype == np.uint32


def test_empanada_min_size_removes_small_instances_and_renumbers():
    pan = np.array([[D + 1, D + 1, D + 2], [D + 1, D + 1, 0]], dtype=np.int32)
    np.testing.assert_array_equal(empanada.instances_2d(pan, thing_list=[1], min_size=2), [[1, 1, 0], [1, 1, 0]])


def test_empanada_image_that_is_all_objects_keeps_every_object():
    pan = np.array([[D + 1, D + 2]], dtype=np.int32)
    np.testing.assert_array_equal(empanada.instances_2d(pan, thing_list=[1], min_size=0), [[1, 2]])


@pytest.fixture(scope="module")
def empanada_run(built_artifact, contract_run, tmp_path_factory):  # noqa: F811
    # its contract's run (tests/test_adapter_contract.py; stack mode, tracked through z), shared,
    # and ortho-plane inference, which segments every xz and yz plane too: on a small volume (a
    # corner of the test volume), whole, so that its tiles reach past the image's ends
    work = tmp_path_factory.mktemp("empanada")
    images = family_images(work / "images")
    small = work / "images" / "corner_3d.tif"
    tifffile.imwrite(small, tifffile.imread(images["3d"])[tuple(slice(a, b) for a, b in ORTHO_BOX)],
                     photometric="minisblack", metadata={"axes": "ZYX"})
    ortho = family_run(built_artifact("empanada"), work / "orthoplane",
                       [{"name": "volume", "image": small, "box": ORTHO_BOX}], {**PARAMS, "mode": "orthoplane"})
    return {**contract_run("empanada"), "ortho": ortho}


@pytest.mark.families
def test_empanada_gives_no_per_object_scores_and_leaves_no_trace_in_orthoplane_mode(empanada_run):
    assert empanada_run["record"]["runs"]["image_0"]["scores"] is None  # the engines give no per-object score
    assert_left_no_trace(empanada_run["ortho"])


@pytest.mark.families
def test_empanada_3d_orthoplane_consensus_gives_instances(empanada_run):
    assert_instance_labels(empanada_run["ortho"]["runs"]["volume_0"], (4, 16, 24))


@pytest.mark.families
def test_empanada_split_in_two_gives_the_whole_image_objects(built_artifact, nuclei_data, tmp_path):  # noqa: F811
    # real nuclei, 512x1024, split 1x2 (halo 388: a 256-px tile and an object): the second box
    # starts at X 112 and sees 912 of the 1024 columns. MitoNet evaluated once over each box, as
    # empanada-napari does, pools its ASPP branch and picks its PointRend points over the box, so
    # its split differs from its whole all over; on tiles anchored to the image it does not
    built = built_artifact("empanada")
    image = tmp_path / "nuclei_512x1024.tif"
    tifffile.imwrite(image, np.tile(tifffile.imread(nuclei_data / "nuclei_2d.tif"), (1, 2)))
    run = split_vs_whole("empanada", built["version"], built["artifact"], image, (1, 2), tmp_path / "run",
                         params=PARAMS, config=built["config"], library=True)
    assert run["starts"] == [[0, 0], [0, 112]] and run["align"] == [16, 16], run
    assert run["whole_objects"] > 50, run
    assert run["aligned"]["same"] and run["aligned"]["f1"] == 1.0, run
    assert not run["library"]["same"] and run["library"]["f1"] < 0.99, run  # the engines' own pass, split
