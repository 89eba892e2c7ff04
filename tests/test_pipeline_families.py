"""Whole pipeline runs of every learned family, each in its own environment (`-profile venv`), with
its model handed over as the registry does: a lab registry whose version points at the model (a
filepath, and once a loopback URL). StarDist and Cellpose are trained briefly and judged against
the annotated nuclei and against their adapter on the whole image; Cellpose-SAM, SAM2 and Empanada have random weights (tests/families/build_*),
so their pipeline runs are judged against the same adapter run outside the pipeline."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from aiod import registry
from aiod.metrics import match_labels
from artifact_server import ArtifactServer
from family_artifacts import built_artifact, family_images, segment_cases  # noqa: F401 - fixtures
from family_envs import env_python, nuclei_data, segment_in_family, trained_artifact  # noqa: F401 - fixtures
from pipeline_helpers import processes, read_mask, run_pipeline, same_partition, trace_rows

pytestmark = [pytest.mark.pipeline, pytest.mark.families]


def lab_registry(folder, family, version, location):
    """The built-in manifest of `family` with `version` pointing at `location` only."""
    manifest = yaml.safe_load((registry.BUILTIN_DIR / "manifests" / f"{family}.yaml").read_text())
    entry = manifest["versions"][version]
    task = next(iter(entry["tasks"]))
    manifest["versions"] = {version: {**entry, "tasks": {task: {"locations": [location]}}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{family}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def run_family(work, family, version, lab, image, *extra, suffix="run"):
    """Run the pipeline on `image` (or on {id: image}); the mask of `image` (or {id: mask}) and the
    trace rows."""
    env_python(family)  # built once per machine, outside the timed pipeline run
    work.mkdir(parents=True, exist_ok=True)
    images = image if isinstance(image, dict) else {"img": image}
    (work / "images.csv").write_text("id,image\n" + "".join(f"{key},{path}\n" for key, path in images.items()))
    run_pipeline(work, "--input", str(work / "images.csv"), "--outdir", str(work / "results"),
                 "--root_dir", str(work / "root"), "--registry_dir", str(lab), "--model", family,
                 "--model_version", version, "--trace_report_suffix", suffix, *extra, profile="test,venv")
    masks = {key: read_mask(work / "results", key) for key in images}
    return (masks if isinstance(image, dict) else masks["img"]), trace_rows(work / "results", suffix)


def zipped_folder_url(server, folder: Path) -> dict:
    """A registry location serving `folder` as a zip from the loopback server, as models are published."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, f"{folder.name}/{path.relative_to(folder)}")
    server.files["model.zip"] = buffer.getvalue()
    return {"url": f"{server.url}/plain/model.zip", "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
            "unpack": "zip"}


def test_stardist_published_as_a_zip_url_runs_split_in_four_and_gives_the_whole_image_objects(
        tmp_path, trained_artifact, nuclei_data):  # noqa: F811
    folder = trained_artifact("stardist", 2)
    with ArtifactServer() as server:
        location = zipped_folder_url(server, folder)
        lab = lab_registry(tmp_path / "lab", "stardist", "2D_versatile_fluo", location)
        split, rows = run_family(tmp_path / "split", "stardist", "2D_versatile_fluo", lab, nuclei_data / "nuclei_2d.tif",
                                 "--num_substacks", "2")
    assert len(processes(rows, "FETCH_ARTIFACTS", "COMPLETED")) == 1 and len(server.requests) == 1
    record = json.loads((tmp_path / "split" / "results" / "img.json").read_text())
    assert record["model"]["artifact"]["sha256"] == location["sha256"]
    truth = tifffile.imread(nuclei_data / "nuclei_2d_mask.tif")
    assert split.shape == truth.shape and split.dtype == np.uint32
    assert [r["tag"] for r in processes(rows, "SEGMENT", "COMPLETED")] == ["p0.1: 4 substacks"]  # loaded once
    assert match_labels(truth, split, thresh=0.5).f1 >= 0.6  # the floor of tests/test_family_stardist.py
    # boxes on the network's stride: the split run has the whole image's objects, object for object
    whole, _ = segment_in_family("stardist", "2D_versatile_fluo", folder, nuclei_data / "nuclei_2d.tif",
                                 tmp_path / "whole.npy")
    assert same_partition(split, whole)


