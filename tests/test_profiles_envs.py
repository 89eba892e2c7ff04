"""The `conda` and `venv` profiles put every task in the environment of the run's model family.

Conda channels cannot be reached here, so conda environments are never created in these tests:
a stand-in `conda` on PATH records what Nextflow asks of it. The venv tests build (or reuse) the
real environments with bin/aiod-env, in the shared directory ($AIOD_ENVS_DIR).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline_helpers import NEXTFLOW, ROOT, nextflow

FAMILIES = ["cellpose", "cellposesam", "stardist", "sam2", "empanada"]

# A one-process pipeline beside the real configuration: its task prints the python it runs.
PROBE = """
process PROBE {
    label 'gpu'
    output: stdout
    script:
    "python3 -c 'import sys; print(\\"prefix=\\" + sys.prefix)'"
}
workflow { PROBE() | view }
"""


@pytest.fixture
def probe(tmp_path):
    """A project with the PROBE pipeline, the real nextflow.config, bin/ and envs/."""
    project = tmp_path / "probe"
    project.mkdir()
    (project / "main.nf").write_text(PROBE)
    (project / "nextflow.config").write_text(f"includeConfig '{ROOT / 'nextflow.config'}'\n")
    (project / "bin").symlink_to(ROOT / "bin")
    (project / "envs").symlink_to(ROOT / "envs")
    return project


def run_probe(project, cwd, profile, model, extra_env=None):
    env = {**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true", "NXF_ANSI_LOG": "false",
           **(extra_env or {})}
    args = [NEXTFLOW, "run", str(project / "main.nf"), "-profile", profile, "--model", model,
            "--root_dir", str(cwd / "root"), "--outdir", str(cwd / "out")]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("profile", ["conda,test", "venv,test", "local,venv", "slurm,conda"])
def test_config_with_an_environment_profile_resolves_cleanly(tmp_path, profile):
    proc = nextflow(["config", str(ROOT), "-profile", profile], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "WARN" not in proc.stdout + proc.stderr


def test_conda_profile_points_every_process_at_the_default_familys_file_and_shared_cache(tmp_path):
    proc = nextflow(["config", str(ROOT), "-profile", "conda,test", "-o", "flat"], cwd=tmp_path)
    flat = dict(line.split(" = ", 1) for line in proc.stdout.splitlines() if " = " in line)
    assert flat["process.conda"] == f"'{ROOT}/envs/classical.yml'"
    assert flat["conda.enabled"] == "true"
    assert flat["conda.cacheDir"] == f"'{os.path.expanduser('~')}/.nextflow/aiod/conda'"
    assert flat["conda.createTimeout"] == "'2 h'"


@pytest.mark.pipeline
@pytest.mark.parametrize("family", FAMILIES)
def test_conda_profile_creates_the_familys_environment_from_its_file_under_root_dir(tmp_path, probe, family):
    calls = tmp_path / "conda-calls.txt"
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "conda").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho 'no channels here' >&2\nexit 1\n")
    (fake / "conda").chmod(0o755)
    proc = run_probe(probe, tmp_path, "test,conda", family, {"PATH": f"{fake}:{os.environ['PATH']}"})
    assert proc.returncode != 0
    created = [line.split() for line in calls.read_text().splitlines() if line.startswith("env create")]
    assert created, proc.stdout[-3000:]
    args = created[0]
    assert Path(args[args.index("--file") + 1]).resolve() == ROOT / "envs" / f"{family}.yml"
    assert args[args.index("--prefix") + 1].startswith(str(tmp_path / "root" / "conda") + "/")


@pytest.mark.pipeline
@pytest.mark.families
def test_venv_profile_runs_gpu_tasks_in_the_familys_environment_on_the_local_executor(tmp_path, probe):
    """-profile local,venv: the GPU label's own beforeScript (conf/local.config) stays, and the
    task's python is the family environment's, built (or found) by bin/aiod-env."""
    proc = run_probe(probe, tmp_path, "local,venv", "stardist")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    built = subprocess.run([str(ROOT / "bin" / "aiod-env"), "path", "stardist"], capture_output=True, text=True)
    assert f"prefix={built.stdout.strip()}" in proc.stdout


@pytest.mark.pipeline
def test_venv_profile_stops_the_task_with_aiod_envs_message_when_the_environment_cannot_be_built(tmp_path, probe):
    proc = run_probe(probe, tmp_path, "test,venv", "nosuchfamily")
    assert proc.returncode != 0
    assert "aiod-env: unknown family 'nosuchfamily'" in proc.stdout + proc.stderr
    assert "prefix=/" not in proc.stdout  # the task's python never ran
