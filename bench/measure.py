#!/usr/bin/env python
"""Benchmark of the out-of-core object table (`aiod measure`); a script, not a test.

    python bench/measure.py                        # a 2 GiB uint32 mask of ~1.2 M objects + its image
    python bench/measure.py --sizes 128,512,512 --workdir /tmp/aiod-bench-measure

For each size it writes, chunk by chunk (128³ chunks, zstd 3), an OME-Zarr mask of bench/merge.py's
dense wavy box-like cells at 4..11 voxels apart (about one object per 450 voxels), numbered 1..n and a uint16
image of the same shape (a brightness per cell plus a ramp). Then, each in its own subprocess
(peak RSS = VmHWM of that process, wall time of the work only):

- python:   the interpreter with numpy, zarr, pyarrow and aiod imported, nothing done;
- read-mask: every block of the mask read once, in the blocks and threads that `measure_result`
            uses, with its malloc settings (the floor of `labels`);
- read:     the same for the mask and the image (the floor of `measure`);
- labels:   the object table without intensities (`measure_result(mask)`);
- measure:  the object table with the image's intensities (`table_s`), then write_tables
            (Parquet + CSV, `write_s`);
- dask-image: if dask_image can be imported, `dask_image.ndmeasure` for the same columns
            (count, center of mass, extrema, mean) on the same arrays, with the ids as index.

Each is run --repeat times, interleaved; printed is the run of median wall time: wall time and
peak memory, the ratio to its floor (`labels` to read-mask, the others to read; the table's own
time `table_s` to read is in the note below), and the memory above the read per object (this
machine's first touch of fresh memory is slow and varies from run to run: hence the repeats). Target (issue 15): time <= 2x the read, memory <= one chunk + 200 bytes per object.
"""

from __future__ import annotations

import argparse
import importlib.util
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

from aiod import measure, merge, ngff  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_merge", ROOT / "bench" / "merge.py")
bench_merge = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_merge)

CHUNKS = bench_merge.CHUNKS
SPACING = (4, 11)  # voxels between cell walls: ~450 voxels per cell


def generate(workdir: Path, shape) -> dict:
    done = workdir / "ready.json"
    if done.exists():
        return json.loads(done.read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    cells = bench_merge.Cells(shape, spacing=SPACING)
    labels = ngff.create_labels(workdir / "mask.ome.zarr", "cells", shape, "ZYX", np.uint32, chunks=CHUNKS, scale=(2.0, 0.5, 0.5))
    image = zarr.create_array(store=str(workdir / "image.zarr"), shape=shape, dtype=np.uint16, chunks=CHUNKS,
                              compressors=zarr.codecs.ZstdCodec(level=3), dimension_names=["z", "y", "x"], overwrite=True)
    # ids 1..n in raster order of the cells, as AIoD's masks number their objects (the
    # generator's own ids skip the cells that lie past the volume's edge and the dropped 8%)
    used = np.zeros(tuple(cells.count), bool)
    used[tuple(slice(0, int(ix.max()) + 1) for ix in cells.index)] = True
    used &= cells.keep.reshape(used.shape)
    renumber = np.zeros(used.size + 1, np.uint32)
    renumber[1:][used.ravel()] = np.arange(1, int(used.sum()) + 1)
    brightness = np.random.default_rng(3).integers(100, 3000, size=len(renumber)).astype(np.uint16)

    def write(sl):
        block = renumber[cells.block(sl)]
        labels[sl] = block
        ramp = np.arange(sl[2].start, sl[2].stop, dtype=np.uint16) % 64
        image[sl] = brightness[block] + ramp

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, bench_merge._blocks(shape, (CHUNKS[0], CHUNKS[1], shape[2]))))
    ngff.finish_labels(workdir / "mask.ome.zarr", "cells", max_levels=1)
    info = {"shape": list(shape), "generate_seconds": time.time() - started}
    done.write_text(json.dumps(info))
    return info


def _paths(workdir: Path):
    return workdir / "mask.ome.zarr", workdir / "image.zarr"


def do_python(workdir: Path):
    import pyarrow  # noqa: F401  (what `measure` imports to write)


def do_read(workdir: Path, with_image: bool = True):
    """Every block of the mask (and the image) read once: measure_result's blocks, threads,
    reader and malloc settings."""
    from aiod.imageio import open_image
    from aiod.boxes import SLAB_VOXELS, pieces

    mask, image = _paths(workdir)
    merge.bound_malloc()  # as the table's runs do
    labels, chunks = measure._open_mask(mask, None)
    img = open_image(image) if with_image else None
    boxes = pieces(tuple((0, n) for n in labels.spatial_shape), chunks, (0, 0, 0), SLAB_VOXELS)
    with ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
        voxels = sum(pool.map(lambda box: labels.read(box).size + (img.read(box).size if img else 0), boxes))
    return {"voxels_read": int(voxels)}


def do_labels(workdir: Path):
    merge.bound_malloc()  # as `aiod measure` does
    table = measure.measure_result(_paths(workdir)[0])
    return {"objects": len(table)}


