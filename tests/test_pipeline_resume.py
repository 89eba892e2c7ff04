"""-resume after a killed run, stub runs, and source changes invalidating exactly what they should."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import tifffile

from aiod import synthetic
from pipeline_helpers import NEXTFLOW, ROOT, cache_entries, processes, run_pipeline, trace_rows, tree_digest

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def sheet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    gt = synthetic.touching_nuclei((384, 384), n=120, radius=(7.0, 11.0), seed=5)
    tifffile.imwrite(folder / "big.tif", synthetic.render_nuclei(gt, seed=6))
    (folder / "images.csv").write_text("id,image\nbig,big.tif\n")
    return folder / "images.csv"


def segment_tasks_recorded(launch_dir):
    """SEGMENT tasks Nextflow has seen complete. A task's .exitcode appears before Nextflow polls
    it; only from this log line on does Nextflow queue it for its resume cache."""
    log = launch_dir / ".nextflow.log"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if "Task completed > TaskHandler" in line and "name: SEGMENT" in line)


def test_killed_run_resumes_to_a_byte_identical_mask(tmp_path, sheet):
    reference = tmp_path / "reference"
    reference.mkdir()
    run_pipeline(reference, "--input", str(sheet), "--outdir", "results", "--root_dir", str(reference / "root"),
                 "--num_substacks", "4")  # one SEGMENT task of 16 substacks: the same result as 16 tasks

    work = tmp_path / "killed"
    work.mkdir()
    args = ["run", str(ROOT / "main.nf"), "-profile", "test", "-ansi-log", "false", "--input", str(sheet),
            "--outdir", "results", "--root_dir", str(work / "root"), "--num_substacks", "4", "--batch", "1",
            "--trace_report_suffix", "killed"]
    env = {**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true"}
    proc = subprocess.Popen([NEXTFLOW, *args], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while segment_tasks_recorded(work) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(3)  # the resume cache is written by a background thread, moments after the log line
    assert proc.poll() is None, "the run finished before it could be killed: give it more substacks"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "results" / "big.ome.zarr").exists()
    assert cache_entries(work / "root") == []

    run_pipeline(work, "--input", str(sheet), "--outdir", "results", "--root_dir", str(work / "root"),
                 "--num_substacks", "4", "--batch", "1", "--trace_report_suffix", "resumed", resume=True)
    rows = trace_rows(work / "results", "resumed")
    assert len(processes(rows, "SEGMENT", "CACHED")) >= 2
    assert len(processes(rows, "SEGMENT")) == 16
    assert tree_digest(work / "results" / "big.ome.zarr") == tree_digest(reference / "results" / "big.ome.zarr")


def test_stub_run_walks_the_whole_dag(tmp_path, sheet):
    run_pipeline(tmp_path, "--input", str(sheet), "--outdir", "results", "--root_dir", str(tmp_path / "root"),
                 "--trace_report_suffix", "stub", stub=True)
    rows = trace_rows(tmp_path / "results", "stub")
    for name, count in [("RESOLVE_MODEL", 1), ("CHECK_INPUT", 1), ("PLAN", 1), ("SEGMENT", 1), ("MERGE", 1), ("FINALIZE", 1)]:
        assert len(processes(rows, name, "COMPLETED")) == count, name
    assert not (tmp_path / "root" / "aiod_cache").exists()


@pytest.fixture
def project_copy(tmp_path):
    """The pipeline's files in a folder of the test's own, sharing the project's environment."""
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ["main.nf", "nextflow.config", "nextflow_schema.json", "conf", "modules", "bin", "src", "model_registry"]:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, copy / name)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def statuses(rows) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["process"].split(":")[-1], set()).add(r["status"])
    return out


def edit(path):
    path.write_text(path.read_text() + "\n# an edit\n")


def test_resume_reruns_exactly_the_tasks_whose_code_changed_and_never_for_resources(tmp_path, sheet, project_copy):
    """One project copy, five runs: a site config changing resources and queue reruns nothing (but
    the closing COMPARE, which every run makes anew); an
    edited Python source reruns exactly the tasks that run it; and the result cache is keyed by
    what a result is, not by the code (a change that changes results bumps RESULT_FORMAT_VERSION,
    src/aiod/__init__.py), so an edit with the cache intact segments nothing."""
    common = ["--input", str(sheet), "--outdir", "results", "--root_dir", str(tmp_path / "root"), "--num_substacks", "2"]
    run_pipeline(tmp_path, *common, "--trace_report_suffix", "a", project=project_copy)
    (tmp_path / "site.config").write_text(
        "process {\n  queue = 'other'\n  withLabel: 'gpu' { cpus = 2; memory = 1536.MB; time = 3.h }\n"
        "  withLabel: 'cpu_small' { cpus = 2; memory = 1.5.GB; time = 2.h }\n}\n")
    run_pipeline(tmp_path, "-c", str(tmp_path / "site.config"), *common, "--trace_report_suffix", "b",
                 project=project_copy, resume=True)
    # every task reused; COMPARE always runs: the report names the command of the run that made it
    assert statuses(trace_rows(tmp_path / "results", "b")) == {
        "RESOLVE_MODEL": {"CACHED"}, "CHECK_INPUT": {"CACHED"}, "PLAN": {"CACHED"}, "SEGMENT": {"CACHED"},
        "MERGE": {"CACHED"}, "FINALIZE": {"CACHED"}, "COMPARE": {"COMPLETED"}}

    # the publishing code: FINALIZE runs it, and PLAN (which publishes the cache hits); the result is
    # in the cache, so PLAN runs again, publishes it, and no other task is needed
    edit(project_copy / "src" / "aiod" / "steps" / "finalize.py")
    run_pipeline(tmp_path, *common, "--trace_report_suffix", "c", project=project_copy, resume=True)
    assert statuses(trace_rows(tmp_path / "results", "c")) == {
        "RESOLVE_MODEL": {"CACHED"}, "CHECK_INPUT": {"CACHED"}, "PLAN": {"COMPLETED"}, "COMPARE": {"COMPLETED"}}
    assert json.loads((tmp_path / "results" / "big.json").read_text())["cache_hit"] is True

    edit(project_copy / "src" / "aiod" / "models" / "classical.py")  # planning and segmenting run it
    run_pipeline(tmp_path, *common, "--trace_report_suffix", "d", project=project_copy, resume=True)
    rows = trace_rows(tmp_path / "results", "d")
    assert {r["status"] for r in processes(rows, "PLAN")} == {"COMPLETED"}
    assert processes(rows, "SEGMENT") == []  # the result is in the cache: nothing to segment

    shutil.rmtree(tmp_path / "root" / "aiod_cache")
    edit(project_copy / "src" / "aiod" / "models" / "classical.py")
    run_pipeline(tmp_path, *common, "--trace_report_suffix", "e", project=project_copy, resume=True)
    rows = trace_rows(tmp_path / "results", "e")
    assert statuses(rows) == {
        "RESOLVE_MODEL": {"CACHED"}, "CHECK_INPUT": {"CACHED"}, "PLAN": {"COMPLETED"}, "SEGMENT": {"COMPLETED"},
        "MERGE": {"COMPLETED"}, "FINALIZE": {"COMPLETED"}, "COMPARE": {"COMPLETED"}}
    assert len(processes(rows, "SEGMENT")) == 1  # four small substacks: one task
