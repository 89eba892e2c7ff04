#!/usr/bin/env python
"""Benchmark of out-of-core evaluation (`aiod evaluate`'s scoring); a script, not a test.

    python bench/evaluate.py                       # ~0.5 GiB and 2 GiB label pairs
    python bench/evaluate.py --sizes 128,256,256 --workdir /tmp/aiod-bench-evaluate

For each size it writes a pair of uint32 label volumes chunk by chunk into zarr (128³ chunks,
zstd 3): the ground truth is bench/merge.py's dense volume of wavy box-like cells, the
prediction the same cells with their walls waving in another phase, so every object overlaps
its twin with an IoU below 1 and its neighbours a little. Then, each in its own subprocess (peak RSS = VmHWM of that process, wall time
of the work only):

- read:     every block of both volumes read once, in the blocks the scoring reads, by as many
            threads as the scoring uses (the floor);
- evaluate: what `aiod evaluate` computes for one image: the contingency table, matching at
            IoU 0.5..0.95, foreground Dice, split and fused objects.

Each is run `--repeat` times (default 2), alternating, and the fastest run is shown: the first
read of a volume just written can come from the disk, later ones from the page cache.
Printed: both, the ratio evaluate / read, the peak memory, and the scores (as a check that the
work was done). Target (issue 14): memory independent of the volume size, time <= 2x the read.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aiod import metrics  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_merge", ROOT / "bench" / "merge.py")
bench_merge = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_merge)

def generate(workdir: Path, shape) -> None:
    done = workdir / "ready.json"
    if done.exists():
        return
    workdir.mkdir(parents=True, exist_ok=True)
    cells, other = bench_merge.Cells(shape), bench_merge.Cells(shape)
    other.phase = np.random.default_rng(7).uniform(0, 2 * np.pi, size=other.phase.shape)  # same walls, other waves
    gt = bench_merge.create(workdir / "gt.zarr", shape, np.uint32)
    pred = bench_merge.create(workdir / "pred.zarr", shape, np.uint32)

    def write(sl):
        gt[sl] = cells.block(sl)
        pred[sl] = other.block(sl)

    block = (bench_merge.CHUNKS[0], bench_merge.CHUNKS[1], shape[2])
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, bench_merge._blocks(shape, block)))
    done.write_text(json.dumps({"shape": list(shape)}))


def do_read(workdir: Path):
    gt = zarr.open_array(str(workdir / "gt.zarr"), mode="r")
    pred = zarr.open_array(str(workdir / "pred.zarr"), mode="r")
    block = metrics._block_shape(gt)
    boxes = (tuple(slice(c, c + b) for c, b in zip(corner, block))
             for corner in itertools.product(*(range(0, s, b) for s, b in zip(gt.shape, block))))
    # the same blocks, by the same number of threads as the scoring (metrics.WORKERS)
    sizes = metrics._in_threads(lambda sl: int(np.asarray(gt[sl]).size) + int(np.asarray(pred[sl]).size), boxes,
                                metrics.WORKERS)
    return {"voxels_read": sum(sizes), "threads": metrics.WORKERS}


def do_evaluate(workdir: Path):
    gt = zarr.open_array(str(workdir / "gt.zarr"), mode="r")
    pred = zarr.open_array(str(workdir / "pred.zarr"), mode="r")
    table = metrics.contingency(gt, pred)
    matches = metrics.match_thresholds(None, None, metrics.THRESHOLDS, table=table)
    pixel = metrics.pixel_scores(None, None, table=table)
    split, fused = metrics.split_fused(None, None, table=table)
    half = matches[0]
    return {"n_true": half.n_true, "n_pred": half.n_pred, "f1@0.5": round(half.f1, 4), "f1@0.95": round(matches[-1].f1, 4),
            "ap_50_95": round(sum(m.accuracy for m in matches) / len(matches), 4), "dice": round(pixel["dice"], 4),
            "split": split, "fused": fused, "pairs": int(len(table.count))}


WORK = {"read": do_read, "evaluate": do_evaluate}


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(what: str, workdir: Path) -> None:
    started = time.perf_counter()
    extra = WORK[what](workdir)
    print(json.dumps({"wall_s": time.perf_counter() - started, "peak_rss": peak_rss(), "extra": extra}))


def measure(what: str, workdir: Path) -> dict:
    run = subprocess.run([sys.executable, __file__, "--child", what, "--workdir", str(workdir)], capture_output=True, text=True)
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="*", default=["256,512,1024", "512,1024,1024"], help="volume shapes Z,Y,X")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/aiod-bench-evaluate"))
    p.add_argument("--repeat", type=int, default=2, help="runs of each measurement (the fastest is shown)")
    p.add_argument("--child")
    a = p.parse_args()
    if a.child:
        child(a.child, a.workdir)
        return 0
    mib = 2 ** 20
    print(f"{'volume':>16} {'GiB':>5} {'read':>16} {'evaluate':>16} {'ratio':>6}  scores")
    for size in a.sizes:
        shape = tuple(int(n) for n in size.split(","))
        workdir = a.workdir / "x".join(map(str, shape))
        generate(workdir, shape)
        # each measured a.repeat times, alternating, and the fastest kept: the first read of a
        # volume just written may come from the disk and every later one from the page cache
        runs = [measure(what, workdir) for _ in range(a.repeat) for what in ("read", "evaluate")]
        failed = [r["error"] for r in runs if "error" in r]
        if failed:
            print(f"{'x'.join(map(str, shape)):>16}  failed: {failed[0]}")
            continue
        read, ev = (min(runs[k::2], key=lambda r: r["wall_s"]) for k in (0, 1))
        gib = 4 * np.prod(shape) / 2 ** 30
        print(f"{'x'.join(map(str, shape)):>16} {gib:5.2f} {read['wall_s']:6.1f} s {read['peak_rss'] / mib:5.0f} MiB "
              f"{ev['wall_s']:6.1f} s {ev['peak_rss'] / mib:5.0f} MiB {ev['wall_s'] / read['wall_s']:5.2f}x  {ev['extra']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
