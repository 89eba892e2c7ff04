"""StarDist fine-tuning (docs/finetune.md): the small StarDist 2D model the tests train
(tests/families/train_stardist.py, on the nuclei image at its own size) is fine-tuned on the
crops test_finetune.py makes, whose nuclei are twice the size it learnt: before, it finds none
of them. One FINETUNE pipeline run serves the checks; a training killed after its first
checkpoint is run again and resumes to the same model."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from aiod import registry
from aiod.artifacts import tree_sha256
from family_envs import env_python, nuclei_data, trained_artifact  # noqa: F401 - fixtures
from pipeline_helpers import processes, run_pipeline, trace_rows
from test_finetune import annotated_crops, finetune_command, lab_registry, lab_without, segment_c3

STARDIST = {"epochs": 12, "patch_size": 128, "patches_per_epoch": 32, "batch_size": 4}
SD_PARENT = "2D_versatile_fluo"  # the lab's entry of that name holds the test model


@pytest.fixture(scope="module")
def stardist_finetuned(tmp_path_factory, trained_artifact, nuclei_data):  # noqa: F811
    """One `nextflow run main.nf -entry FINETUNE` from the StarDist test model, 12 short epochs."""
    env_python("stardist")
    work = tmp_path_factory.mktemp("finetune_stardist")
    sheet = annotated_crops(work / "data", nuclei_data)
    lab = lab_registry(work / "lab", trained_artifact("stardist", 2), "stardist", SD_PARENT)
    (work / "training.yaml").write_text(yaml.safe_dump(STARDIST))
    started = time.time()
    proc = run_pipeline(work, "-entry", "FINETUNE", "--input", str(sheet), "--model", "stardist", "--model_version", SD_PARENT,
                        "--finetune_name", "fluo_lab", "--finetune_params", str(work / "training.yaml"),
                        "--registry_dir", str(lab), "--outdir", str(work / "results"), "--root_dir", str(work / "root"),
                        "--trace_report_suffix", "ft", profile="test,venv")
    return {"work": work, "lab": lab, "sheet": sheet, "stdout": proc.stdout, "seconds": time.time() - started,
            "record": json.loads((work / "results" / "finetune.json").read_text())}


def test_a_fine_tuned_stardist_model_scores_better_on_the_held_out_crop_and_is_registered_as_a_model_folder(
        stardist_finetuned):
    record, lab = stardist_finetuned["record"], stardist_finetuned["lab"]
    before, after = (record["metrics"][k]["pooled"] for k in ("before", "after"))
    assert record["epochs_done"] == STARDIST["epochs"] and len(record["curves"]["train_loss"]) == STARDIST["epochs"]
    # the parent finds none of the larger nuclei; twelve short epochs teach it about half (0.62 where this was written)
    assert before["n_true"] == after["n_true"] > 5 and after["f1"] >= before["f1"] + 0.25
    assert record["registered"] and "registered in" in stardist_finetuned["stdout"]
    rows = trace_rows(stardist_finetuned["work"] / "results", "ft")
    assert len(processes(rows, "FINETUNE_TRAIN", "COMPLETED")) == 1
    assert list((stardist_finetuned["work"] / "root" / "aiod_cache" / "stardist" / "training").glob("fluo_lab-*/checkpoint.npz"))

    manifest = registry.load_registry([lab])["stardist"]
    version = manifest.versions["fluo_lab"]
    location = version.tasks["nuclei"].locations[0]
    weights = Path(location.filepath)  # a StarDist model folder, with thresholds found for the new network
    assert sorted(os.listdir(weights)) == ["config.json", "thresholds.json", "weights_best.h5"]
    assert weights.is_relative_to(lab) and location.sha256 == tree_sha256(weights) == record["weights_sha256"]
    assert version.trained.parent == SD_PARENT and version.trained.parent_sha256 == tree_sha256(lab / f"parent_{SD_PARENT}")
    assert version.trained.params == {**{k: p.default for k, p in manifest.training.items()}, **STARDIST}


def test_a_run_with_the_fine_tuned_stardist_model_fetches_its_folder_and_finds_nuclei(stardist_finetuned):
    result, entry = segment_c3(stardist_finetuned, "stardist", "fluo_lab")
    assert result["n_objects"] > 5 and entry["model"]["artifact"]["sha256"] == stardist_finetuned["record"]["weights_sha256"]


def test_a_stardist_training_killed_after_an_epoch_resumes_from_its_checkpoint_to_the_same_model(stardist_finetuned,
                                                                                                tmp_path):
    lab = lab_without(stardist_finetuned["lab"], tmp_path / "lab", "stardist", "fluo_lab")
    cmd, env = finetune_command("stardist", "--input", stardist_finetuned["sheet"], "--model", "stardist", "--version",
                                SD_PARENT, "--name", "fluo_lab", "--registry-dir", lab, "--out", tmp_path / "out",
                                "--root-dir", tmp_path / "root", "--params", stardist_finetuned["work"] / "training.yaml")
    training = tmp_path / "root" / "aiod_cache" / "stardist" / "training"
    run = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list(training.glob("*/checkpoint.npz")) and run.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    run.kill()  # as the kernel's OOM killer or a node's end would
    run.wait()
    with np.load(next(training.glob("*/checkpoint.npz"))) as saved:
        done = json.loads(str(saved["state"]))["epochs_done"]
    assert 1 <= done < STARDIST["epochs"] and not (tmp_path / "out").exists()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"stardist: resuming after epoch {done} of {STARDIST['epochs']}" in proc.stderr  # not from the start
    resumed, uninterrupted = json.loads((tmp_path / "out" / "finetune.json").read_text()), stardist_finetuned["record"]
    assert resumed["epochs_done"] == uninterrupted["epochs_done"] == STARDIST["epochs"]
    # patches, augmentations and batches depend only on the seed and the epoch, Adam's state is in the checkpoint
    assert resumed["curves"]["train_loss"] == uninterrupted["curves"]["train_loss"]
    assert resumed["weights_sha256"] == uninterrupted["weights_sha256"]
    assert resumed["metrics"]["after"]["pooled"]["f1"] >= uninterrupted["metrics"]["after"]["pooled"]["f1"]
