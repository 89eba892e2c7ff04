"""The shared cache seen from whole pipeline runs: a damaged entry is never published, and a run
waits for the result of the run that holds its key."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import tifffile

from aiod import claims, synthetic
from pipeline_helpers import NEXTFLOW, ROOT, cache_entries, processes, run_pipeline, trace_rows, tree_digest

pytestmark = pytest.mark.pipeline


def test_a_cached_result_missing_a_chunk_is_recomputed_and_the_intact_mask_published(tmp_path):
    gt = synthetic.touching_nuclei((160, 160), n=30, radius=(7.0, 11.0), seed=21)
    tifffile.imwrite(tmp_path / "img.tif", synthetic.render_nuclei(gt, seed=22))
    (tmp_path / "images.csv").write_text("id,image\nimg,img.tif\n")
    common = ["--input", str(tmp_path / "images.csv"), "--root_dir", str(tmp_path / "root"), "--num_substacks", "2"]
    run_pipeline(tmp_path, *common, "--outdir", str(tmp_path / "first"), "--trace_report_suffix", "first")
    intact = tree_digest(tmp_path / "first" / "img.ome.zarr")
    [entry] = cache_entries(tmp_path / "root")
    chunk = next(p for p in sorted(entry.glob("labels.ome.zarr/labels/*/0/**/*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()

    run_pipeline(tmp_path, *common, "--outdir", str(tmp_path / "second"), "--trace_report_suffix", "second")

    assert len(processes(trace_rows(tmp_path / "second", "second"), "SEGMENT", "COMPLETED")) == 1  # 4 substacks, 1 task
    assert tree_digest(tmp_path / "second" / "img.ome.zarr") == intact
    assert cache_entries(tmp_path / "root") == [entry] and chunk.is_file()
    [moved] = (tmp_path / "root" / "aiod_cache" / ".damaged" / "classical" / "nuclei").iterdir()
    assert moved.name.startswith(f"{entry.name}-") and not (moved / chunk.relative_to(entry)).exists()
    warnings = [line for err in (tmp_path / "root" / "work").glob("*/*/.command.err")
                for line in err.read_text().splitlines() if line.startswith("AIOD WARNING")]
    assert warnings == [f"AIOD WARNING: damaged cache entry {entry}: {chunk.relative_to(entry)} is missing; "
                        f"moved to {moved}, the result will be computed again"]


def test_a_run_finding_its_key_claimed_waits_and_publishes_the_holders_result(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", synthetic.render_nuclei(synthetic.touching_nuclei((160, 160), n=30, radius=(7.0, 11.0), seed=31), seed=32))
    (tmp_path / "images.csv").write_text("id,image\nimg,img.tif\n")
    root = tmp_path / "root"
    common = ["run", str(ROOT / "main.nf"), "-profile", "test", "-ansi-log", "false", "--input", str(tmp_path / "images.csv"),
              "--root_dir", str(root), "--num_substacks", "2"]
    run_pipeline(tmp_path, *common[6:], "--outdir", str(tmp_path / "first"))
    [entry] = cache_entries(root)
    held = tmp_path / "held"
    os.rename(entry, held)  # as if the first run were still computing it, holding the key (this test's process)
    claim = claims.claim_path(entry)
    assert claims.try_claim(claim, pid=os.getpid()) is not None

    second = tmp_path / "second-launch"
    second.mkdir()
    env = {**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true"}
    proc = subprocess.Popen([NEXTFLOW, *common, "--outdir", str(tmp_path / "second"), "--trace_report_suffix", "second"],
                            cwd=second, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, waiting = time.time() + 600, []
    while not waiting and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
        waiting = [line for out in (root / "work").glob("*/*/.command.out")
                   for line in out.read_text().splitlines() if "waiting for the result" in line]
    os.rename(held, entry)  # the holder commits (an atomic rename) and releases its claim
    claim.unlink()
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    assert len(waiting) == 1 and waiting[0].startswith(f"[aiod] key {entry.name[:12]}: waiting for the result that run ")
    assert f"on {socket.gethostname()} (pid {os.getpid()}, since" in waiting[0]
    rows = trace_rows(tmp_path / "second", "second")
    assert processes(rows, "SEGMENT") == [] and processes(rows, "FINALIZE") == []  # its PLAN published the hit
    assert tree_digest(tmp_path / "second" / "img.ome.zarr") == tree_digest(tmp_path / "first" / "img.ome.zarr")
