"""The model families' own environments, for tests that run from the main test env (.venv).

Each family runs in its environment, built by `bin/aiod-env` (the same tool and the same shared
directory as the `venv` profile: $AIOD_ENVS_DIR, default ~/.cache/aiod/envs), so a second test
run on the same machine builds nothing. Tests reach a family through a subprocess:

    family_python(family)     -> Path of the family environment's python (built on first use)
    nuclei_data               -> folder of stardist.data's annotated 2D and 3D nuclei as TIFFs
    trained_artifact(family, ndim=2) -> Path of a model artifact made by
                                 tests/families/train_<family>.py in that environment, once per
                                 session, in the layout the registry points the adapter to (a
                                 file, or an unpacked folder)
    run_in_family(family, script, *args, cwd=...) -> CompletedProcess of tests/families/<script>
    segment_in_family(...)    -> labels and record of the adapter run on a whole image
    split_vs_whole(...)       -> the adapter on a whole image and split with the pipeline's planner
                                 and merge (aiod.splitcheck.check's record)

Test modules import the fixtures they use (`from family_envs import trained_artifact`).
AIOD_TEST_ARTIFACTS=<dir> keeps the trained artifacts there between sessions (for working on a
family; CI leaves it unset and trains afresh in the session's tmp dir).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline_helpers import ROOT

FAMILIES_DIR = ROOT / "tests" / "families"
AIOD_ENV = ROOT / "bin" / "aiod-env"
# Family processes run one at a time (the test session waits for each), so they get every core,
# up to 4, unless the caller's environment says otherwise (set OMP_NUM_THREADS=1 when running
# other jobs beside the tests: on a busy 2-core machine two threads made a training step 4x
# slower than one; on an idle one the StarDist 3D training used 322 s of CPU in 235 s with two).
_CORES = str(min(4, os.cpu_count() or 1))
THREADS = {"OMP_NUM_THREADS": _CORES, "TF_NUM_INTRAOP_THREADS": _CORES, "TF_NUM_INTEROP_THREADS": "1"}


@functools.cache
def env_python(family: str) -> Path:
    """Build (once; a no-op when built) and return the python of `family`'s environment."""
    proc = subprocess.run([sys.executable, str(AIOD_ENV), "build", family], capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"bin/aiod-env build {family} failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "python"


def run_in_family(family: str, script: str, *args, cwd: Path, env: dict | None = None, check: bool = True,
                  timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run tests/families/<script> with `family`'s python in `cwd` (a task-like folder: the
    scripts keep library caches there, out of $HOME), with src/ importable; raise with its
    output if it fails and `check`."""
    env = {**THREADS, **os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONNOUSERSITE": "1",
           "TF_CPP_MIN_LOG_LEVEL": "2", "QT_QPA_PLATFORM": "offscreen", **(env or {})}
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(env_python(family)), str(FAMILIES_DIR / script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{family}: {script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


_SESSION_DIRS: dict[str, Path] = {}


def session_dir(tmp_path_factory, name: str) -> Path:
    """One folder per name and test session, even when several test modules import these
    fixtures (pytest then keeps one fixture instance per module): training happens once."""
    if name not in _SESSION_DIRS:
        _SESSION_DIRS[name] = tmp_path_factory.mktemp(name)
    return _SESSION_DIRS[name]


@pytest.fixture(scope="session")
def family_python():
    return env_python


@pytest.fixture(scope="session")
def nuclei_data(tmp_path_factory) -> Path:
    """stardist.data's annotated nuclei as TIFFs a family environment can read: nuclei_2d.tif
    (512x512, real, 125 nuclei), nuclei_3d.tif (31x61x57, synthetic, 51 nuclei), each with a
    *_mask.tif. Written from the test env (stardist is in envs/test.txt, without TensorFlow)."""
    import tifffile
    from stardist.data import test_image_nuclei_2d, test_image_nuclei_3d

    data = session_dir(tmp_path_factory, "nuclei")
    for name, load in (("nuclei_2d", test_image_nuclei_2d), ("nuclei_3d", test_image_nuclei_3d)):
        image, mask = load(return_mask=True)
        tifffile.imwrite(data / f"{name}.tif", image)
        tifffile.imwrite(data / f"{name}_mask.tif", mask)
    return data


@pytest.fixture(scope="session")
def trained_artifact(tmp_path_factory, nuclei_data):
    """trained_artifact(family, ndim=2) -> the artifact for `ndim`-D images; each family is
    trained at most once per session by tests/families/train_<family>.py OUT_DIR DATA_DIR, which
    writes OUT_DIR/artifacts.json: {"2": path, "3": path}."""
    keep = os.environ.get("AIOD_TEST_ARTIFACTS")
    base = Path(keep) if keep else session_dir(tmp_path_factory, "family_artifacts")

    def artifact(family: str, ndim: int = 2) -> Path:
        index = base / family / "artifacts.json"
        if not index.exists():
            index.parent.mkdir(parents=True, exist_ok=True)
            run_in_family(family, f"train_{family}.py", index.parent, nuclei_data, cwd=index.parent,
                          timeout=3600)
        return Path(json.loads(index.read_text())[str(ndim)])

    return artifact


def segment_in_family(family: str, version: str, artifact: Path, image: Path, out: Path,
                      params: dict | None = None, config: dict | None = None) -> tuple[np.ndarray, dict]:
    """Run the adapter on a whole image in the family's environment (tests/families/segment.py):
    (labels, {"scores", "seconds", "min_halo", "prepared"})."""
    run_in_family(family, "segment.py", family, version, artifact, image, out,
                  "--params", json.dumps(params or {}), "--config", json.dumps(config or {}), cwd=out.parent)
    return np.load(out), json.loads(out.with_suffix(".json").read_text())


def split_vs_whole(family: str, version: str, artifact: Path, image: Path, grid, workdir: Path,
                   params: dict | None = None, config: dict | None = None, **flags) -> dict:
    """tests/families/split_vs_whole.py on one image: the adapter whole, and split on `grid` with
    the pipeline's planner and merge (and, with flags, unaligned, StarDist's big mode and the
    library's own evaluation); returns aiod.splitcheck.check's record."""
    workdir.mkdir(parents=True)
    job = {"family": family, "version": version, "artifact": str(artifact), "params": params or {},
           "config": config or {},
           "cases": [{"name": "case", "image": str(image), "grid": list(grid), **flags}]}
    (workdir / "job.json").write_text(json.dumps(job))
    proc = run_in_family(family, "split_vs_whole.py", workdir / "job.json", cwd=workdir)
    return json.loads(proc.stdout.strip().splitlines()[-1])["case"]
