"""The pipeline on a real SLURM cluster (tests/slurm_cluster.py) with `-profile slurm,test`.

The cluster starts once for this module and is stopped by PID at its end, whatever happened.
`CLUSTER_CONFIG` points the slurm profile at it: its partitions `cpu` and `gpu`, jobs small
enough for its one node, fast polling; segmentation jobs write the CUDA_VISIBLE_DEVICES they see
into their job log (.command.log), so that the test can read what SLURM gave them.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import tifffile

from aiod import synthetic
from pipeline_helpers import NEXTFLOW, ROOT, cache_entries, processes, run_pipeline, trace_rows, tree_digest
from slurm_cluster import start_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.pipeline]

CLUSTER_CONFIG = """\
// -profile slurm,test on the test cluster (tests/slurm_cluster.py)
executor {
    pollInterval      = '1 sec'
    queueStatInterval = '2 sec'
    exitReadTimeout   = '2 sec'     // a job killed whole leaves no exit file: say so quickly
    submitRateLimit   = '50/1s'
    account           = 'aiod_test'
}
process {
    queue          = 'cpu'
    resourceLimits = [cpus: 2, memory: 3.GB, time: 1.h]
    withLabel: 'cpu_small' {
        cpus   = 1
        memory = 1.GB
    }
    withLabel: 'cpu_large' {
        cpus   = 1
        memory = 1.GB
    }
    withLabel: 'gpu' {
        queue        = 'gpu'
        cpus         = 1
        memory       = 1.GB
        beforeScript = 'echo "aiod-test: CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"'
    }
}
trace.fields = 'task_id,hash,native_id,process,tag,name,status,exit,attempt,memory,duration,realtime,workdir'
"""

# One image in 3 substacks (1 x 3): 3 segmentation jobs, 2 at a time on the node's 2 GPUs.
GRID = ["--num_substacks", "1,3", "--batch", "1"]  # one SEGMENT job per substack


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])  # for sbatch/squeue run by Nextflow
            yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm_data")
    gt = synthetic.touching_nuclei((384, 384), n=120, radius=(7.0, 11.0), seed=5)
    tifffile.imwrite(folder / "big.tif", synthetic.render_nuclei(gt, seed=6))
    (folder / "images.csv").write_text("id,image\nbig,big.tif\n")
    (folder / "cluster.config").write_text(CLUSTER_CONFIG)
    return folder


def slurm_args(folder: Path, data: Path, suffix: str, *extra: str, config: Path | None = None) -> list[str]:
    return ["-c", str(config or data / "cluster.config"), "--input", str(data / "images.csv"), "--outdir", "results",
            "--root_dir", str(folder / "root"), "--trace_report_suffix", suffix, *extra]


@pytest.fixture(scope="module")
def reference(cluster, data, tmp_path_factory):
    """An uninterrupted run; its folder. Each segmentation job sleeps 4 s after its work (inside
    the job) so that two of them surely overlap on the node's 2 GPUs, however loaded the machine:
    a job of about a second could end before slurmd starts the next one."""
    folder = tmp_path_factory.mktemp("slurm_reference")
    config = folder / "reference.config"
    config.write_text(f"includeConfig '{data / 'cluster.config'}'\n"
                      "process { withName: 'SEGMENT' { ext.args = '; sleep 4' } }\n")
    run_pipeline(folder, *slurm_args(folder, data, "reference", *GRID, config=config), profile="slurm,test")
    return folder


def job_log(row: dict) -> str:
    return (Path(row["workdir"]) / ".command.log").read_text()


def test_every_task_is_a_slurm_job_in_its_partition(cluster, reference):
    rows = trace_rows(reference / "results", "reference")
    jobs = cluster.finished_jobs()
    assert {r["process"] for r in rows} >= {"CHECK_INPUT", "PLAN", "SEGMENT", "MERGE", "FINALIZE"}
    for row in rows:
        job = jobs[row["native_id"]]
        assert (job["State"], job["ExitCode"]) == ("COMPLETED", "0:0"), row["name"]
        assert job["Partition"] == ("gpu" if row["process"] == "SEGMENT" else "cpu"), row["name"]
        assert job["Account"] == "aiod_test"
        assert job["WorkDir"] == row["workdir"]
    assert (reference / "results" / "big.ome.zarr").is_dir()


def test_segmentation_jobs_get_a_gpu_of_their_own(cluster, reference):
    rows = trace_rows(reference / "results", "reference")
    segment = processes(rows, "SEGMENT")
    assert len(segment) == 3
    jobs = cluster.finished_jobs()
    seen = {}
    for row in segment:
        assert "#SBATCH --gres=gpu:1" in (Path(row["workdir"]) / ".command.run").read_text()
        assert "TresPerNode=gres:gpu:1" in cluster.run("scontrol", "show", "job", row["native_id"]).stdout
        match = re.search(r"^aiod-test: CUDA_VISIBLE_DEVICES=(\S*)$", job_log(row), re.M)
        assert match and match.group(1) in {"0", "1"}, job_log(row)
        seen[row["native_id"]] = match.group(1)
    # the node has 2 GPUs: two of the 3 jobs ran at once, each on its own GPU
    together = [(a, b) for a in seen for b in seen
                if a < b and jobs[a]["Start"] < jobs[b]["End"] and jobs[b]["Start"] < jobs[a]["End"]]
    assert together
    assert all(seen[a] != seen[b] for a, b in together)
    for row in rows:
        if row["process"] != "SEGMENT":
            assert "--gres" not in (Path(row["workdir"]) / ".command.run").read_text(), row["name"]


def test_cancelled_job_fails_the_run_and_resume_gives_the_same_mask(cluster, data, reference, tmp_path):
    """scancel kills a job with SIGTERM: exit 143, which is retried; cancelling the same
    substack's job on each of its 3 attempts stops the run. -resume, with other memory and time
    for segmentation, reuses the finished substacks and gives a mask byte-identical to the
    uninterrupted run's.

    A job is cancelled once its task is running (.command.out exists): Nextflow 24.10's job
    wrapper exits 1 ('pid: unbound variable'), not 143, when SIGTERM comes before it started
    the task. A segmentation of this small image takes about 2 s, which a loaded machine's
    squeue can miss (an attempt finished before it was seen): here each segmentation task
    sleeps 8 s after its work, inside the task, so that every attempt is seen running."""
    slow = tmp_path / "slow.config"
    slow.write_text(f"includeConfig '{data / 'cluster.config'}'\n"
                    "process { withName: 'SEGMENT' { ext.args = '; sleep 8' } }\n")
    args = ["run", str(ROOT / "main.nf"), "-profile", "slurm,test", "-ansi-log", "false",
            *slurm_args(tmp_path, data, "cancelled", *GRID, config=slow)]
    env = {**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true"}
    with open(tmp_path / "cancelled.log", "w") as out:
        proc = subprocess.Popen([NEXTFLOW, *args], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        cancelled = []
        deadline = time.time() + 300
        try:
            while proc.poll() is None and time.time() < deadline:
                for job_id, name, state, workdir in cluster.queue():
                    if (name == "nf-SEGMENT_(big_3_3)" and state == "RUNNING" and job_id not in cancelled
                            and (workdir / ".command.out").exists()):
                        time.sleep(0.5)
                        cluster.run("scancel", job_id)
                        cancelled.append(job_id)
                time.sleep(0.3)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    output = (tmp_path / "cancelled.log").read_text()
    assert proc.returncode != 0, output[-3000:]
    assert len(cancelled) == 3
    assert "SEGMENT (big:3/3)" in output and "(143)" in output
    rows = trace_rows(tmp_path / "results", "cancelled")
    third = [r for r in processes(rows, "SEGMENT") if r["tag"] == "big:3/3"]
    assert [(r["attempt"], r["status"], r["exit"]) for r in third] == [(str(a), "FAILED", "143") for a in (1, 2, 3)]
    assert sorted(r["native_id"] for r in third) == sorted(cancelled)
    assert {cluster.finished_jobs()[j]["State"] for j in cancelled} == {"CANCELLED"}
    assert not (tmp_path / "results" / "big.ome.zarr").exists()
    assert cache_entries(tmp_path / "root") == []

    resources = tmp_path / "resources.config"
    resources.write_text(f"includeConfig '{slow}'\n"
                         "process { withName: 'SEGMENT' { memory = 1200.MB; time = 30.min } }\n")
    run_pipeline(tmp_path, *slurm_args(tmp_path, data, "resumed", *GRID, config=resources), profile="slurm,test",
                 resume=True)
    rows = trace_rows(tmp_path / "results", "resumed")
    assert len(processes(rows, "SEGMENT", "CACHED")) == 2
    assert [r["tag"] for r in processes(rows, "SEGMENT", "COMPLETED")] == ["big:3/3"]
    assert tree_digest(tmp_path / "results" / "big.ome.zarr") == tree_digest(reference / "results" / "big.ome.zarr")


def test_job_array_cancelled_while_it_runs_fails_the_run_and_resume_gives_the_same_mask(cluster, data, reference, tmp_path):
    """--job_array 10: the 3 substacks in batches of 2 are 2 SEGMENT tasks, submitted as one
    SLURM job array (one sbatch, elements ARRAYID_0 and ARRAYID_1) asking --substack_memory each,
    so that both fit on the node at once.
    scancel of the whole array while both elements run stops the run (no retry here); -resume
    submits what did not finish as a new array, and the mask is byte-identical to the
    uninterrupted run's (one job per substack)."""
    config = tmp_path / "no_retry.config"
    config.write_text(f"includeConfig '{data / 'cluster.config'}'\n"
                      "// long enough for the test to see both elements run\n"
                      "process { withName: 'SEGMENT' { errorStrategy = 'terminate'; beforeScript = 'sleep 8' } }\n")
    grid = ["--num_substacks", "1,3", "--batch", "2", "--job_array", "10", "--substack_memory", "1536 MB"]
    args = ["run", str(ROOT / "main.nf"), "-profile", "slurm,test", "-ansi-log", "false",
            *slurm_args(tmp_path, data, "array", *grid, config=config)]
    env = {**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true"}
    with open(tmp_path / "array.log", "w") as out:
        proc = subprocess.Popen([NEXTFLOW, *args], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        cancelled = None
        deadline = time.time() + 300
        try:
            while proc.poll() is None and time.time() < deadline and cancelled is None:
                running = [job_id for job_id, name, state, workdir in cluster.queue()
                           if name.startswith("nf-SEGMENT") and "_" in job_id and state == "RUNNING"]
                if len(running) == 2:
                    time.sleep(1)
                    cancelled = running[0].split("_")[0]
                    cluster.run("scancel", cancelled)
                time.sleep(0.3)
            proc.wait(timeout=max(deadline - time.time(), 1))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    output = (tmp_path / "array.log").read_text()
    assert cancelled and proc.returncode != 0, output[-3000:]
    segment = processes(trace_rows(tmp_path / "results", "array"), "SEGMENT")
    assert sorted(r["native_id"] for r in segment) == [f"{cancelled}_0", f"{cancelled}_1"]
    assert "FAILED" in {r["status"] for r in segment}
    jobs = cluster.finished_jobs()
    assert {jobs[f"{cancelled}_{i}"]["State"].split()[0] for i in (0, 1)} == {"CANCELLED"}
    assert not (tmp_path / "results" / "big.ome.zarr").exists()
    assert cache_entries(tmp_path / "root") == []

    run_pipeline(tmp_path, *slurm_args(tmp_path, data, "array_resumed", *grid, config=config), profile="slurm,test",
                 resume=True)
    rows = trace_rows(tmp_path / "results", "array_resumed")
    rerun = processes(rows, "SEGMENT", "COMPLETED")
    assert rerun and len(rerun) + len(processes(rows, "SEGMENT", "CACHED")) == 2
    assert len({r["native_id"].split("_")[0] for r in rerun}) == 1 and all("_" in r["native_id"] for r in rerun)
    script = next(p.read_text() for p in (tmp_path / "root" / "work").glob("*/*/.command.run")
                  if f"#SBATCH --array 0-{len(rerun) - 1}" in p.read_text())
    assert "#SBATCH --mem 1536M" in script  # --substack_memory, for each element
    assert tree_digest(tmp_path / "results" / "big.ome.zarr") == tree_digest(reference / "results" / "big.ome.zarr")


def test_job_over_its_memory_is_killed_by_slurm_and_retried_with_more(cluster, data, tmp_path):
    """SLURM (jobacct_gather OverMemoryKill) kills the whole job with SIGKILL: no exit status
    is left ('-', 2147483647 to Nextflow), the job ends FAILED with signal 9, and the task is
    retried with its second attempt's memory. The image is large enough (2048x2048, about 600 MB
    while it is segmented) that the task is over 40 MB for seconds, whatever the load: SLURM
    samples memory once a second, and the small image's task can end between two samples."""
    gt = synthetic.touching_nuclei((2048, 2048), n=800, radius=(7.0, 11.0), seed=7)
    tifffile.imwrite(tmp_path / "large.tif", synthetic.render_nuclei(gt, seed=8))
    (tmp_path / "images.csv").write_text("id,image\nlarge,large.tif\n")
    config = tmp_path / "memory.config"
    config.write_text(f"includeConfig '{data / 'cluster.config'}'\n"
                      "// attempt 1: far below what segmentation needs; attempt 2: enough\n"
                      "process { withName: 'SEGMENT' { memory = { task.attempt == 1 ? 40.MB : 1.GB } } }\n")
    run_pipeline(tmp_path, *slurm_args(tmp_path, tmp_path, "memory", "--num_substacks", "1", config=config),
                 profile="slurm,test")
    rows = processes(trace_rows(tmp_path / "results", "memory"), "SEGMENT")
    assert [(r["attempt"], r["status"], r["exit"], r["memory"]) for r in rows] == [
        ("1", "FAILED", "-", "40 MB"), ("2", "COMPLETED", "0", "1 GB")]
    killed = cluster.finished_jobs()[rows[0]["native_id"]]
    assert (killed["State"], killed["ExitCode"]) == ("FAILED", "0:9")
    assert "exceeded memory limit" in job_log(rows[0])
    assert (tmp_path / "results" / "large.ome.zarr").is_dir()


def test_task_failing_for_another_reason_stops_the_run_with_its_message(cluster, tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + b"\x13" * 200)
    (tmp_path / "images.csv").write_text("id,image\nbroken,broken.tif\n")
    (tmp_path / "cluster.config").write_text(CLUSTER_CONFIG)
    proc = run_pipeline(tmp_path, *slurm_args(tmp_path, tmp_path, "broken"), profile="slurm,test", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [line for line in output.splitlines() if "AIOD ERROR:" in line]
    assert errors and f"{tmp_path / 'broken.tif'}: cannot be read as TIFF" in errors[-1], output[-3000:]
    rows = processes(trace_rows(tmp_path / "results", "broken"), "CHECK_INPUT")
    assert [(r["attempt"], r["status"], r["exit"]) for r in rows] == [("1", "FAILED", "65")]
    job = cluster.finished_jobs()[rows[0]["native_id"]]
    assert (job["State"], job["ExitCode"]) == ("FAILED", "65:0")
    assert cache_entries(tmp_path / "root") == []
