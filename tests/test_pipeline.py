"""The whole pipeline on the real Nextflow engine: results, splitting, caching, resume, stub.

One split run and one unsplit run of the demo data are shared by the tests of this file (they
are the expensive part); every test then checks one behaviour of them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

from aiod import demo, metrics, ngff, synthetic
from aiod.imageio import open_image
from pipeline_helpers import cache_entries, processes, read_mask, run_pipeline, trace_rows, tree_digest

pytestmark = pytest.mark.pipeline
IDS = ["field_1", "field_2", "field_3", "field_4", "volume", "twochannel"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The demo set plus a two-channel CZYX OME-Zarr whose nuclei are in channel 1."""
    folder = tmp_path_factory.mktemp("demo")
    sheet = demo.write_demo(folder)
    gt = synthetic.touching_nuclei((24, 96, 96), n=20, radius=(6.0, 9.0), seed=77)
    other = synthetic.render_nuclei(synthetic.touching_nuclei((24, 96, 96), n=20, radius=(6.0, 9.0), seed=78), seed=1)
    ngff.write_image(folder / "twochannel.ome.zarr", np.stack([other, synthetic.render_nuclei(gt, seed=79)]), axes="CZYX")
    tifffile.imwrite(folder / "twochannel_gt.tif", gt)
    with open(sheet, "a") as fh:
        fh.write("twochannel,twochannel.ome.zarr,,1,twochannel_gt.tif\n")
    return folder, sheet


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, data):
    """2x2 (2D) and 2x2x2 (3D) substacks, TIFF copies requested."""
    folder, sheet = data
    work = tmp_path_factory.mktemp("split")
    run_pipeline(work, "--input", str(sheet), "--outdir", str(work / "results"), "--root_dir", str(work / "root"),
                 "--num_substacks", "2", "--save_tiff", "--trace_report_suffix", "first")
    return work


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, data):
    """One substack per image; each result published with its image (--publish_image)."""
    folder, sheet = data
    work = tmp_path_factory.mktemp("whole")
    run_pipeline(work, "--input", str(sheet), "--outdir", str(work / "results"), "--root_dir", str(work / "root"),
                 "--num_substacks", "1", "--publish_image", "--trace_report_suffix", "first")
    return work


def ground_truth(folder, sample_id):
    return tifffile.imread(folder / f"{sample_id}_gt.tif")


def test_split_run_segments_all_small_substacks_in_one_task_and_merges_each_image(split_run):
    rows = trace_rows(split_run / "results", "first")
    assert len(processes(rows, "PLAN", "COMPLETED")) == 1  # six small images: one PLAN task
    segment = processes(rows, "SEGMENT", "COMPLETED")
    assert [r["tag"] for r in segment] == [f"p0.1: {4 * 4 + 8 + 8} substacks"]  # the model loaded once
    assert len(processes(rows, "MERGE", "COMPLETED")) == 6
    assert len(processes(rows, "FINALIZE", "COMPLETED")) == 6  # each merged image published as it is done


def test_images_of_one_substack_need_no_merge_and_are_published_together(whole_run):
    rows = trace_rows(whole_run / "results", "first")
    assert len(processes(rows, "SEGMENT", "COMPLETED")) == 1 and processes(rows, "MERGE") == []
    assert [r["tag"] for r in processes(rows, "FINALIZE", "COMPLETED")] == ["field_1..twochannel (6 images)"]
    assert all(json.loads((whole_run / "results" / f"{i}.json").read_text())["n_objects"] > 0 for i in IDS)


@pytest.mark.parametrize("sample_id", IDS)
def test_masks_match_ground_truth(split_run, data, sample_id):
    mask = read_mask(split_run / "results", sample_id)
    score = metrics.match_labels(ground_truth(data[0], sample_id), mask, thresh=0.5)
    assert score.f1 >= 0.95, score


@pytest.mark.parametrize("sample_id", IDS)
def test_split_gives_the_same_objects_as_one_substack(split_run, whole_run, sample_id):
    split = read_mask(split_run / "results", sample_id)
    whole = read_mask(whole_run / "results", sample_id)
    assert metrics.match_labels(whole, split, thresh=0.5).f1 >= 0.999


