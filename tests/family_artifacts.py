"""Random-weight model artifacts of the cellposesam, sam2 and empanada families, and their adapters
run on several boxes of small images with one loaded model, in each family's own environment.

    built_artifact(family) -> {"family", "version", "task", "artifact": Path, "config": dict}
        (session fixture) made once per session by tests/families/build_<family>.py in the
        family's environment: the artifact in the layout a registry `filepath` location points
        the adapter to, and that location's `config`. AIOD_TEST_ARTIFACTS=<dir> keeps them
        between sessions (as family_envs.trained_artifact does).
    family_images(folder) -> {"2d": tif, "3d": tif}: synthetic nuclei, 128x128 and 4x96x96.
    segment_cases(built, cases, params, workdir) -> (runs, record)
        tests/families/cellposesam_sam2_empanada_segment.py: runs {"<case>_<i>": labels} and
        its record, plus "home_files": what the run left in its $HOME (an empty folder).
    family_run(built, workdir, cases, params) -> {"runs", "record", "artifact_unchanged"}
    assert_instance_labels, assert_left_no_trace, ids_spanning_slices: the shared checks.

Runs see $HOME as an empty folder and every HTTP(S) proxy as a closed local port: a library
that writes into $HOME shows in home_files, and one that downloads fails the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from aiod import synthetic
from family_envs import run_in_family, session_dir

RUNNER = "cellposesam_sam2_empanada_segment.py"
NO_NETWORK = {**{var: "http://127.0.0.1:9" for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
              "NO_PROXY": "", "no_proxy": ""}


@pytest.fixture(scope="session")
def built_artifact(tmp_path_factory):
    keep = os.environ.get("AIOD_TEST_ARTIFACTS")
    base = Path(keep) if keep else session_dir(tmp_path_factory, "built_artifacts")  # built once per session

    def build(family: str) -> dict:
        index = base / family / "built.json"
        if not index.exists():
            out = index.parent / "artifact"
            out.mkdir(parents=True, exist_ok=True)
            proc = run_in_family(family, f"build_{family}.py", out, cwd=index.parent, env=NO_NETWORK)
            index.write_text(proc.stdout.strip().splitlines()[-1])
        built = json.loads(index.read_text())
        return {**built, "artifact": Path(built["artifact"])}

    return build


def family_images(folder: Path) -> dict[str, Path]:
    """Synthetic nuclei (uint16): a 128x128 image and a 4x96x96 volume, as TIFFs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, shape, n in (("2d", (128, 128), 12), ("3d", (4, 96, 96), 8)):
        labels = synthetic.touching_nuclei(shape, n=n, radius=(6.0, 10.0), seed=3)
        paths[name] = folder / f"nuclei_{name}.tif"
        tifffile.imwrite(paths[name], synthetic.render_nuclei(labels, seed=4), photometric="minisblack",
                         metadata={"axes": "ZYX"[-len(shape):]})
    return paths


def segment_cases(built: dict, cases: list[dict], params: dict, workdir: Path) -> tuple[dict, dict]:
    """Run the adapter of `built`'s family on `cases` (see the runner's docstring)."""
    out, home = workdir / "out", workdir / "home"
    out.mkdir(parents=True)
    home.mkdir()
    job = {"family": built["family"], "version": built["version"], "artifact": str(built["artifact"]),
           "config": built["config"], "params": params, "out": str(out),
           "cases": [{**case, "image": str(case["image"])} for case in cases]}
    (workdir / "job.json").write_text(json.dumps(job))
    run_in_family(built["family"], RUNNER, workdir / "job.json", cwd=workdir, env={"HOME": str(home), **NO_NETWORK})
    record = json.loads((out / "record.json").read_text())
    record["home_files"] = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    return {name: np.load(out / f"{name}.npy") for name in record["runs"]}, record


def folder_state(folder: Path) -> list[tuple]:
    """(name, size, mtime) of every file below `folder`: changes when anything is written there."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in Path(folder).rglob("*") if p.is_file())


def assert_instance_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """What segment() promises, and what these adapters add: uint32 of the substack's shape, ids
    1..n without gaps (0 = background), at least one object. Returns the ids."""
    assert labels.shape == tuple(shape)
    assert labels.dtype == np.uint32
    ids = np.unique(labels[labels > 0])
    assert len(ids) > 0, "no objects: the random-weight artifact is built to give some"
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    return ids


def ids_spanning_slices(volume: np.ndarray) -> set[int]:
    """Ids present in more than one z slice: objects linked through the volume."""
    seen = [set(np.unique(plane)) - {0} for plane in volume]
    return {int(i) for z, ids in enumerate(seen) for i in ids if any(i in other for other in seen[z + 1:])}


def family_run(built: dict, workdir: Path, cases: list[dict], params: dict) -> dict:
    """segment_cases, and whether the artifact's folder (the shared cache) was left untouched."""
    before = folder_state(built["artifact"].parent)
    runs, record = segment_cases(built, cases, params, workdir)
    return {"runs": runs, "record": record, "artifact_unchanged": folder_state(built["artifact"].parent) == before}


def assert_left_no_trace(*runs: dict) -> None:
    """Nothing written into $HOME, nothing into the artifact's folder."""
    for run in runs:
        assert run["record"]["home_files"] == []
        assert run["artifact_unchanged"]


def assert_adapter_contract(run: dict, box: str, box_shape: tuple[int, ...], volume_shape: tuple[int, ...]) -> None:
    """The contract every adapter keeps, checked on a family's own `family_run` of the cases
    "image" (the 128x128 image, twice), `box` (a substack-sized box of it) and "volume" (the 4-slice
    volume, or a box of it), as one conformance suite runs against every reader plugin: uint32 ids
    1..n of the box's shape, at least one object; the same image twice gives the same labels and
    scores; a box is labelled with the whole image's statistics (PLAN's `prepared`), never its
    own; a volume's slices are linked into 3D ids; nothing is written into $HOME or into the
    artifact's folder."""
    runs, record = run["runs"], run["record"]
    assert_instance_labels(runs["image_0"], (128, 128))
    np.testing.assert_array_equal(runs["image_0"], runs["image_1"])
    assert record["runs"]["image_0"]["scores"] == record["runs"]["image_1"]["scores"]
    assert_instance_labels(runs[f"{box}_0"], box_shape)
    assert record["prepared"][box] == record["prepared"]["image"]
    assert_instance_labels(runs["volume_0"], volume_shape)
    assert ids_spanning_slices(runs["volume_0"])
    assert_left_no_trace(run)

