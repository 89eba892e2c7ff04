"""Host memory a segmentation task holds before its substack: interpreter, libraries and the loaded
model, the figure behind each adapter's RUNTIME_BYTES, which `--num_substacks auto` adds to the
artifact's size and takes off `--substack_memory` before sizing substacks.

    .venv/bin/python bench/task_memory.py --artifacts DIR [FAMILY ...]

DIR is laid out as the family tests leave it with AIOD_TEST_ARTIFACTS=DIR: DIR/<family>/
artifacts.json (trained stardist and cellpose models: {"2": path, "3": path}) or DIR/<family>/
built.json (the random-weight cellposesam, sam2 and empanada artifacts; random weights load like
published ones of the same architecture). classical needs no artifact.

Each family runs in a fresh process of its own environment (bin/aiod-env path FAMILY): import
the adapter, load the model, segment a small warm-up image (lazy imports, one-off kernels) and
measure its objects (the compiled object-table pass, as SEGMENT does for a one-substack image),
and read the resident set (VmRSS) after each stage. The runtime part is the RSS after the warm-up
minus the artifact's size on disk; the table compares it with the stored RUNTIME_BYTES.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from aiod.steps.plan import size_on_disk  # noqa: E402 - what the planner counts

FAMILIES = ["classical", "stardist", "cellpose", "cellposesam", "sam2", "empanada"]
WARM_UP = {2: (96, 96), 3: (4, 64, 64)}


def rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def artifacts_of(family: str, folder: Path) -> list[dict]:
    """[{version, artifact, config, ndim}] for `family` in the tests' artifact folder."""
    if family == "classical":
        return [{"version": "nuclei", "artifact": None, "config": {}, "ndim": 2}]
    if (folder / family / "built.json").exists():
        built = json.loads((folder / family / "built.json").read_text())
        return [{"version": built["version"], "artifact": built["artifact"], "config": built["config"], "ndim": 2}]
    trained = json.loads((folder / family / "artifacts.json").read_text())
    versions = {"stardist": {"2": "2D_versatile_fluo", "3": "3D_demo"}, "cellpose": {"2": "nuclei"}}[family]
    return [{"version": v, "artifact": trained[n], "config": {}, "ndim": int(n)} for n, v in versions.items()]


def child(family: str, case: dict) -> dict:
    """In the family's environment: RSS after import, load and warm-up."""
    import numpy as np
    import tifffile

    from aiod import measure, synthetic
    from aiod.imageio import open_image
    from aiod.models import params_namespace, resolve, runtime

    work = Path.cwd()
    runtime.keep_libraries_out_of_home(work)
    params = params_namespace(resolve(family, case["version"], None, {}))
    adapter = importlib.import_module(f"aiod.models.{family}")
    stages = {"imported": rss()}
    artifact = Path(case["artifact"]) if case["artifact"] else None
    model = adapter.load(artifact, case["config"], params)
    stages["loaded"] = rss()
    shape = WARM_UP[case["ndim"]]
    tifffile.imwrite(work / "warm.tif", synthetic.render_nuclei(
        synthetic.touching_nuclei(shape, n=6, radius=(6.0, 10.0), seed=1), seed=2).astype(np.uint16))
    with open_image(work / "warm.tif") as image:
        prepared = adapter.prepare(image, None, params)
        array = image.read(tuple(slice(0, n) for n in image.spatial_shape))
    labels, _scores = adapter.segment(model, array, params, prepared, None)
    measure.block_table(labels, array)  # SEGMENT writes a one-substack image's object table
    stages["warmed_up"] = rss()
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", help=f"some of {', '.join(FAMILIES)} (default: all)")
    parser.add_argument("--artifacts", type=Path, required=True, help="the family tests' artifact folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    if args.child:
        case = json.loads(args.child)
        print(json.dumps(child(args.families[0], case)))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1",
           "QT_QPA_PLATFORM": "offscreen", "PYTHONNOUSERSITE": "1"}
    print(f"{'family':>12} {'version':>18} {'import MB':>10} {'load MB':>8} {'warm MB':>8} {'artifact MB':>12} "
          f"{'runtime MB':>11} {'stored MB':>10}")
    for family in args.families or FAMILIES:
        python = subprocess.run([sys.executable, str(ROOT / "bin" / "aiod-env"), "path", family], capture_output=True,
                                text=True, check=True).stdout.strip() + "/bin/python"
        stored = importlib.import_module(f"aiod.models.{family}").RUNTIME_BYTES
        for case in artifacts_of(family, args.artifacts):
            with tempfile.TemporaryDirectory(prefix="task_memory_") as work:  # a task folder: caches go there
                proc = subprocess.run([python, str(Path(__file__).resolve()), family,
                                       "--artifacts", str(args.artifacts.resolve()),
                                       "--child", json.dumps(case)], capture_output=True, text=True, env=env, cwd=work)
            if proc.returncode != 0:
                sys.exit(f"{family}/{case['version']}: failed\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            artifact = size_on_disk(Path(case["artifact"])) if case["artifact"] else 0
            runtime = r["warmed_up"] - artifact
            mb = [v / 2**20 for v in (r["imported"], r["loaded"], r["warmed_up"], artifact, runtime, stored)]
            print(f"{family:>12} {case['version']:>18} {mb[0]:>10.0f} {mb[1]:>8.0f} {mb[2]:>8.0f} {mb[3]:>12.0f} "
                  f"{mb[4]:>11.0f} {mb[5]:>10.0f} {'covers' if stored >= runtime else 'DOES NOT cover'}", flush=True)


if __name__ == "__main__":
    main()
