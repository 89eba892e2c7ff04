"""Fine-tuning (`-entry FINETUNE`, `aiod finetune`; docs/finetune.md): the small Cellpose model
the tests train (tests/families/train_cellpose.py) is fine-tuned on 256x256 crops of stardist's
annotated nuclei shown at twice their size, a lab whose nuclei are larger than the model was
trained on. Three crops train it, the fourth (held out) scores it before and after.

One FINETUNE pipeline run (the module's fixture) serves the end-to-end checks; a second one, whose
training task is killed after its first checkpoint, must be retried and end where the
uninterrupted run ended; bad input is refused in the pipeline's own environment before anything
is trained or written. StarDist's fine-tuning, on the same crops: test_finetune_stardist.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from aiod import catalogue, cli, registry
from aiod.artifacts import tree_sha256
from aiod.planner import Plan
from aiod.steps.plan import result_key
from family_envs import env_python, nuclei_data, trained_artifact  # noqa: F401 - fixtures
from pipeline_helpers import NEXTFLOW, ROOT, processes, run_pipeline, trace_rows
from test_artifacts import NOBODY, as_user, needs_root

pytestmark = [pytest.mark.pipeline, pytest.mark.families]

CROPS = {"c0": (0, 0), "c1": (0, 512), "c2": (512, 0), "c3": (512, 512)}   # in the 2x image; c3 is held out
TRAINING = {"epochs": 4, "patch_size": 128, "patches_per_epoch": 8, "batch_size": 8}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(folder: Path) -> dict:
    """Every file under `folder` by relative name, with its content's digest."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def annotated_crops(folder: Path, nuclei: Path) -> Path:
    """c0..c3.tif and their masks: 256x256 crops of the nuclei image and mask upscaled 2x (each
    pixel repeated, so the masks stay exact); annotated.csv with c3 held out."""
    folder.mkdir(parents=True, exist_ok=True)
    image, mask = (np.kron(tifffile.imread(nuclei / name), np.ones((2, 2), np.uint16))
                   for name in ("nuclei_2d.tif", "nuclei_2d_mask.tif"))
    for name, (y, x) in CROPS.items():
        tifffile.imwrite(folder / f"{name}.tif", image[y:y + 256, x:x + 256])
        tifffile.imwrite(folder / f"{name}_mask.tif", mask[y:y + 256, x:x + 256])
    (folder / "annotated.csv").write_text("id,image,ground_truth,split\n" + "".join(
        f"{name},{name}.tif,{name}_mask.tif,{'test' if name == 'c3' else 'train'}\n" for name in CROPS))
    return folder / "annotated.csv"


