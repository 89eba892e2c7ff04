"""Whole pipeline runs of the learned families, each in its own environment (`-profile venv`),
with briefly trained models handed over as the registry does: a lab registry whose version
points at the trained model (a filepath, and once a loopback URL)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import tifffile
import yaml

from aiod import registry
from aiod.metrics import match_labels
from artifact_server import ArtifactServer
from family_envs import env_python, nuclei_data, trained_artifact  # noqa: F401 - fixtures
from pipeline_helpers import processes, read_mask, run_pipeline, trace_rows

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
    env_python(family)  # built once per machine, outside the timed pipeline run
    work.mkdir(parents=True, exist_ok=True)
    (work / "images.csv").write_text(f"id,image\nimg,{image}\n")
    run_pipeline(work, "--input", str(work / "images.csv"), "--outdir", str(work / "results"),
                 "--root_dir", str(work / "root"), "--registry_dir", str(lab), "--model", family,
                 "--model_version", version, "--trace_report_suffix", suffix, *extra, profile="test,venv")
    return read_mask(work / "results", "img"), trace_rows(work / "results", suffix)


@pytest.mark.parametrize("family, version, floor", [
    ("stardist", "2D_versatile_fluo", 0.6),   # floors as in tests/test_family_<family>.py
    ("cellpose", "nuclei", 0.6),
])
def test_a_trained_2d_model_runs_split_in_four_and_finds_the_annotated_nuclei(tmp_path, trained_artifact, nuclei_data,  # noqa: F811
                                                                             family, version, floor):
    lab = lab_registry(tmp_path / "lab", family, version, {"filepath": str(trained_artifact(family, 2))})
    split, rows = run_family(tmp_path / "split", family, version, lab, nuclei_data / "nuclei_2d.tif", "--num_substacks", "2")
    whole, _ = run_family(tmp_path / "whole", family, version, lab, nuclei_data / "nuclei_2d.tif", "--num_substacks", "1")
    truth = tifffile.imread(nuclei_data / "nuclei_2d_mask.tif")
    assert split.shape == truth.shape and split.dtype == np.uint32
    assert len(processes(rows, "SEGMENT", "COMPLETED")) == 4
    assert match_labels(truth, split, thresh=0.5).f1 >= floor
    # objects crossing the substack borders come out whole: the split run matches the whole run
    assert match_labels(whole, split, thresh=0.5).f1 >= 0.97


def test_a_3d_model_runs_on_a_volume_split_in_substacks(tmp_path, trained_artifact, nuclei_data):  # noqa: F811
    lab = lab_registry(tmp_path / "lab", "stardist", "3D_demo", {"filepath": str(trained_artifact("stardist", 3))})
    mask, rows = run_family(tmp_path, "stardist", "3D_demo", lab, nuclei_data / "nuclei_3d.tif", "--num_substacks", "1,2,1")
    truth = tifffile.imread(nuclei_data / "nuclei_3d_mask.tif")
    assert mask.shape == truth.shape and mask.dtype == np.uint32
    assert len(processes(rows, "SEGMENT", "COMPLETED")) == 2
    assert match_labels(truth, mask, thresh=0.5).f1 >= 0.15  # the 3D floor of tests/test_family_stardist.py


def test_a_model_published_as_a_zip_url_is_fetched_unpacked_and_used(tmp_path, trained_artifact, nuclei_data):  # noqa: F811
    folder = trained_artifact("stardist", 2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, f"{folder.name}/{path.relative_to(folder)}")
    with ArtifactServer() as server:
        server.files["model.zip"] = buffer.getvalue()
        sha = hashlib.sha256(buffer.getvalue()).hexdigest()
        lab = lab_registry(tmp_path / "lab", "stardist", "2D_versatile_fluo",
                           {"url": f"{server.url}/plain/model.zip", "sha256": sha, "unpack": "zip"})
        mask, rows = run_family(tmp_path, "stardist", "2D_versatile_fluo", lab, nuclei_data / "nuclei_2d.tif")
    assert len(processes(rows, "FETCH_ARTIFACTS", "COMPLETED")) == 1 and len(server.requests) == 1
    record = json.loads((tmp_path / "results" / "img.json").read_text())
    assert record["model"]["artifact"]["sha256"] == sha
    assert match_labels(tifffile.imread(nuclei_data / "nuclei_2d_mask.tif"), mask, thresh=0.5).f1 >= 0.6
