"""Faults a shared lab meets: a segmentation task killed by the system, and two people starting the
same run at once. Both must end with one intact cache entry and the undisturbed run's mask, byte
for byte. (A killed Nextflow and -resume: test_pipeline_resume.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import tifffile

from aiod import synthetic
from pipeline_helpers import NEXTFLOW, ROOT, cache_entries, processes, run_pipeline, trace_rows, tree_digest

pytestmark = pytest.mark.pipeline
ARGS = ["--num_substacks", "2", "--outdir", "results"]


@pytest.fixture(scope="module")
def sheet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    gt = synthetic.touching_nuclei((320, 320), n=80, radius=(7.0, 11.0), seed=15)
    tifffile.imwrite(folder / "cells.tif", synthetic.render_nuclei(gt, seed=16))
    (folder / "images.csv").write_text("id,image\ncells,cells.tif\n")
    return folder / "images.csv"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sheet):
    """The undisturbed run."""
    work = tmp_path_factory.mktemp("reference")
    run_pipeline(work, "--input", str(sheet), "--root_dir", str(work / "root"), *ARGS)
    return tree_digest(work / "results" / "cells.ome.zarr")


def start(work: Path, sheet: Path, root: Path, suffix: str) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    args = ["run", str(ROOT / "main.nf"), "-profile", "test", "-ansi-log", "false", "--input", str(sheet),
            "--root_dir", str(root), "--trace_report_suffix", suffix, *ARGS]
    env = {**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true"}
    return subprocess.Popen([NEXTFLOW, *args], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def segment_process_under(root: Path) -> int | None:
    """The pid of an `aiod segment` process running in a task folder below `root`, if any."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"segment" in cmdline and any(part.endswith(b"bin/aiod") for part in cmdline) and cwd.startswith(str(root)):
            return int(pid)
    return None


def test_a_segment_task_killed_by_the_system_is_retried_and_the_mask_is_byte_identical(tmp_path, sheet, reference):
    run = start(tmp_path / "launch", sheet, tmp_path / "root", "killed")
    deadline, victim = time.time() + 300, None
    while victim is None and time.time() < deadline and run.poll() is None:
        victim = segment_process_under(tmp_path / "root")
        time.sleep(0.05)
    assert victim is not None, "no SEGMENT task was seen running"
    os.kill(victim, signal.SIGKILL)
    output, _ = run.communicate(timeout=900)
    assert run.returncode == 0, output[-3000:]
    rows = trace_rows(tmp_path / "launch" / "results", "killed")
    assert [r["exit"] for r in processes(rows, "SEGMENT", "FAILED")] == ["137"]
    assert len(processes(rows, "SEGMENT", "COMPLETED")) == 1  # the batch of four substacks, run again whole
    assert len(cache_entries(tmp_path / "root")) == 1
    assert tree_digest(tmp_path / "launch" / "results" / "cells.ome.zarr") == reference


def test_two_identical_runs_started_together_compute_once_and_publish_the_same_mask(tmp_path, sheet, reference):
    runs = [start(tmp_path / name, sheet, tmp_path / "root", name) for name in ("first", "second")]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    computed = [len(processes(trace_rows(tmp_path / name / "results", name), "SEGMENT", "COMPLETED"))
                for name in ("first", "second")]
    assert sorted(computed) == [0, 1]      # one run segmented (one task, four substacks), the other waited for its result
    assert len(cache_entries(tmp_path / "root")) == 1
    for name in ("first", "second"):
        assert tree_digest(tmp_path / name / "results" / "cells.ome.zarr") == reference
