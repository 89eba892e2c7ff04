"""Random-weight model artifacts of the cellposesam, sam2 and empanada families, and every
family's adapter run on several boxes of small images with one loaded model, in the family's own
environment: the contract every adapter keeps (tests/test_adapter_contract.py).

    built_artifact(family) -> {"family", "version", "task", "artifact": Path, "config": dict}
        (session fixture) made once per session by tests/families/build_<family>.py in the
        family's environment: the artifact in the layout a registry `filepath` location points
        the adapter to, and that location's `config`. AIOD_TEST_ARTIFACTS=<dir> keeps them
        between sessions (as family_envs.trained_artifact does).
    family_images(folder) -> {"2d": tif, "3d": tif}: synthetic nuclei, 128x128 and 4x96x96.
    segment_cases(built, cases, params, workdir) -> (runs, record)
        tests/families/segment_cases.py: runs {"<case>_<i>": labels} and its record, plus
        "home_files": what the run left in its $HOME (an empty folder).
    family_run(built, workdir, cases, params) -> {"runs", "record", "artifact_unchanged"}
    contract_run(family) -> family_run of CONTRACT[family] (session fixture: once per session,
        shared by the contract test and the family's own tests)
    assert_adapter_contract, assert_instance_labels, assert_left_no_trace, ids_spanning_slices:
        the shared checks.

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
from family_envs import nuclei_data, run_in_family, session_dir, trained_artifact  # noqa: F401

RUNNER = "segment_cases.py"
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
    job = {"family": built["family"], "version": built["version"],
           "artifact": str(built["artifact"]) if built["artifact"] else None,
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
    folder = built["artifact"].parent if built["artifact"] else None
    before = folder_state(folder) if folder else None
    runs, record = segment_cases(built, cases, params, workdir)
    return {"runs": runs, "record": record, "artifact_unchanged": folder_state(folder) == before if folder else True}


def assert_left_no_trace(*runs: dict) -> None:
    """Nothing written into $HOME, nothing into the artifact's folder."""
    for run in runs:
        assert run["record"]["home_files"] == []
        assert run["artifact_unchanged"]


def assert_adapter_contract(run: dict, box_shape: tuple[int, ...], volume_shape: tuple[int, ...] | None) -> None:
    """The contract every adapter keeps, checked on the cases of CONTRACT: "image" (the 128x128
    image, twice), "box" (a box of it, as the planner gives one) and "volume" (the 4-slice volume,
    or a box of it; None: the model takes no volumes), as one conformance suite runs against every
    reader plugin: uint32 ids 1..n of the box's shape, at least one object; the same image twice
    gives the same labels and scores; a box is labelled with the whole image's statistics (PLAN's
    `prepared`), never its own; a volume's slices are linked into 3D ids; nothing is written into
    $HOME or into the artifact's folder."""
    runs, record = run["runs"], run["record"]
    assert_instance_labels(runs["image_0"], (128, 128))
    np.testing.assert_array_equal(runs["image_0"], runs["image_1"])
    assert record["runs"]["image_0"]["scores"] == record["runs"]["image_1"]["scores"]
    assert_instance_labels(runs["box_0"], box_shape)
    assert record["prepared"]["box"] == record["prepared"]["image"]
    if volume_shape is not None:
        assert_instance_labels(runs["volume_0"], volume_shape)
        assert ids_spanning_slices(runs["volume_0"])
    assert_left_no_trace(run)


WHOLE = [[0, 128], [0, 128]]  # the box the planner gives an image that fits in one network tile
CORNER = [[48, 128], [40, 128]]  # a box of the 128x128 image that starts on no stride
# CONTRACT[family]: the model (`artifact`: "built" random weights, "trained" on the nuclei, or
# none), its parameters, the box of the 128x128 image and the box of the 4x96x96 volume (or no
# volume). Cellpose, Cellpose-SAM, SAM 2 and Empanada evaluate on the image's grid: a box smaller
# than a network tile (a SAM 2 window) in an image that fits in one holds no whole tile, so
# theirs is the whole image (boxes of part of an image: their split tests). Random networks: parameters that keep their objects
# (tests/test_family_<family>.py say why).
CONTRACT = {
    "classical": {"version": "nuclei", "artifact": None, "params": {}, "box": CORNER, "volume": None},
    "cellpose": {"version": "nuclei", "artifact": "trained", "params": {"do_3D": False, "stitch_threshold": 0.25},
                 "box": WHOLE, "volume": None},
    "stardist": {"version": "2D_versatile_fluo", "artifact": "trained", "params": {}, "box": CORNER, "volume": False},
    "cellposesam": {"version": None, "artifact": "built",
                    "params": {"flow_threshold": 0.0, "do_3D": False, "stitch_threshold": 0.25},
                    "box": WHOLE, "volume": None},
    "sam2": {"version": None, "artifact": "built",
             "params": {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                        "min_mask_region_area": 4},
             "box": WHOLE, "volume": [[0, 3], [0, 96], [0, 96]]},
    "empanada": {"version": None, "artifact": "built", "params": {"min_size": 10, "min_extent": 2},
                 "box": WHOLE, "volume": None},
}


def box_shape(box) -> tuple[int, ...]:
    return tuple(b - a for a, b in box)


_CONTRACT_RUNS: dict[str, dict] = {}  # per session, whichever module's fixture instance ran it


@pytest.fixture(scope="session")
def contract_run(built_artifact, trained_artifact, tmp_path_factory):  # noqa: F811
    """contract_run(family): the family's adapter on CONTRACT[family]'s cases, run once per session."""
    runs = _CONTRACT_RUNS

    def run(family: str) -> dict:
        if family not in runs:
            spec = CONTRACT[family]
            work = session_dir(tmp_path_factory, f"contract_{family}")
            images = family_images(work / "images")
            if spec["artifact"] == "built":
                model = built_artifact(family)
            else:
                artifact = trained_artifact(family, 2) if spec["artifact"] == "trained" else None
                model = {"family": family, "version": spec["version"], "artifact": artifact, "config": {}}
            cases = [{"name": "image", "image": images["2d"], "repeat": 2},
                     {"name": "box", "image": images["2d"], "box": spec["box"]}]
            if spec["volume"] is not False:
                cases.append({"name": "volume", "image": images["3d"], "box": spec["volume"]})
            runs[family] = family_run(model, work / "run", cases, spec["params"])
        return runs[family]

    return run
