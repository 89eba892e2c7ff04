"""Cellpose-SAM (cellpose 4, cpsam) through its adapter, in its own environment.

The first tests need no environment: halo, channel handling, the image-wide scaling, refusing
what would make cellpose download or label 3D slices on their own. The family tests run a
random-weight CPSAM network (tests/families/build_cellposesam.py: SAM's ViT-L at random, saved
with the network's own save_model as the one-file `cpsam` artifact) on the CPU, at the default
precision `auto` (fp32 on a CPU without native bf16, as CI's: there a 128x128 image took 45 s
in fp32, on a loaded machine, and 215 s in emulated bf16; 2 s in bf16 on a CPU with AMX). The
ViT-L is slow there, so the images are small: a 128x128 image (twice: determinism, and once more
as the box the planner gives it), a 4x96x96 volume per slice with stitching (do_3D would run the
network on every xz and yz plane: minutes), and real nuclei of 240x672 split in two (seven
256-px tiles in all). Random weights say nothing about
accuracy: the tests check shapes, uint32 ids 1..n, determinism, ids stitched through z, that the
image-wide scaling is the same for every box, and that nothing is written into $HOME or the
artifact's folder and nothing downloaded.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from aiod.imageio import open_image
from aiod.models import cellposesam, runtime
from family_artifacts import CONTRACT, built_artifact, contract_run, trained_artifact  # noqa: F401
from family_envs import nuclei_data, split_vs_whole  # noqa: F401

# the random readout's flows are not those of its masks: cellpose's flow-error check would drop
# every mask, so it is off (flow_threshold 0); 3D per slice, stitched
PARAMS = CONTRACT["cellposesam"]["params"]


@pytest.mark.parametrize("diameter, halo", [(None, 320), (30.0, 320), (60.0, 638), (15.0, 161)])
def test_cellposesam_halo_is_one_network_tile_and_two_diameters_at_the_image_scale(diameter, halo):
    # 256 px of the resized image (256 x diameter / 30 image px), + the resizes' pixels, + 2 diameters
    assert cellposesam.min_halo(None, {}, SimpleNamespace(diameter=diameter)) == halo
    assert cellposesam.align(None, {}, SimpleNamespace(diameter=diameter)) == 1


def test_cellposesam_channels_are_scaled_with_their_own_image_wide_percentiles():
    array = np.stack([np.full((2, 3), 10.0), np.full((2, 3), 30.0)])  # C, Y, X
    prepared = {"channels": [{"p_low": 0.0, "p_high": 20.0}, {"p_low": 20.0, "p_high": 40.0}]}
    x = runtime.channels_last(array, prepared)
    assert x.shape == (2, 3, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], 0.5)
    np.testing.assert_allclose(x[..., 1], 0.5)


def test_cellposesam_single_channel_substack_gets_a_channel_axis():
    x = runtime.channels_last(np.full((4, 2, 3), 5.0), {"channels": [{"p_low": 0.0, "p_high": 10.0}]})
    assert x.shape == (4, 2, 3, 1)


def test_cellposesam_prepare_refuses_more_than_three_channels(tmp_path):
    tifffile.imwrite(tmp_path / "c4.tif", np.zeros((4, 8, 8), np.uint16), photometric="minisblack",
                     metadata={"axes": "CYX"})
    with open_image(tmp_path / "c4.tif") as image, pytest.raises(ValueError, match="at most 3"):
        cellposesam.prepare(image, None, SimpleNamespace())


def test_cellposesam_prepare_scales_each_of_two_channels(tmp_path):
    data = np.stack([np.arange(64).reshape(8, 8), 100 + np.arange(64).reshape(8, 8)]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c2.tif", data, photometric="minisblack", metadata={"axes": "CYX"})
    with open_image(tmp_path / "c2.tif") as image:
        prepared = cellposesam.prepare(image, None, SimpleNamespace())
    assert [round(c["p_low"]) for c in prepared["channels"]] == [1, 101]


def test_cellposesam_3d_without_do_3D_or_stitching_is_refused():
    params = SimpleNamespace(batch_size=8, diameter=None, flow_threshold=0.4, cellprob_threshold=0.0, min_size=15,
                             niter=None, do_3D=False, stitch_threshold=0.0)
    with pytest.raises(ValueError, match="stitch_threshold"):
        cellposesam.segment(None, np.zeros((2, 8, 8)), params, {"channels": [{"p_low": 0, "p_high": 1}]}, None)


def test_cellposesam_missing_model_file_is_an_error_not_a_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        runtime.local_file(tmp_path / "cpsam", "cellposesam")


@pytest.fixture(scope="module")
def cellposesam_run(contract_run):  # noqa: F811
    return contract_run("cellposesam")  # its contract's run (tests/test_adapter_contract.py), shared


@pytest.mark.families
def test_cellposesam_leaves_a_background_and_gives_no_per_object_scores(cellposesam_run):
    assert (cellposesam_run["runs"]["image_0"] == 0).any()
    assert cellposesam_run["record"]["runs"]["image_0"]["scores"] is None  # cellpose has no per-object score


@pytest.mark.parametrize("flags, expected", [("fpu avx2 avx512f", False), ("fpu avx512_bf16 avx2", True),
                                             ("amx_bf16 amx_tile", True)])
def test_cellposesam_auto_precision_is_bf16_only_where_the_hardware_computes_it(tmp_path, flags, expected):
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert runtime.cpu_has_bf16(str(tmp_path / "cpuinfo")) is expected
    assert not runtime.cpu_has_bf16(str(tmp_path / "absent"))


def test_cellposesam_precision_choice(monkeypatch):
    cpu, gpu = SimpleNamespace(type="cpu"), SimpleNamespace(type="cuda")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert (cellposesam.use_bf16("auto", cpu), cellposesam.use_bf16("auto", gpu)) == (False, True)
    assert cellposesam.use_bf16("bf16", cpu) and not cellposesam.use_bf16("fp32", gpu)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert cellposesam.use_bf16("auto", cpu)


@pytest.mark.families
def test_cellposesam_split_in_two_gives_the_whole_image_objects(built_artifact, nuclei_data, tmp_path):  # noqa: F811
    # real nuclei, 240x672: the whole image is three 256-px tiles of the random-weight ViT-L; split
    # 1x2 (halo 320) each box holds two of them and the second box starts at X 16, on no tile's
    # start: cellpose 4's own eval would tile each box from its own first pixel
    built = built_artifact("cellposesam")
    image = tmp_path / "nuclei_240x672.tif"
    tifffile.imwrite(image, np.tile(tifffile.imread(nuclei_data / "nuclei_2d.tif"), (1, 2))[:240, :672])
    run = split_vs_whole("cellposesam", built["version"], built["artifact"], image, (1, 2), tmp_path / "run",
                         params=PARAMS)
    assert run["starts"] == [[0, 0], [0, 16]], run
    assert run["whole_objects"] > 20, run
    assert run["aligned"]["same"] and run["aligned"]["f1"] == 1.0, run
