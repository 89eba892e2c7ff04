"""The `conda` and `venv` profiles put each task in the environment of its model's family
(FETCH_ARTIFACTS, PLAN, SEGMENT), or in the pipeline's own (`classical`) for every other step.

Conda channels cannot be reached here, so conda environments are never created in these tests:
a stand-in `conda` on PATH records what Nextflow asks of it. The venv tests build (or reuse) the
real environments with bin/aiod-env, in the shared directory ($AIOD_ENVS_DIR); the run of three
families in their own environments is tests/test_pipeline_families.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline_helpers import NEXTFLOW, ROOT, nextflow

FAMILIES = ["cellpose", "cellposesam", "stardist", "sam2", "empanada"]

# A one-process pipeline beside the real configuration: its task runs bin/aiod as a step that
# loads a model of family --model does.
PROBE = """
process PROBE {
    label 'gpu'
    output: stdout
    script:
    "AIOD_FAMILY=${params.model} aiod sources > /dev/null && echo step-\\$((40 + 2))"
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
    (project / "src").symlink_to(ROOT / "src")
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


MODULES = ROOT / "modules" / "local"
FAMILY_STEPS = {"fetch_artifacts", "finetune_train", "plan", "segment"}  # the steps that load a model


def test_each_module_names_the_conda_environment_of_its_models_family_or_the_pipelines_own():
    for module in sorted(MODULES.glob("*/main.nf")):
        directives = [line.strip() for line in module.read_text().splitlines() if line.strip().startswith("conda ")]
        family = module.parent.name in FAMILY_STEPS
        assert directives == ['conda "${projectDir}/envs/${model.family}.yml"' if family
                              else 'conda "${projectDir}/envs/classical.yml"'], module


def test_conda_profile_enables_conda_with_a_shared_cache_and_sets_no_run_wide_environment(tmp_path):
    proc = nextflow(["config", str(ROOT), "-profile", "conda,test", "-o", "flat"], cwd=tmp_path)
    flat = dict(line.split(" = ", 1) for line in proc.stdout.splitlines() if " = " in line)
    assert "process.conda" not in flat  # each module's own directive
    assert flat["conda.enabled"] == "true"
    assert flat["conda.cacheDir"] == f"'{os.path.expanduser('~')}/.nextflow/aiod/conda'"
    assert flat["conda.createTimeout"] == "'2 h'"


@pytest.mark.pipeline
def test_conda_profile_creates_one_environment_per_family_of_a_run_of_several_models(tmp_path):
    """A stand-in conda that records each `env create` and makes an empty prefix: the stub run
    asks for the pipeline's own environment and one per family of --models, each once."""
    calls = tmp_path / "conda-calls.txt"
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "conda").write_text(
        "#!/bin/sh\n"
        f"echo \"$@\" >> {calls}\n"
        "if [ \"$1 $2\" = 'env create' ]; then while [ $# -gt 0 ]; do [ \"$1\" = --prefix ] && mkdir -p \"$2/bin\"; shift; done; exit 0; fi\n"
        f"if [ \"$1\" = info ]; then printf '{{\\n  \"conda_prefix\": \"{fake}\",\\n  \"x\": 1\\n}}\\n'; exit 0; fi\n"
        "exit 0\n")
    (fake / "conda").chmod(0o755)
    (fake / "bin").mkdir()
    (fake / "bin" / "activate").write_text(f'export PATH="{ROOT / ".venv" / "bin"}:$PATH"\n')  # stands in for each env
    import numpy as np
    import tifffile
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((64, 64), np.uint16))
    (tmp_path / "images.csv").write_text("id,image\nimg,img.tif\n")
    env = {**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true", "NXF_ANSI_LOG": "false",
           "PATH": f"{fake}:{os.environ['PATH']}"}
    proc = subprocess.run([NEXTFLOW, "run", str(ROOT / "main.nf"), "-profile", "test,conda", "-stub-run",
                           "--input", "images.csv", "--models", "classical, cellpose:nuclei, stardist",
                           "--root_dir", str(tmp_path / "root"), "--outdir", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    created = [line.split() for line in calls.read_text().splitlines() if line.startswith("env create")]
    files = sorted(Path(args[args.index("--file") + 1]).resolve().name for args in created)
    assert files == ["cellpose.yml", "classical.yml", "stardist.yml"]
    assert all(args[args.index("--prefix") + 1].startswith(str(tmp_path / "root" / "conda") + "/") for args in created)


@pytest.mark.pipeline
@pytest.mark.families
def test_venv_profile_runs_a_model_step_in_its_familys_environment_beside_the_gpu_labels_own_script(tmp_path, probe):
    """-profile local,venv: the GPU label's own beforeScript (conf/local.config) stays, and
    bin/aiod starts again in the family environment, built (or found) by bin/aiod-env."""
    built = subprocess.run([str(ROOT / "bin" / "aiod-env"), "build", "stardist"], capture_output=True, text=True)
    proc = run_probe(probe, tmp_path, "local,venv", "stardist")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step-42" in proc.stdout
    logs = [p.read_text() for p in (tmp_path / "root" / "work").rglob(".command.err")]
    assert any(f"aiod: python {built.stdout.strip().splitlines()[-1]}" in text for text in logs), logs


@pytest.mark.pipeline
def test_venv_profile_stops_the_task_with_aiod_envs_message_when_the_environment_cannot_be_built(tmp_path, probe):
    proc = run_probe(probe, tmp_path, "test,venv", "nosuchfamily")
    assert proc.returncode != 0
    assert "aiod-env: unknown family 'nosuchfamily'" in proc.stdout + proc.stderr
    assert "step-42" not in proc.stdout  # the step never ran