def test_cellpose_runs_split_in_four_and_finds_the_annotated_nuclei(tmp_path, trained_artifact, nuclei_data):  # noqa: F811
    model = trained_artifact("cellpose", 2)
    lab = lab_registry(tmp_path / "lab", "cellpose", "nuclei", {"filepath": str(model)})
    split, rows = run_family(tmp_path / "split", "cellpose", "nuclei", lab, nuclei_data / "nuclei_2d.tif",
                             "--num_substacks", "2")
    truth = tifffile.imread(nuclei_data / "nuclei_2d_mask.tif")
    assert split.shape == truth.shape and split.dtype == np.uint32
    assert [r["tag"] for r in processes(rows, "SEGMENT", "COMPLETED")] == ["p0.1: 4 substacks"]  # loaded once
    assert match_labels(truth, split, thresh=0.5).f1 >= 0.6  # the floor of tests/test_family_cellpose.py
    # resize and tiles on the image's grid (docs/merge.md): the split run has the whole image's
    # objects, object for object, though its boxes start at pixel 36 and see 86% of the image
    whole, _ = segment_in_family("cellpose", "nuclei", model, nuclei_data / "nuclei_2d.tif", tmp_path / "whole.npy")
    assert same_partition(split, whole)


# A volume through the pipeline: StarDist 3D. (Cellpose's do_3D is tested through its adapter in
# tests/test_family_cellpose.py; through the pipeline, at the nuclei's diameter 11 it upscales the
# volume 2.7x and runs the network on three orientations: 5 min on a CPU for the same 3D path.)
@pytest.mark.parametrize("family, version, params, floor", [  # floors as in tests/test_family_<family>.py
    ("stardist", "3D_demo", {}, 0.7),
])
def test_a_trained_model_runs_on_a_volume_split_in_substacks(tmp_path, trained_artifact, nuclei_data,  # noqa: F811
                                                             family, version, params, floor):
    lab = lab_registry(tmp_path / "lab", family, version, {"filepath": str(trained_artifact(family, 3))})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    mask, rows = run_family(tmp_path, family, version, lab, nuclei_data / "nuclei_3d.tif", "--num_substacks", "1,2,1",
                            "--model_params", str(tmp_path / "params.yaml"))
    truth = tifffile.imread(nuclei_data / "nuclei_3d_mask.tif")
    assert mask.shape == truth.shape and mask.dtype == np.uint32
    assert [r["tag"] for r in processes(rows, "SEGMENT", "COMPLETED")] == ["p0.1: 2 substacks"]
    assert match_labels(truth, mask, thresh=0.5).f1 >= floor


# As in tests/test_family_<family>.py. cellposesam: per slice (do_3D runs the ViT-L on every XZ
# and YZ plane too: minutes on a CPU); sam2: a random network's masks have predicted IoU ~0.5
# and stability ~0, keep them all.
RANDOM_MODEL_PARAMS = {"cellposesam": {"flow_threshold": 0.0, "do_3D": False, "stitch_threshold": 0.25},
                       "empanada": {"min_size": 10, "min_extent": 2},
                       "sam2": {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                                "min_mask_region_area": 4}}


@pytest.mark.parametrize("family", sorted(RANDOM_MODEL_PARAMS))
def test_a_random_weight_model_runs_in_the_pipeline_as_its_adapter_does(tmp_path, built_artifact, family):  # noqa: F811
    built = built_artifact(family)
    params = RANDOM_MODEL_PARAMS[family]
    images = family_images(tmp_path / "images")  # 128x128 and 4x96x96 synthetic nuclei
    lab = lab_registry(tmp_path / "lab", family, built["version"],
                       {"filepath": str(built["artifact"]), "config": built["config"]})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    options = ["--model_params", str(tmp_path / "params.yaml")]

    whole, rows = run_family(tmp_path / "whole", family, built["version"], lab, images, *options, "--num_substacks", "1")
    # both images in one task, the model loaded once; neither needs a MERGE
    assert [r["tag"] for r in processes(rows, "SEGMENT", "COMPLETED")] == ["p0.1: 2 substacks"]
    assert processes(rows, "MERGE") == []
    record = json.loads((tmp_path / "whole" / "results" / "2d.json").read_text())
    assert record["model"]["artifact"]["sha256"] == hashlib.sha256(built["artifact"].read_bytes()).hexdigest()
    assert record["model"]["params"] == {**record["model"]["params"], **params}
    # the pipeline hands the adapter the same parameters, config and image-wide normalisation
    adapter, _ = segment_cases(built, [{"name": key, "image": path} for key, path in images.items()], params,
                               tmp_path / "adapter")
    for key in images:
        assert whole[key].max() > 0, key
        assert same_partition(whole[key], adapter[f"{key}_0"]), key

    # No split run here: these families' least halo (Empanada's 388 px, Cellpose-SAM's 320, SAM
    # 2's 1280) covers these small images, so every box would see the whole image, and the merge
    # of such boxes is tested in tests/test_merge.py (four more tasks of a large model each,
    # minutes on a CPU). Substacks that see part of an image: the trained families' tests above,
    # tests/test_family_stardist.py and the split tests of tests/test_family_<family>.py.