def lab_registry(folder: Path, weights: Path, family: str = "cellpose", version: str = "nuclei") -> Path:
    """A lab registry whose <family>/<version> is `weights`, a file or a model folder (a copy: its
    sha256 is pinned)."""
    folder.mkdir(parents=True)
    parent = folder / f"parent_{version}"
    if Path(weights).is_dir():
        shutil.copytree(weights, parent)
    else:
        shutil.copy(weights, parent)
    manifest = yaml.safe_load((registry.BUILTIN_DIR / "manifests" / f"{family}.yaml").read_text())
    entry = manifest["versions"][version]
    manifest["versions"] = {version: {**entry, "tasks": {next(iter(entry["tasks"])): {"locations": [
        {"filepath": str(parent), "sha256": tree_sha256(parent) if parent.is_dir() else sha256(parent)}]}}}}
    (folder / f"{family}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def lab_without(source: Path, folder: Path, family: str, name: str) -> Path:
    """A copy of the lab registry `source` as it was before `name` was registered."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("weights"))
    manifest = yaml.safe_load((folder / f"{family}.yaml").read_text())
    del manifest["versions"][name]
    (folder / f"{family}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def segment_c3(run: dict, family: str, version: str) -> tuple[dict, dict]:
    """A segmentation pipeline run of the held-out crop with `version` from the run's lab registry:
    (the image's result record, its cache entry's manifest)."""
    work = run["work"]
    (work / "new.csv").write_text(f"id,image\nc3,{work / 'data' / 'c3.tif'}\n")
    run_pipeline(work, "--input", str(work / "new.csv"), "--model", family, "--model_version", version,
                 "--registry_dir", str(run["lab"]), "--outdir", str(work / "segmented"), "--root_dir", str(work / "root"),
                 "--num_substacks", "1", profile="test,venv")
    result = json.loads((work / "segmented" / "c3.json").read_text())
    return result, json.loads((Path(result["cache_entry"]) / "manifest.json").read_text())


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, trained_artifact, nuclei_data):  # noqa: F811
    """One `nextflow run main.nf -entry FINETUNE` from the test model, 4 epochs."""
    env_python("cellpose")  # built once per machine, outside the run
    shared = Path(tempfile.mkdtemp(prefix="aiod-finetune-"))  # every user can enter it (the visibility test)
    os.chmod(shared, 0o755)
    work = tmp_path_factory.mktemp("finetune")
    sheet = annotated_crops(work / "data", nuclei_data)
    lab = lab_registry(shared / "lab", trained_artifact("cellpose", 2))
    (work / "training.yaml").write_text(yaml.safe_dump(TRAINING))
    started = time.time()
    proc = run_pipeline(work, "-entry", "FINETUNE", "--input", str(sheet), "--model", "cellpose", "--model_version", "nuclei",
                        "--finetune_name", "nuclei_lab", "--finetune_params", str(work / "training.yaml"),
                        "--registry_dir", str(lab), "--outdir", str(work / "results"), "--root_dir", str(work / "root"),
                        "--trace_report_suffix", "ft", profile="test,venv")
    yield {"work": work, "lab": lab, "sheet": sheet, "stdout": proc.stdout, "seconds": time.time() - started,
           "record": json.loads((work / "results" / "finetune.json").read_text())}
    shutil.rmtree(shared)


def test_the_fine_tuned_model_scores_better_on_the_held_out_crop_and_is_registered(finetuned, capsys):
    record, lab = finetuned["record"], finetuned["lab"]
    before, after = (record["metrics"][k]["pooled"] for k in ("before", "after"))
    assert record["split"] == {"train": ["c0", "c1", "c2"], "valid": [], "test": ["c3"]}
    assert record["epochs_done"] == TRAINING["epochs"] and len(record["curves"]["train_loss"]) == TRAINING["epochs"]
    assert after["f1"] > before["f1"] and before["n_true"] == after["n_true"] > 5
    assert record["registered"] and "registered in" in finetuned["stdout"]
    # the checks ran first, then one training task in the family's environment
    rows = trace_rows(finetuned["work"] / "results", "ft")
    assert [len(processes(rows, p, "COMPLETED")) for p in ("FINETUNE_CHECK", "FETCH_ARTIFACTS", "FINETUNE_TRAIN")] == [1, 1, 1]
    assert "finetune.html" in os.listdir(finetuned["work"] / "results")
    # the checkpoints live in the cache, where a rerun finds them
    assert list((finetuned["work"] / "root" / "aiod_cache" / "cellpose" / "training").glob("nuclei_lab-*/checkpoint.pt"))

    manifest = registry.load_registry([lab])["cellpose"]
    version = manifest.versions["nuclei_lab"]
    location = version.tasks["nuclei"].locations[0]
    weights = Path(location.filepath)
    assert weights.is_relative_to(lab) and location.sha256 == sha256(weights) == record["weights_sha256"]
    trained = version.trained
    assert trained.parent == "nuclei" and trained.parent_sha256 == sha256(lab / "parent_nuclei")
    assert trained.params == {**{k: p.default for k, p in manifest.training.items()}, **TRAINING}
    assert trained.metrics["after"]["f1"] == after["f1"] and trained.data == record["data"] and trained.date
    assert cli.main(["models", "show", "cellpose/nuclei_lab", "--registry-dir", str(lab)]) == 0
    text = capsys.readouterr().out
    for expected in (f"sha256 {location.sha256}", "trained: from nuclei", f"data: {record['data']}",
                     "split (samplesheet): train: c0, c1, c2; valid: -; test: c3", "epochs done: 4",
                     f"before                {before['f1']:.3f}", f"after                 {after['f1']:.3f}"):
        assert expected in text, expected


def listing_as_user(folder):
    return catalogue.listing(registry.load_registry([folder]))


@needs_root
def test_the_new_version_is_listed_only_for_users_who_can_read_its_weights(finetuned):
    lab = finetuned["lab"]
    weights = lab / "weights" / "cellpose" / "nuclei_lab" / "model"
    for path in (lab, lab / "weights", lab / "weights" / "cellpose", weights.parent):
        path.chmod(0o755)
    weights.chmod(0o644)
    seen, error = as_user(NOBODY, listing_as_user, lab)
    assert error is None and "nuclei_lab" in seen
    weights.chmod(0o600)
    try:
        seen, error = as_user(NOBODY, listing_as_user, lab)
        assert error is None and "nuclei_lab" not in seen and "cellpose" in seen
        assert "nuclei_lab" in listing_as_user(lab)  # its owner still sees it
    finally:
        weights.chmod(0o644)


def test_a_run_with_the_new_version_is_cached_under_a_key_naming_its_weights(finetuned):
    result, entry = segment_c3(finetuned, "cellpose", "nuclei_lab")
    assert result["n_objects"] > 0 and entry["model"]["artifact"]["sha256"] == finetuned["record"]["weights_sha256"]
    image = {k: entry["image"][k] for k in ("fingerprint", "axes", "shape", "dtype", "channel")}
    plan = Plan.from_dict(entry["plan"])
    assert result_key(image, entry["model"], plan) == result["key"]
    parent = json.loads(json.dumps(entry["model"]))
    parent["artifact"]["sha256"] = finetuned["record"]["parent_sha256"]
    assert result_key(image, parent, plan) != result["key"]


def finetune_run(work: Path, sheet: Path, lab: Path) -> subprocess.Popen:
    """The module fixture's FINETUNE run, started in the background in `work` (its own root_dir)."""
    (work / "training.yaml").write_text(yaml.safe_dump(TRAINING))
    args = ["run", str(ROOT / "main.nf"), "-entry", "FINETUNE", "-profile", "test,venv", "--input", str(sheet),
            "--model", "cellpose", "--model_version", "nuclei", "--finetune_name", "nuclei_lab",
            "--finetune_params", str(work / "training.yaml"), "--registry_dir", str(lab), "--outdir", str(work / "results"),
            "--root_dir", str(work / "root"), "--trace_report_suffix", "killed"]
    env = {**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true", "NXF_ANSI_LOG": "false"}
    return subprocess.Popen([NEXTFLOW, *args], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def training_processes(work: Path) -> list[int]:
    """Ids of the `aiod finetune` processes running in a task folder under `work`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"finetune" in (proc / "cmdline").read_bytes() and \
                    Path(os.readlink(proc / "cwd")).is_relative_to(work):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_training_task_killed_after_its_first_epoch_is_retried_and_resumes_to_the_same_model(finetuned, tmp_path):
    lab = lab_without(finetuned["lab"], tmp_path / "lab", "cellpose", "nuclei_lab")
    run = finetune_run(tmp_path, finetuned["sheet"], lab)
    training = tmp_path / "root" / "aiod_cache" / "cellpose" / "training"
    deadline = time.time() + 600
    while not list(training.glob("*/checkpoint.pt")) and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    killed = training_processes(tmp_path / "root" / "work")
    for pid in killed:  # as the kernel's OOM killer or a node's end would: exit 137
        os.kill(pid, signal.SIGKILL)
    output = run.communicate(timeout=900)[0]
    assert run.returncode == 0, output[-4000:]
    assert killed and "terminated with an error exit status (137) -- Execution is retried" in output
    logs = "".join(p.read_text() for p in (tmp_path / "root" / "work").glob("*/*/.command.err"))
    assert "cellpose: resuming after epoch" in logs  # not from the start
    resumed, uninterrupted = json.loads((tmp_path / "results" / "finetune.json").read_text()), finetuned["record"]
    assert resumed["epochs_done"] == uninterrupted["epochs_done"] == TRAINING["epochs"]
    # patches and augmentations depend only on the seed and the epoch, the optimiser's state is
    # in the checkpoint: the same steps, the same weights
    assert resumed["curves"]["train_loss"] == uninterrupted["curves"]["train_loss"]
    assert resumed["weights_sha256"] == uninterrupted["weights_sha256"]
    assert resumed["metrics"]["after"]["pooled"]["f1"] >= uninterrupted["metrics"]["after"]["pooled"]["f1"]


def finetune_command(family: str, *args) -> tuple[list[str], dict]:
    """`bin/aiod finetune ARGS` in the family's environment, as its training task runs it: (command, environment)."""
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    env.pop("VIRTUAL_ENV", None)
    return [str(env_python(family)), str(ROOT / "bin" / "aiod"), "finetune", *map(str, args)], env


def test_a_model_that_is_not_better_is_reported_and_not_registered(finetuned, tmp_path):
    lab = tmp_path / "lab"
    shutil.copytree(finetuned["lab"], lab)
    before = tree(lab)
    # a learning rate of 1 wrecks the network in one step (the first epoch's rate is 0: the warm-up)
    (tmp_path / "training.yaml").write_text(yaml.safe_dump({**TRAINING, "epochs": 2, "learning_rate": 1.0}))
    cmd, env = finetune_command("cellpose", "--input", finetuned["sheet"], "--model", "cellpose", "--version", "nuclei",
                                "--name", "wrecked", "--registry-dir", lab, "--out", tmp_path / "out",
                                "--root-dir", tmp_path / "root", "--params", tmp_path / "training.yaml")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert record["metrics"]["after"]["pooled"]["f1"] < record["metrics"]["before"]["pooled"]["f1"]
    assert not record["registered"] and "cellpose/wrecked: NOT registered: not better than nuclei" in proc.stdout
    assert tree(lab) == before and ": not registered</h1>" in (tmp_path / "out" / "finetune.html").read_text()


def test_without_a_split_column_the_split_follows_the_ids():
    from aiod.finetune import split_of
    from aiod.samplesheet import Sample

    samples = [Sample(id=f"img{k}", image=f"img{k}.tif") for k in range(12)]
    split, origin = split_of(samples, Path("s.csv"))
    assert origin == "image id" and [len(split[k]) for k in ("train", "valid", "test")] == [9, 1, 2]
    assert split_of(list(reversed(samples)), Path("s.csv"))[0] == split  # the order of the rows does not matter
    assert split_of(samples[:2], Path("s.csv"))[0]["test"] and split_of(samples[:2], Path("s.csv"))[0]["train"]


def test_a_split_given_for_some_images_only_is_refused():
    from aiod.errors import InputError
    from aiod.finetune import split_of
    from aiod.samplesheet import Sample

    samples = [Sample(id="a", image="a.tif", split="train", line=2), Sample(id="b", image="b.tif", line=3)]
    with pytest.raises(InputError, match="s.csv: line 3: column 'split': is empty; give every image a split"):
        split_of(samples, Path("s.csv"))


# Bad input: refused by the checks (the command as the pipeline's own environment runs it: no
# training library there, so anything that got past the checks would fail differently), one line,
# the registry directory as it was.
BAD = {
    "no ground truth": ("id,image,ground_truth\nc0,c0.tif,c0_mask.tif\nc1,c1.tif,\n", {},
                        "line 3: column 'ground_truth': image 'c1' has no ground truth"),
    "ground truth of another shape": ("id,image,ground_truth\nc0,c0.tif,c0_mask.tif\nc1,c1.tif,small_mask.tif\n", {},
                                      "line 3: column 'ground_truth': "),
    "unknown split": ("id,image,ground_truth,split\nc0,c0.tif,c0_mask.tif,train\nc1,c1.tif,c1_mask.tif,tset\n", {},
                      "line 3: column 'split': 'tset' is not a split; expected one of train, valid, test"),
    "existing name": (None, {"name": "nuclei"}, "cellpose/nuclei already exists in the registry; choose another --name"),
    "family without training": (None, {"model": "classical"}, "model 'classical' cannot be fine-tuned here"),
    "parameter out of range": (None, {"params": "{epochs: 0}"}, "training parameter 'epochs' of cellpose: 0 is below the minimum 1"),
    "patch off the stride": (None, {"params": "{patch_size: 100}"}, "patch_size 100 is not a multiple of 16"),
}


@pytest.fixture(scope="module")
def bad_input_folder(tmp_path_factory, nuclei_data):  # noqa: F811
    folder = tmp_path_factory.mktemp("bad")
    annotated_crops(folder, nuclei_data)
    tifffile.imwrite(folder / "small_mask.tif", np.zeros((128, 256), np.uint16))
    lab = folder / "lab"
    lab.mkdir()
    (lab / "cellpose.yaml").write_text((registry.BUILTIN_DIR / "manifests" / "cellpose.yaml").read_text())
    return folder


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(bad_input_folder, tmp_path, capsys, case):
    sheet_text, change, message = BAD[case]
    sheet = bad_input_folder / "annotated.csv"
    if sheet_text:
        sheet = bad_input_folder / f"{case.replace(' ', '_')}.csv"
        sheet.write_text(sheet_text)
    lab = bad_input_folder / "lab"
    before = tree(lab)
    args = {"model": "cellpose", "name": "nuclei_lab", "params": None, **change}
    code = cli.main(["finetune", "--input", str(sheet), "--model", args["model"], "--name", args["name"],
                     "--registry-dir", str(lab), "--out", str(tmp_path / "out"), "--root-dir", str(tmp_path / "root"),
                     *(["--params", args["params"]] if args["params"] else [])])
    err = capsys.readouterr().err.strip()
    assert code == 65 and len(err.splitlines()) == 1 and err.startswith("AIOD ERROR: ") and message in err, err
    assert tree(lab) == before and not (tmp_path / "out").exists() and not (tmp_path / "root").exists()


def test_the_finetune_entry_stops_at_its_checks_and_writes_nothing(bad_input_folder, tmp_path):
    lab = bad_input_folder / "lab"
    before = tree(lab)
    proc = run_pipeline(tmp_path, "-entry", "FINETUNE", "--input", str(bad_input_folder / "annotated.csv"),
                        "--model", "classical", "--finetune_name", "mine", "--registry_dir", str(lab),
                        "--outdir", str(tmp_path / "results"), "--root_dir", str(tmp_path / "root"), check=False)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "AIOD ERROR:" in line]
    assert proc.returncode != 0 and errors and "model 'classical' cannot be fine-tuned here" in errors[-1]
    assert tree(lab) == before and not (tmp_path / "results" / "finetune.json").exists()
    assert not (tmp_path / "root" / "aiod_cache").exists()
