"""Peak host memory per substack voxel of segment() for the deep-learning families cellposesam,
sam2 and empanada, on the CPU: the figures behind their BYTES_PER_VOXEL.

    $(bin/aiod-env path sam2)/bin/python bench/family_memory_big.py sam2 [--work DIR]

Runs in the family's own environment. Builds the random-weight artifact with
tests/families/build_<family>.py (kept in DIR/<family> between runs), loads it, segments a small
warm-up substack (lazy imports and one-off kernels are not per voxel), then each case once while
a thread samples the process's resident set (VmRSS, every 10 ms: numpy's, torch's and the
libraries' native allocations alike; tracemalloc sees only Python's). A case's memory is its
peak minus the RSS just before it; per kind, the slope between its two sizes (fixed costs cancel)
and each case's own memory / voxels. "worst" is the largest slope or larger-case figure, which
BYTES_PER_VOXEL must cover (small substacks are dominated by the network's working set: see the
adapters' comments). Parameters are the manifest's defaults except where CASES says; sam2 uses
an 8x8 point grid: one points batch (64), as memory-hungry per voxel as any larger grid, and no
quality filtering (every mask is kept, the worst case). CPU time: minutes per family
(cellposesam ~10 min on 2 cores: its ViT-L takes ~10 s per 256x256 tile).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "families")]

from aiod import synthetic  # noqa: E402
from aiod.models import params_namespace, resolve, runtime  # noqa: E402

# family -> (parameter overrides, {kind: (small shape, large shape)})
CASES = {
    "cellposesam": ({"flow_threshold": 0.0, "do_3D": False, "stitch_threshold": 0.25},
                    {"2D": ((512, 512), (1024, 1024)), "3D per slice": ((2, 256, 256), (4, 256, 256))}),
    "sam2": ({"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
             {"2D": ((1024, 1024), (1536, 1536))}),
    "empanada": ({"min_size": 10, "min_extent": 2},
                 {"2D": ((512, 512), (1024, 1024)), "3D stack": ((8, 256, 256), (8, 512, 512))}),
}
WARM_UP = {"cellposesam": (64, 64), "sam2": (64, 64), "empanada": (64, 64)}


def rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def peak_during(call) -> tuple[int, float]:
    """(peak RSS minus the RSS before, seconds) of call()."""
    before, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.time()
    call()
    seconds = time.time() - started
    done.set()
    thread.join()
    return max(peak[0], rss()) - before, seconds


def substack(family: str, shape: tuple[int, ...]) -> tuple[np.ndarray, dict]:
    radius = (6.0, 10.0)
    n = max(4, int(np.prod(shape[-2:]) / 900) * (shape[0] if len(shape) == 3 else 1))
    image = synthetic.render_nuclei(synthetic.touching_nuclei(shape, n=n, radius=radius, seed=1), seed=2)
    scale = {"p_low": float(np.percentile(image, 1)), "p_high": float(np.percentile(image, 99.8))}
    return image, (scale if family == "empanada" else {"channels": [scale]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=sorted(CASES))
    parser.add_argument("--work", type=Path, default=Path("family_memory_work"), help="artifact + library caches")
    args = parser.parse_args()
    family, work = args.family, args.work.resolve()
    (work / family).mkdir(parents=True, exist_ok=True)
    runtime.keep_libraries_out_of_home(work)
    record = work / family / "built.json"
    if not record.exists():
        record.write_text(json.dumps(__import__(f"build_{family}").main(work / family)))
    built = json.loads(record.read_text())
    adapter = __import__(f"aiod.models.{family}", fromlist=["segment"])
    overrides, kinds = CASES[family]
    params = params_namespace(resolve(family, built["version"], None, overrides))
    loaded = rss()
    model = adapter.load(Path(built["artifact"]), built["config"], params)
    array, prepared = substack(family, WARM_UP[family])
    adapter.segment(model, array, params, prepared, None)
    print(f"{family}: the loaded model and libraries add {(rss() - loaded) / 2**20:.0f} MB (fixed, not per voxel)")

    print(f"{family}: peak RSS of segment() above the RSS before it (CPU, random weights)")
    print(f"{'kind':>14} {'shape':>14} {'voxels':>10} {'MB':>8} {'B/voxel':>8} {'s':>7}")
    worst = 0.0
    for kind, shapes in kinds.items():
        measured = []
        for shape in shapes:
            array, prepared = substack(family, shape)
            used, seconds = peak_during(lambda: adapter.segment(model, array, params, prepared, None))
            measured.append((array.size, used))
            print(f"{kind:>14} {'x'.join(map(str, shape)):>14} {array.size:>10} {used / 2**20:>8.1f} "
                  f"{used / array.size:>8.1f} {seconds:>7.1f}")
        (v1, m1), (v2, m2) = measured
        slope = (m2 - m1) / (v2 - v1)
        worst = max(worst, slope, m2 / v2)
        print(f"{kind:>14} slope {slope:.1f} bytes/voxel")
    print(f"worst {worst:.1f} bytes/voxel; stored BYTES_PER_VOXEL = {adapter.BYTES_PER_VOXEL} "
          f"({'covers' if adapter.BYTES_PER_VOXEL >= worst else 'DOES NOT cover'} the measurement)")


if __name__ == "__main__":
    main()