def do_measure(workdir: Path):
    mask, image = _paths(workdir)
    merge.bound_malloc()  # as `aiod measure` does
    started = time.perf_counter()
    table = measure.measure_result(mask, image)
    table_s = time.perf_counter() - started  # numba's import and load included, as in the labels row
    table_mib = bench_merge.peak_rss() / 2**20  # the peak before the files are written
    started = time.perf_counter()
    measure.write_tables(table, workdir / "objects")
    c = table.columns
    return {"objects": len(table), "table_s": round(table_s, 2), "table_peak_mib": round(table_mib), "write_s": round(time.perf_counter() - started, 2),
            "largest": int(c["voxels"].max()), "mean_intensity_c0": round(float(c["mean_intensity_c0"].mean()), 3)}


def do_dask_image(workdir: Path):
    import dask.array as da
    from dask_image import ndmeasure

    mask, image = _paths(workdir)
    labels = da.from_zarr(str(mask / "labels" / "cells" / "0"))
    img = da.from_zarr(str(image))
    ids = measure.read_table(workdir / "objects.parquet").columns["id"]  # dask-image needs the ids
    out = da.compute(ndmeasure.sum_labels(da.ones_like(img), labels, ids), ndmeasure.center_of_mass(da.ones_like(img), labels, ids),
                     ndmeasure.mean(img, labels, ids), ndmeasure.minimum(img, labels, ids), ndmeasure.maximum(img, labels, ids))
    return {"objects": len(out[0])}


WORK = {"python": do_python, "read-mask": lambda w: do_read(w, False), "read": do_read, "labels": do_labels, "measure": do_measure, "dask-image": do_dask_image}


def child(what: str, workdir: Path) -> None:
    started = time.perf_counter()
    extra = WORK[what](workdir)
    print(json.dumps({"wall_s": time.perf_counter() - started, "peak_rss": bench_merge.peak_rss(), "extra": extra}))


def _median(done: list) -> dict:
    """The run of median wall time (an error if any run failed)."""
    failed = [d for d in done if "error" in d]
    return failed[0] if failed else sorted(done, key=lambda d: d["wall_s"])[len(done) // 2]


def run(what: str, workdir: Path, timeout: float) -> dict:
    try:
        done = subprocess.run([sys.executable, __file__, "--child", what, "--workdir", str(workdir)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"gave up after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="*", default=["512,1024,1024"], help="volume shapes Z,Y,X")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/aiod-bench-measure"))
    p.add_argument("--dask-timeout", type=float, default=1800, help="seconds dask-image may take before it is stopped")
    p.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved; the median is printed")
    p.add_argument("--child", choices=sorted(WORK), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.workdir)
        return 0
    have_dask = importlib.util.find_spec("dask_image") is not None
    mib = 2 ** 20
    print(f"{'volume':>14} {'GiB':>5} {'what':>10} {'wall s':>7} {'/read':>6} {'peak MiB':>9} {'B/object over read':>19}  extra")
    for size in a.sizes:
        shape = tuple(int(n) for n in size.split(","))
        workdir = a.workdir / "x".join(map(str, shape))
        info = generate(workdir, shape)
        print(f"# {size}: generated in {info['generate_seconds']:.0f} s", file=sys.stderr)
        runs = {w: [] for w in ("python", "read-mask", "read", "labels", "measure")}
        for _ in range(a.repeat):
            for what, done in runs.items():
                done.append(run(what, workdir, a.dask_timeout))
        res = {w: _median(done) for w, done in runs.items()}
        if have_dask:
            res["dask-image"] = run("dask-image", workdir, a.dask_timeout)
        n = res["measure"].get("extra", {}).get("objects", 0)
        for what, r in res.items():
            if "error" in r:
                print(f"{'x'.join(map(str, shape)):>14} {'':>5} {what:>10} failed: {r['error']}")
                continue
            floor = res["read-mask" if what == "labels" else "read"]
            ratio = r["wall_s"] / floor["wall_s"] if "wall_s" in floor else float("nan")
            per = (r["peak_rss"] - floor.get("peak_rss", 0)) / n if n and what not in ("python", "read", "read-mask") else float("nan")
            print(f"{'x'.join(map(str, shape)):>14} {4 * np.prod(shape) / 2 ** 30:5.2f} {what:>10} {r['wall_s']:7.1f} {ratio:6.2f} "
                  f"{r['peak_rss'] / mib:9.0f} {per:19.0f}  {r['extra']}")
            if len(runs.get(what, [])) > 1:
                walls = " ".join(f"{d['wall_s']:.1f}" if "wall_s" in d else "x" for d in runs[what])
                print(f"{'':>14} {'':>5} {'':>10} runs: {walls}")
        if "table_s" in res["measure"].get("extra", {}) and "wall_s" in res["read"]:
            print(f"{'':>14} table with intensities (table_s) / read: {res['measure']['extra']['table_s'] / res['read']['wall_s']:.2f}")
    print(f"one chunk: {4 * np.prod(CHUNKS) / mib:.0f} MiB of uint32 labels + {2 * np.prod(CHUNKS) / mib:.0f} MiB of uint16 image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