def test_three_models_in_one_run_each_in_its_family_environment_compared_on_the_annotated_nuclei(
        tmp_path, trained_artifact, nuclei_data):  # noqa: F811
    """`--models` fans the images out over three families; each SEGMENT runs in its own family's
    environment, each model publishes under its label, and COMPARE's table holds the scores that
    `aiod compare` computes from the published masks. A second run computes nothing."""
    from aiod import compare

    for family in ("classical", "stardist", "cellpose"):
        env_python(family)
    lab = tmp_path / "lab"
    lab_registry(lab, "stardist", "2D_versatile_fluo", {"filepath": str(trained_artifact("stardist", 2))})
    lab_registry(lab, "cellpose", "nuclei", {"filepath": str(trained_artifact("cellpose", 2))})
    work = tmp_path / "run"
    (work / "data").mkdir(parents=True)
    image, truth = nuclei_data / "nuclei_2d.tif", tifffile.imread(nuclei_data / "nuclei_2d_mask.tif")
    tifffile.imwrite(work / "data" / "dsb.tif", tifffile.imread(image))
    tifffile.imwrite(work / "data" / "dsb_gt.tif", truth)
    tifffile.imwrite(work / "data" / "crop.tif", tifffile.imread(image)[:256, 128:448])  # a second image, its own size
    tifffile.imwrite(work / "data" / "crop_gt.tif", truth[:256, 128:448])
    (work / "images.csv").write_text("id,image,ground_truth\ndsb,data/dsb.tif,data/dsb_gt.tif\ncrop,data/crop.tif,data/crop_gt.tif\n")
    models = "classical, stardist:2D_versatile_fluo, cellpose:nuclei:{diameter: 17}"
    common = ["--input", "images.csv", "--outdir", "results", "--root_dir", "root", "--registry_dir", str(lab),
              "--models", models, "--num_substacks", "2"]
    first = run_pipeline(work, *common, "--trace_report_suffix", "first", profile="test,venv")
    labels = ["classical_nuclei", "stardist_2D_versatile_fluo", "cellpose_nuclei"]
    results = work / "results"
    for label in labels:
        for sample_id in ("dsb", "crop"):
            assert json.loads((results / label / f"{sample_id}.json").read_text())["model_label"] == label
    # each family's substacks ran in that family's environment (the manifests keep each one's python)
    for label, family in zip(labels, ("classical", "stardist", "cellpose")):
        record = json.loads((results / label / "dsb.json").read_text())
        manifest = json.loads((Path(record["cache_entry"]) / "manifest.json").read_text())
        pythons = {t["python"] for t in manifest["timings"]["substacks"].values()}
        assert len(pythons) == 1 and Path(pythons.pop()).name.startswith(f"{family}-"), (label, manifest["timings"])
    table = json.loads((results / "comparison.json").read_text())
    assert sorted(r["label"] for r in table["models"]) == sorted(labels) and table["ground_truth"]
    assert [r["f1"] for r in table["models"]] == sorted((r["f1"] for r in table["models"]), reverse=True)
    assert [r["best"] for r in table["models"]] == [True, False, False]
    # the same scores as the command line computes from the published masks, alone
    again = {r["label"]: r for r in compare.compare_results(results, work / "images.csv")["models"]}
    for row in table["models"]:
        for metric in ("f1", "ap_50_95", "panoptic_quality", "dice", "objects", "images"):
            assert row[metric] == pytest.approx(again[row["label"]][metric]), (row["label"], metric)
        assert row["computed"] == 2 and row["cached"] == 0 and row["seconds_per_megapixel"] > 0
        assert row["peak_memory_bytes"] > 50 * 2**20 and row["device"] == "CPU"
    by_label = {r["label"]: r for r in table["models"]}
    assert by_label["stardist_2D_versatile_fluo"]["f1"] >= 0.6 and by_label["cellpose_nuclei"]["f1"] >= 0.6
    assert by_label["cellpose_nuclei"]["params"]["diameter"] == 17
    evaluation = json.loads((results / "evaluation.json").read_text())
    assert {(r["model"], r["id"]) for r in evaluation["images"]} == {(m, i) for m in labels for i in ("dsb", "crop")}
    assert "AIoD comparison" in first.stdout and all(label in first.stdout for label in labels)
    assert (results / "report.html").stat().st_size > 10_000
    rows = trace_rows(results, "first")
    assert len(processes(rows, "SEGMENT", "COMPLETED")) == 3  # each model loaded once for both images
    assert len(processes(rows, "EVALUATE", "COMPLETED")) == len(processes(rows, "FINALIZE", "COMPLETED")) == 6
    # a second run: every result from the cache, the same table
    run_pipeline(work, *common, "--trace_report_suffix", "second", profile="test,venv")
    rows = trace_rows(results, "second")
    assert not processes(rows, "SEGMENT") and not processes(rows, "MERGE")
    second = json.loads((results / "comparison.json").read_text())
    assert [(r["label"], r["cached"], r["computed"], r["f1"]) for r in second["models"]] == \
        [(r["label"], 2, 0, r["f1"]) for r in table["models"]]
