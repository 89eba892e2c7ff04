"""Paths and parameters a user gets wrong: one line, nothing computed, nothing touched.

Each row is one mistake made as a user makes it: the run is launched from the folder that holds
the images, with relative paths. The run must stop with the expected `AIOD ERROR:` line, leave no
result in the cache or in --outdir, and leave every input byte-identical. The last test is the
same user's good run with relative paths: everything lands where the paths say, relative to
the folder the run was launched from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from aiod import ngff
from pipeline_helpers import cache_entries, run_pipeline, tree_digest

pytestmark = pytest.mark.pipeline


@pytest.fixture
def lab(tmp_path):
    """A folder holding two images (a TIFF and an OME-Zarr) and a samplesheet naming them relatively."""
    img = np.zeros((64, 64), dtype=np.uint16)
    img[10:30, 10:30] = img[40:60, 35:55] = 1000
    tifffile.imwrite(tmp_path / "field.tif", img)
    ngff.write_image(tmp_path / "volume.ome.zarr", np.stack([img] * 4), axes="ZYX")
    (tmp_path / "images.csv").write_text("id,image\nfield,field.tif\nvolume,volume.ome.zarr\n")
    return tmp_path


def _only_the_volume(folder):
    (folder / "images.csv").write_text("id,image\nvolume,volume.ome.zarr\n")


def _user_results_folder(folder):
    (folder / "results" / "field.ome.zarr").mkdir(parents=True)
    (folder / "results" / "field.ome.zarr" / "notes.txt").write_text("my own analysis")


def _float_ground_truth(folder):
    tifffile.imwrite(folder / "probabilities.tif", np.zeros((64, 64), np.float32))
    (folder / "images.csv").write_text("id,image,ground_truth\nfield,field.tif,probabilities.tif\n")


CASES = {
    # name: (extra parameters, set-up, expected fragment; {d} is the folder)
    "relative outdir onto the input folder": (
        ["--outdir", "."], _only_the_volume, "line 2: column 'id': the result '{d}/volume.ome.zarr' would replace the input "
                                             "'{d}/volume.ome.zarr'"),
    "outdir inside an input zarr": (
        ["--outdir", "volume.ome.zarr/results"], None, "--outdir {d}/volume.ome.zarr/results: lies inside the input {d}/volume.ome.zarr"),
    "a result name taken by the user's own folder": (
        ["--outdir", "results"], _user_results_folder,
        "'{d}/results/field.ome.zarr' already exists and is not a result AIoD published; it is never overwritten"),
    "root_dir inside an input zarr": (
        ["--root_dir", "volume.ome.zarr/cache"], None, "--root_dir {d}/volume.ome.zarr/cache: lies inside the input {d}/volume.ome.zarr"),
    "unknown fingerprint mode": (["--fingerprint", "fast"], None, "--fingerprint 'fast': expected one of full, sample"),
    "unknown publish mode": (["--publish_mode", "move"], None, "--publish_mode 'move': expected one of copy, symlink, link, copyNoFollow"),
    "misspelled parameter": (["--outdri", "x"], None, "unknown parameter --outdri (did you mean --outdir?)"),
    "a flag given a word": (["--save_tiff", "maybe"], None, "--save_tiff 'maybe': expected true or false"),
    "a ground truth that is not a label image": (
        [], _float_ground_truth, "line 2: column 'ground_truth': {d}/probabilities.tif has float32 pixels; expected a label "
                                 "image of integers"),
    "a job array size that is not a number": (["--job_array", "many"], None, "--job_array 'many': expected a whole number >= 0"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_wrong_path_or_parameter_stops_the_run_and_touches_nothing(lab, case):
    params, setup, expected = CASES[case]
    if setup:
        setup(lab)
    inputs = {name: _content(lab / name) for name in ("field.tif", "volume.ome.zarr", "images.csv")}
    args = {"--input": "images.csv", "--outdir": "results", "--root_dir": "root"}
    for name, value in zip(params[::2], params[1::2]):
        args[name] = value
    proc = run_pipeline(lab, *[x for kv in args.items() for x in kv], check=False)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if "AIOD ERROR:" in line]
    assert proc.returncode != 0 and errors, out[-3000:]
    assert expected.format(d=lab) in errors[-1]
    assert cache_entries(lab / "root") == [] and cache_entries(lab / "volume.ome.zarr" / "cache") == []
    assert [p for p in lab.rglob("*.json") if p.name != "zarr.json" and "work" not in p.relative_to(lab).parts] == []
    assert {name: _content(lab / name) for name in inputs} == inputs


def _content(path):
    """Every file of an input and its bytes. Nextflow itself creates its run records
    (--outdir's pipeline_info/) and work folder (--root_dir's work/) before the pipeline's first
    check can run: for the two rows that put those inside the input Zarr, those new folders are
    the one thing allowed to appear there; no file of the image may change or go."""
    if path.is_file():
        return path.read_bytes()
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file() and f.relative_to(path).parts[:2] not in {("results", "pipeline_info"), ("cache", "work")}}


def test_relative_paths_start_from_the_launch_folder_and_a_rerun_replaces_only_its_own_results(lab):
    (lab / "lab_registry").mkdir()
    params = ["--input", "images.csv", "--outdir", "out", "--root_dir", "root", "--registry_dir", "lab_registry"]
    first = run_pipeline(lab, *params, "--trace_report_suffix", "first")
    assert "AIoD summary" in first.stdout
    assert len(cache_entries(lab / "root")) == 2                    # the shared cache, not a task's work folder
    record = json.loads((lab / "out" / "field.json").read_text())
    assert record["format"] == "aiod-record/1" and record["published"] == {
        suffix: str(lab / "out" / f"field{suffix}") for suffix in (".ome.zarr", ".objects.parquet", ".objects.csv")}
    assert sorted(p.name for p in (lab / "out").iterdir()) == [
        "comparison.csv", "comparison.json", "field.json", "field.objects.csv", "field.objects.parquet", "field.ome.zarr",
        "pipeline_info", "report.html", "volume.json", "volume.objects.csv", "volume.objects.parquet", "volume.ome.zarr"]
    mask = tree_digest(lab / "out" / "field.ome.zarr")

    second = run_pipeline(lab, *params, "--trace_report_suffix", "second")  # replaces the first run's results
    assert "2 image(s): 0 computed, 2 from the cache" in second.stdout
    assert json.loads((lab / "out" / "field.json").read_text())["cache_hit"] is True
    assert tree_digest(lab / "out" / "field.ome.zarr") == mask
    assert not [p for p in (lab / "out").iterdir() if p.name.startswith(".aiod-partial-")]
