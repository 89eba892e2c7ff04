#!/usr/bin/env python
"""Benchmark of the out-of-core merge (issue 4); a script, not a test.

    python bench/merge.py                          # ~0.5 GB and 2 GB volumes
    python bench/merge.py --sizes 128,512,512 --workdir /tmp/aiod-bench

For each volume size it generates a dense uint32 label volume (touching box-like cells with
wavy walls and random sizes, about 8% of cells left as background) chunk by chunk into a zarr,
plans substacks with `aiod.planner`, writes every substack's labels as a *perfect local model*
would (the ground truth cropped to the box, relabelled, ids shuffled) with
`substack_labels.write_substack_labels(..., plan=plan)` as the SEGMENT step does (timed: the
write is SEGMENT's cost), and then measures, each in its own subprocess (peak RSS =
VmHWM of that process, wall time of the work only):

- copy:    a plain chunked zarr -> zarr copy of the volume, all cores busy (the I/O floor);
- merge:   `merge.merge_substacks` into a zarr output (what the pipeline does);
- relabel: the naive way: the whole volume in memory (every core pasted with unique ids),
           `skimage.segmentation.relabel_sequential`, written out (the AIoD approach);
- python:  the interpreter with numpy, scipy, zarr and aiod.merge imported and nothing done.

It compares the merged mask with the ground truth (objects split or fused), then prints a table.
(The generator's wavy walls leave a few cells with a stray voxel or two cut off; a perfect
local model, which relabels by connected pieces, rightly returns those as objects of their own.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# metrics and synthetic (scikit-image) are imported where the parent needs them, so that the
# measured children hold only numpy, scipy, zarr and the merge
from aiod import merge, substack_labels  # noqa: E402
from aiod.planner import Plan, plan_substacks  # noqa: E402

CHUNKS = (128, 128, 128)  # the output chunks the pipeline's OME-Zarr labels use
WAVE = 3  # amplitude (voxels) of the cell walls' waviness


def create(path, shape, dtype):
    return zarr.create_array(store=str(path), shape=shape, dtype=dtype, chunks=CHUNKS,
                             compressors=zarr.codecs.ZstdCodec(level=3), fill_value=0, overwrite=True)


def _blocks(shape, block):
    for z in range(0, shape[0], block[0]):
        for y in range(0, shape[1], block[1]):
            for x in range(0, shape[2], block[2]):
                yield tuple(slice(a, min(a + b, n)) for a, b, n in zip((z, y, x), block, shape))


class Cells:
    """A deterministic labelling of every voxel, computable on any block on its own."""

    def __init__(self, shape, seed=0, spacing=(8, 24)):
        rng = np.random.default_rng(seed)
        self.shape = shape
        self.index, self.count = [], []
        lo, hi = spacing
        for n in shape:  # cell walls at random spacing lo..hi (8..24) voxels along each axis
            walls = np.cumsum(rng.integers(lo, hi + 1, size=n // lo + 4)) - (lo + hi) // 2 - 4
            self.index.append(np.searchsorted(walls, np.arange(-WAVE, n + WAVE + 1), side="right"))
            self.count.append(len(walls) + 1)
        self.phase = rng.uniform(0, 2 * np.pi, size=(3, 2))
        self.keep = rng.random(int(np.prod(self.count))) > 0.08

    def _wave(self, k, a, b):
        """Offset of the walls along axis k, a smooth function of the two other coordinates."""
        (p, q) = self.phase[k]
        return np.rint(WAVE * np.sin(a / 23.0 + p) * np.cos(b / 17.0 + q)).astype(np.int64)

    def block(self, sl) -> np.ndarray:
        z, y, x = (np.arange(s.start, s.stop) for s in sl)
        zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
        kz = self.index[0][zz + self._wave(0, yy, xx) + WAVE]
        ky = self.index[1][yy + self._wave(1, zz, xx) + WAVE]
        kx = self.index[2][xx + self._wave(2, zz, yy) + WAVE]
        cell = (kz * self.count[1] + ky) * self.count[2] + kx
        return np.where(self.keep[cell], cell + 1, 0).astype(np.uint32)


def generate(workdir: Path, shape, core, halo):
    """Ground truth, plan and substack labels for one volume size (kept if already there; the
    substack files are written again when their format has changed)."""
    done = workdir / "ready.json"
    info = json.loads(done.read_text()) if done.exists() else {}
    if info.get("substack_format") == substack_labels.FORMAT:
        return info
    workdir.mkdir(parents=True, exist_ok=True)
    if not info:
        started = time.time()
        cells = Cells(shape)
        gt = create(workdir / "gt.zarr", shape, np.uint32)
        block = (CHUNKS[0], CHUNKS[1], shape[2])
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(lambda sl: gt.__setitem__(sl, cells.block(sl)), _blocks(shape, block)))
        info["generate_seconds"] = time.time() - started
    from aiod import synthetic

    gt = zarr.open_array(str(workdir / "gt.zarr"), mode="r")
    grid = tuple(max(1, round(n / c)) for n, c in zip(shape, core))
    plan = plan_substacks(shape, "ZYX", grid, (halo,) * 3, bytes_per_voxel=4, memory_budget=None)
    plan.save(workdir / "plan.json")
    rng = np.random.default_rng(1)
    paths, write_s = [], 0.0
    for sub in plan.substacks:
        path = workdir / f"substack_{sub.index}.zarr"
        shutil.rmtree(path, ignore_errors=True)
        labels = synthetic.perfect_local_model(gt, sub.box_slices, rng)
        started = time.perf_counter()  # what SEGMENT spends writing its labels
        substack_labels.write_substack_labels(path, labels, sub.index, plan=plan)
        write_s += time.perf_counter() - started
        paths.append(str(path))
    info.update(shape=list(shape), grid=list(grid), halo=halo, paths=paths,
                largest_box_bytes=4 * max(int(np.prod(s.box_shape)) for s in plan.substacks),
                write_seconds_per_substack=write_s / len(paths), substack_format=substack_labels.FORMAT)
    done.write_text(json.dumps(info))
    return info


# ---- the measured work, one per subprocess --------------------------------------------------

def do_copy(workdir: Path, info):
    src = zarr.open_array(str(workdir / "gt.zarr"), mode="r")
    dst = create(workdir / "copy.zarr", src.shape, src.dtype)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda sl: dst.__setitem__(sl, src[sl]), _blocks(src.shape, CHUNKS)))


def do_merge(workdir: Path, info):
    plan = Plan.load(workdir / "plan.json")
    out = workdir / "merged.zarr"
    merge.bound_malloc()  # as the pipeline's merge step does
    stats = merge.merge_substacks(plan, info["paths"], lambda dtype: create(out, plan.spatial_shape, dtype))
    return stats.to_dict()


def do_relabel(workdir: Path, info):
    from skimage.segmentation import relabel_sequential

    plan = Plan.load(workdir / "plan.json")
    whole = np.zeros(plan.spatial_shape, dtype=np.uint64)
    offset = 0
    for sub, labels in zip(plan.substacks, substack_labels.open_all(plan, info["paths"])):
        core = labels.read(sub.core).astype(np.uint64)
        whole[sub.core_slices] = np.where(core != 0, core + offset, 0)
        offset += labels.max_label
    relabelled = relabel_sequential(whole)[0].astype(np.uint32)
    del whole
    create(workdir / "relabel.zarr", plan.spatial_shape, np.uint32)[...] = relabelled


def do_python(workdir: Path, info):
    return None


WORK = {"copy": do_copy, "merge": do_merge, "relabel": do_relabel, "python": do_python}


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(what: str, workdir: Path) -> None:
    info = json.loads((workdir / "ready.json").read_text())
    started = time.perf_counter()
    extra = WORK[what](workdir, info)
    wall = time.perf_counter() - started
    print(json.dumps({"wall_s": wall, "peak_rss": peak_rss(), "extra": extra}))


def measure(what: str, workdir: Path) -> dict:
    run = subprocess.run([sys.executable, __file__, "--child", what, "--workdir", str(workdir)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def compare(gt_path, merged_path) -> str:
    """Objects of the ground truth split or fused in the merged mask (any overlap counts)."""
    from aiod import metrics

    table = metrics.contingency(zarr.open_array(str(gt_path), mode="r"), zarr.open_array(str(merged_path), mode="r"))
    fg = (table.gt != 0) & (table.pred != 0)
    bg = int(table.count[(table.gt == 0) != (table.pred == 0)].sum())
    g, gn = np.unique(table.gt[fg], return_counts=True)
    p, pn = np.unique(table.pred[fg], return_counts=True)
    split = g[gn > 1]
    pieces = [int(c) for gid in split for c in sorted(table.count[fg & (table.gt == gid)])[:-1]]
    return (f"{len(g)} true objects, {len(p)} merged; split {len(split)} (voxels in the smaller "
            f"pieces: {pieces[:10]}), fused {int(np.count_nonzero(pn > 1))}, background differs on {bg} voxels")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["256,512,1024", "512,1024,1024"],
                   help="volume shapes Z,Y,X (default: 0.5 GiB and 2 GiB of uint32)")
    p.add_argument("--core", default="256,256,256", help="substack core size Z,Y,X")
    p.add_argument("--halo", type=int, default=32)
    p.add_argument("--workdir", default="/tmp/aiod-bench-merge")
    p.add_argument("--skip", nargs="*", default=[], choices=sorted(WORK), help="measurements to leave out")
    p.add_argument("--child", choices=sorted(WORK), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, Path(args.workdir))
        return 0
    core = tuple(int(v) for v in args.core.split(","))
    rows = []
    for size in args.sizes:
        shape = tuple(int(v) for v in size.split(","))
        workdir = Path(args.workdir) / "x".join(map(str, shape))
        info = generate(workdir, shape, core, args.halo)
        res = {w: measure(w, workdir) for w in ("python", "copy", "merge", "relabel") if w not in args.skip}
        ok = compare(workdir / "gt.zarr", workdir / "merged.zarr") if "merge" in res else None
        rows.append((shape, info, res, ok))
        print(f"{size}: generated in {info['generate_seconds']:.0f} s, substack labels written in "
              f"{info['write_seconds_per_substack']:.2f} s each; "
              + "; ".join(f"{w} {json.dumps(r)}" for w, r in res.items()), file=sys.stderr)

    mib = 1 << 20
    print(f"\n{'volume':>16} {'GiB':>5} {'grid':>8} {'box MiB':>8} {'what':>8} {'wall s':>7} "
          f"{'peak RSS MiB':>12} {'RSS/box':>7} {'wall/copy':>9}")
    for shape, info, res, ok in rows:
        gib = 4 * np.prod(shape) / (1 << 30)
        box = info["largest_box_bytes"]
        for what, r in res.items():
            if "error" in r:
                print(f"{'x'.join(map(str, shape)):>16} {gib:5.2f} {'':>8} {'':>8} {what:>8} failed: {r['error']}")
                continue
            ratio = r["wall_s"] / res["copy"]["wall_s"] if "wall_s" in res.get("copy", {}) else float("nan")
            print(f"{'x'.join(map(str, shape)):>16} {gib:5.2f} {'x'.join(map(str, info['grid'])):>8} "
                  f"{box / mib:8.0f} {what:>8} {r['wall_s']:7.1f} {r['peak_rss'] / mib:12.0f} "
                  f"{r['peak_rss'] / box:7.2f} {ratio:9.2f}")
        if ok is not None:
            print(f"{'':>16} merge vs ground truth: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