def test_masks_are_uint32_ome_zarr_labels_with_multiscales(split_run):
    root = zarr.open_group(str(split_run / "results" / "volume.ome.zarr"), mode="r")
    assert root["labels"].attrs["ome"]["labels"] == ["classical_nuclei"]
    label = root["labels/classical_nuclei"]
    multiscales = label.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in multiscales["axes"]] == ["z", "y", "x"]
    assert len(multiscales["datasets"]) >= 2
    level0 = label[multiscales["datasets"][0]["path"]]
    assert level0.dtype == np.uint32 and level0.shape == demo.SHAPE_3D
    assert level0.chunks != level0.shape or max(level0.shape) <= 128


def test_tiff_copy_equals_the_zarr_mask(split_run):
    tiff = tifffile.imread(split_run / "results" / "field_1.tif")
    np.testing.assert_array_equal(tiff, read_mask(split_run / "results", "field_1"))


def test_results_are_in_the_cache_with_a_manifest(split_run):
    entries = cache_entries(split_run / "root")
    assert len(entries) == 6
    for entry in entries:
        manifest = json.loads((entry / "manifest.json").read_text())
        assert manifest["key"] == entry.name
        assert manifest["model"]["family"] == "classical"
        assert manifest["n_objects"] > 0
        assert set(manifest["timings"]["substacks"]) == {str(i) for i in range(len(manifest["plan"]["substacks"]))}
    assert (split_run / "root" / "README.md").is_file()
    record = json.loads((split_run / "results" / "volume.json").read_text())
    assert record["cache_hit"] is False and record["n_objects"] == int(read_mask(split_run / "results", "volume").max())


def test_second_identical_run_segments_nothing_and_publishes_from_the_cache(split_run, data):
    before = {i: tree_digest(split_run / "results" / f"{i}.ome.zarr") for i in IDS}
    proc = run_pipeline(split_run, "--input", str(data[1]), "--outdir", str(split_run / "results"),
                        "--root_dir", str(split_run / "root"), "--num_substacks", "2", "--trace_report_suffix", "second")
    rows = trace_rows(split_run / "results", "second")
    assert processes(rows, "SEGMENT") == [] and processes(rows, "MERGE") == []
    assert len(processes(rows, "PLAN", "COMPLETED")) == 1 and processes(rows, "FINALIZE") == []  # PLAN published the hits
    assert {i: tree_digest(split_run / "results" / f"{i}.ome.zarr") for i in IDS} == before
    assert "6 image(s): 0 computed, 6 from the cache" in proc.stdout
    assert json.loads((split_run / "results" / "volume.json").read_text())["cache_hit"] is True


def assert_opens_with_its_image(result, pixels):
    from test_ngff import ome_zarr_nodes

    nodes = {n.zarr.path.rstrip("/"): n for n in ome_zarr_nodes(result)}
    np.testing.assert_array_equal(nodes[str(result)].data[0].compute(), pixels)
    assert str(result / "labels" / "classical_nuclei") in nodes


def test_results_published_with_their_images_open_as_one_ngff_image_from_finalize_and_from_the_cache(whole_run, data):
    """FINALIZE wrote each input image into its result (a TIFF, and an OME-Zarr of two channels,
    both kept); a rerun publishes the cache hits from PLAN, with their images, into a relative
    --outdir; the cache entries hold the masks alone."""
    folder = data[0]
    results = whole_run / "results"
    assert_opens_with_its_image(results / "field_1.ome.zarr", tifffile.imread(folder / "field_1.tif"))
    two = zarr.open_array(store=str(folder / "twochannel.ome.zarr" / "0"), mode="r")[...]
    assert_opens_with_its_image(results / "twochannel.ome.zarr", two)
    assert all(not (entry / "labels.ome.zarr" / "0").exists() for entry in cache_entries(whole_run / "root"))
    run_pipeline(whole_run, "--input", str(data[1]), "--outdir", "again", "--root_dir", str(whole_run / "root"),
                 "--num_substacks", "1", "--publish_image", "--trace_report_suffix", "again")
    rows = trace_rows(whole_run / "again", "again")
    assert processes(rows, "SEGMENT") == [] and processes(rows, "FINALIZE") == []  # PLAN published the hits
    assert_opens_with_its_image(whole_run / "again" / "volume.ome.zarr",
                                open_image(folder / "volume.ome.zarr").read((slice(0, 48), slice(0, 160), slice(0, 160))))
    assert json.loads((whole_run / "again" / "volume.json").read_text())["image_in_result"] is True


def test_a_different_split_is_a_different_cache_entry(split_run, whole_run):
    split_keys = {p.name for p in cache_entries(split_run / "root")}
    whole_keys = {p.name for p in cache_entries(whole_run / "root")}
    assert split_keys.isdisjoint(whole_keys)
