"""Throughput: the pipeline against a one-process floor on many small fields and on one large image.

    .venv/bin/python bench/throughput.py [--fields 1000] [--big-fields 40] [--large 8192] [--workdir DIR]

Workloads (classical model, `-profile local`): N synthetic 2D fields of 256x256, M fields of
1024x1024, and one LxL image planned with `--num_substacks auto` and `4,4`. For each, in the same
sitting:

- the floor: one Python process that opens each image, runs the same model with the same resolved
  parameters on the whole image and writes the same OME-Zarr labels (renumbered 1..n, multiscale);
- the pipeline, cold (empty cache), then an identical second run (every image from the cache).

Printed: wall and CPU seconds (the process and its children: Nextflow and every task), the
ratio to the floor, objects (pipeline vs floor, image by image), tasks per process, and when the
first result was published (a run streams results when that is early). CPU
seconds are the stable figure on a loaded machine; wall time is what a user waits.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEXTFLOW = os.environ.get("AIOD_NEXTFLOW") or shutil.which("nextflow") or str(ROOT / "engine" / "nextflow")
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def write_fields(folder: Path, n: int, size: int, seed0: int) -> Path:
    """n distinct synthetic nuclei fields (each its own content, so each its own cache key)."""
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import tifffile

    from aiod import synthetic
    folder.mkdir(parents=True, exist_ok=True)
    tile = 256
    bases = [synthetic.render_nuclei(synthetic.touching_nuclei((tile, tile), n=40, radius=(6.0, 10.0), seed=s), seed=s)
             for s in range(8)]
    rng = np.random.default_rng(seed0)
    sheet = folder / "samplesheet.csv"
    with open(sheet, "w") as fh:
        fh.write("id,image\n")
        for i in range(n):
            reps = size // tile
            image = np.block([[bases[rng.integers(8)] for _ in range(reps)] for _ in range(reps)])
            image = image + rng.integers(0, 3, image.shape, dtype=image.dtype)  # distinct bytes per field
            tifffile.imwrite(folder / f"f{i:05d}.tif", image)
            fh.write(f"f{i:05d},f{i:05d}.tif\n")
    return sheet


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def run_floor(sheet: Path, out: Path, grid: str | None) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    from skimage.segmentation import relabel_sequential

    from aiod import imageio, ngff, planner
    from aiod.models import get_adapter, params_namespace, resolve
    model = resolve("classical", None, None, {})
    adapter, params = get_adapter(model["adapter"]), params_namespace(model)
    net = adapter.load(None, {}, params)
    objects = {}
    for row in csv.DictReader(open(sheet)):
        with imageio.open_image(sheet.parent / row["image"]) as image:
            prepared = adapter.prepare(image, None, params)
            shape, axes = image.spatial_shape, image.spatial_axes
            root = out / f"{row['id']}.ome.zarr"
            if grid is None:  # the whole image at once
                labels, _ = adapter.segment(net, image.read(tuple(slice(0, n) for n in shape), None), params, prepared, None)
                labels = relabel_sequential(labels)[0].astype(np.uint32)
                ngff.create_labels(root, "classical", shape, axes, np.uint32)[...] = labels
                objects[row["id"]] = int(labels.max())
            else:  # substacks one after another, each written as it is done (no merge of seams)
                plan = planner.plan_substacks(shape, axes, planner.parse_num_substacks(grid, len(shape)), (32.0,) * len(shape),
                                              bytes_per_voxel=1, memory_budget=None)
                arr, offset = ngff.create_labels(root, "classical", shape, axes, np.uint32), 0
                for sub in plan.substacks:
                    labels, _ = adapter.segment(net, image.read(sub.box_slices, None), params, prepared, None)
                    core = relabel_sequential(labels[sub.core_in_box])[0].astype(np.uint32)
                    arr[sub.core_slices] = np.where(core > 0, core + offset, 0)
                    offset += int(core.max())
                objects[row["id"]] = offset
            ngff.finish_labels(root, "classical")
    print(json.dumps(objects))


def pipeline(sheet: Path, work: Path, suffix: str, *params: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    wall, cpu, proc = timed([NEXTFLOW, "run", str(ROOT / "main.nf"), "-profile", "local", "-ansi-log", "false",
                             "--input", str(sheet), "--outdir", str(work / "results"), "--root_dir", str(work / "root"),
                             "--trace_report_suffix", suffix, *params], work, {"NXF_OFFLINE": "true"})
    with open(work / "results" / "pipeline_info" / f"execution_trace_{suffix}.txt") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    tasks: dict[str, int] = {}
    for r in rows:
        tasks[r["process"]] = tasks.get(r["process"], 0) + 1
    records = {p: json.loads(p.read_text()) for p in (work / "results").glob("*.json")}
    records = {p: r for p, r in records.items() if str(r.get("format", "")).startswith("aiod-record/")}  # not comparison.json
    objects = {p.stem: r["n_objects"] for p, r in records.items()}
    first = min(p.stat().st_mtime for p in records) - start  # a record is written as its result is published
    return {"wall": wall, "cpu": cpu, "tasks": tasks, "objects": objects, "first": first}


STEP_MODULES = {"CHECK_INPUT": "aiod.samplesheet", "PLAN": "aiod.steps.plan, aiod.models.classical", "SEGMENT": "aiod.steps.segment",
                "MERGE": "aiod.steps.merge", "FINALIZE": "aiod.steps.finalize"}
HEAVY = ("scipy", "skimage", "dask", "torch", "tensorflow")


def import_times(repeats: int = 5) -> None:
    """Seconds each step's task spends importing (its step module, from a fresh interpreter; the
    least of `repeats`), and which heavy libraries come with it."""
    print("\nimports per task (least of %d fresh interpreters)" % repeats)
    for step, module in STEP_MODULES.items():
        code = (f"import sys, time; t = time.perf_counter(); import {module}; t = time.perf_counter() - t; "
                f"print(t, sorted(m for m in {HEAVY!r} if m in sys.modules))")
        runs = [subprocess.run([PYTHON, "-c", code], cwd=ROOT / "src", capture_output=True, text=True, check=True).stdout.split(" ", 1)
                for _ in range(repeats)]
        print(f"  {step:12} {min(float(t) for t, _ in runs):5.2f} s  heavy: {runs[0][1].strip()}")


def report(name: str, n_images: int, base: dict, cold: dict, warm: dict | None, seams_joined: bool = True) -> None:
    """`seams_joined=False`: the floor segmented substacks one after another without joining the
    objects cut by their seams, so it counts those twice; the pipeline's count is the whole image's."""
    print(f"\n{name}")
    print(f"  floor (one process)    {base['wall']:8.1f} s wall {base['cpu']:8.1f} s CPU")
    for label, run in (("pipeline, cold", cold), ("pipeline, all cached", warm)):
        if run is None:
            continue
        ratio = f"{run['wall'] / base['wall']:6.2f}x wall {run['cpu'] / base['cpu']:6.2f}x CPU" if label.endswith("cold") else ""
        print(f"  {label:22} {run['wall']:8.1f} s wall {run['cpu']:8.1f} s CPU  {ratio}")
        print(f"    first result published after {run['first']:.1f} s ({100 * run['first'] / run['wall']:.0f}% of the run)")
        per100 = ", ".join(f"{p} {n} ({100 * n / n_images:.1f}/100 images)" for p, n in sorted(run["tasks"].items()))
        print(f"    tasks: {sum(run['tasks'].values())}: {per100}")
    same = cold["objects"] == base["objects"]
    verdict = ("equal image for image" if same else "DIFFERENT" if seams_joined
               else "the floor does not join objects cut by its seams")
    print(f"  objects: pipeline {sum(cold['objects'].values())}, floor {sum(base['objects'].values())} ({verdict})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "floor":
        run_floor(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=1000, help="fields of 256x256 (0: skip)")
    ap.add_argument("--big-fields", type=int, default=40, help="fields of 1024x1024 (0: skip)")
    ap.add_argument("--large", type=int, default=8192, help="side of the one large image (0: skip)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/aiod-bench-throughput"))
    ap.add_argument("--imports-only", action="store_true", help="only the import time of each step")
    a = ap.parse_args()
    import_times()
    if a.imports_only:
        return
    shutil.rmtree(a.workdir, ignore_errors=True)
    for name, n, size in (("fields 256x256", a.fields, 256), ("fields 1024x1024", a.big_fields, 1024)):
        if n:
            sheet = write_fields(a.workdir / f"data{size}", n, size, seed0=size)
            wall, cpu, proc = timed([PYTHON, __file__, "floor", str(sheet), str(a.workdir / f"floor{size}")], ROOT)
            base = {"wall": wall, "cpu": cpu, "objects": json.loads(proc.stdout)}
            cold = pipeline(sheet, a.workdir / f"run{size}", "cold", "--num_substacks", "1")
            warm = pipeline(sheet, a.workdir / f"run{size}", "warm", "--num_substacks", "1")
            report(f"{n} {name}", n, base, cold, warm)
    if a.large:
        sheet = write_fields(a.workdir / "large", 1, a.large, seed0=7)
        for grid in ("auto", "4"):
            floor_grid = None if grid == "auto" else grid
            wall, cpu, proc = timed([PYTHON, __file__, "floor", str(sheet), str(a.workdir / f"floor-large-{grid}")]
                                    + ([floor_grid] if floor_grid else []), ROOT)
            base = {"wall": wall, "cpu": cpu, "objects": json.loads(proc.stdout)}
            cold = pipeline(sheet, a.workdir / f"large-{grid}", "cold", "--num_substacks", grid)
            report(f"one {a.large}x{a.large} image, --num_substacks {grid} (floor: "
                   f"{'whole image' if floor_grid is None else 'its substacks one after another'})", 1, base, cold, None,
                   seams_joined=floor_grid is None)


if __name__ == "__main__":
    main()
