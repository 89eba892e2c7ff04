"""Peak host memory of a model family's segment() per voxel of a substack: the figure behind
`BYTES_PER_VOXEL` in src/aiod/models/<family>.py, which `--num_substacks auto` uses.

    .venv/bin/python bench/family_memory.py stardist 2=/path/stardist_2d 3=/path/stardist_3d
    .venv/bin/python bench/family_memory.py cellpose 2=/path/model 3=/path/model

Each case runs in a fresh process of the family's environment (bin/aiod-env path FAMILY): the
model is loaded and warmed up on a small input, then the resident set size (/proc/self/statm)
is sampled every 2 ms during segment() of a substack made by tiling stardist's nuclei images
(tests/family_envs.py writes them; --data says where). Reported: the RSS growth over the level
before segment() divided by the voxels; CPU only (GPU memory is a separate figure).
Artifacts: e.g. the trained ones of the family tests (AIOD_TEST_ARTIFACTS=<dir> keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {2: [(512, 512), (1024, 1024), (2048, 2048)], 3: [(32, 128, 128), (48, 192, 192)]}
VERSIONS = {("stardist", 2): "2D_versatile_fluo", ("stardist", 3): "3D_demo",
            ("cellpose", 2): "nuclei", ("cellpose", 3): "nuclei"}
PARAMS = {("cellpose", 3): {"do_3D": True}}  # the model's own diameter: no rescaling


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tiled(image, shape):
    import numpy as np

    reps = [-(-s // n) for s, n in zip(shape, image.shape)]
    return np.ascontiguousarray(np.tile(image, reps)[tuple(slice(0, s) for s in shape)])


def measure(family: str, ndim: int, artifact: Path, shape, data: Path) -> dict:
    """In the family's environment: the peak RSS growth of one segment() call."""
    import importlib

    import tifffile

    from aiod.models import params_namespace, resolve, runtime

    runtime.keep_libraries_out_of_home(Path.cwd())
    adapter = importlib.import_module(f"aiod.models.{family}")
    params = params_namespace(resolve(family, VERSIONS[family, ndim], None, PARAMS.get((family, ndim), {})))
    source = tifffile.imread(data / f"nuclei_{ndim}d.tif")
    prepared = {"p_low": float(source.min()), "p_high": float(source.max())}
    if family == "cellpose":
        prepared = {"ndim": ndim, "channels": None, "percentiles": [prepared]}
    model = adapter.load(artifact, {}, params)
    adapter.segment(model, tiled(source, [min(s, 64) for s in shape]), params, prepared, (1.0,) * ndim)
    array = tiled(source, shape)
    base, peak, done = rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.time()
    labels, _ = adapter.segment(model, array, params, prepared, (1.0,) * ndim)
    seconds = time.time() - started
    done.set()
    sampler.join()
    return {"shape": list(shape), "voxels": array.size, "peak_mb": (peak[0] - base) / 2**20,
            "bytes_per_voxel": (peak[0] - base) / array.size, "seconds": seconds, "objects": int(labels.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=["stardist", "cellpose"])
    parser.add_argument("artifacts", nargs="+", help="NDIM=PATH: the artifact for 2D or 3D substacks")
    parser.add_argument("--data", type=Path, required=True, help="folder with nuclei_2d.tif and nuclei_3d.tif")
    parser.add_argument("--child", nargs=2, metavar=("NDIM", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    artifacts = {int(a.split("=", 1)[0]): Path(a.split("=", 1)[1]) for a in args.artifacts}
    if args.child:
        ndim, shape = int(args.child[0]), tuple(json.loads(args.child[1]))
        print(json.dumps(measure(args.family, ndim, artifacts[ndim], shape, args.data)))
        return
    python = subprocess.run([str(ROOT / "bin" / "aiod-env"), "path", args.family], capture_output=True,
                            text=True, check=True).stdout.strip() + "/bin/python"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    module = __import__("importlib").import_module
    sys.path.insert(0, str(ROOT / "src"))
    stored = module(f"aiod.models.{args.family}").BYTES_PER_VOXEL
    print(f"{'shape':>14} {'voxels':>10} {'peak MB':>9} {'bytes/voxel':>12} {'seconds':>8} {'objects':>8}")
    results = {}
    for ndim, artifact in sorted(artifacts.items()):
        for shape in CASES[ndim]:
            proc = subprocess.run([python, __file__, args.family, *args.artifacts, "--data", str(args.data),
                                   "--child", str(ndim), json.dumps(shape)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"{shape}: failed\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.setdefault(ndim, []).append(r)
            print(f"{'x'.join(map(str, shape)):>14} {r['voxels']:>10} {r['peak_mb']:>9.1f} "
                  f"{r['bytes_per_voxel']:>12.1f} {r['seconds']:>8.2f} {r['objects']:>8}", flush=True)
    summarise(results, stored)


def summarise(results: dict, stored: float) -> None:
    """Peak = fixed + slope * voxels, per dimensionality (least squares over the cases), and the
    smallest case the stored figure covers (a fixed part makes small substacks cost more per voxel)."""
    import numpy as np

    for ndim, rows in sorted(results.items()):
        voxels = np.array([r["voxels"] for r in rows], float)
        peak = np.array([r["peak_mb"] for r in rows]) * 2**20
        slope, fixed = np.polyfit(voxels, peak, 1) if len(rows) > 1 else (peak[0] / voxels[0], 0.0)
        covered = [int(v) for v, b in zip(voxels, peak) if b <= stored * v]
        print(f"{ndim}D: {fixed / 2**20:.0f} MB + {slope:.1f} bytes/voxel; stored BYTES_PER_VOXEL = {stored} "
              f"covers {'the cases from ' + str(min(covered)) + ' voxels' if covered else 'no case'}")

if __name__ == "__main__":
    main()
