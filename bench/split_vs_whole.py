#!/usr/bin/env python
"""Benchmark of split against whole (issue 12); a script, not a test.

Run it with the python of the family's environment (`bin/aiod-env build <family>` prints where),
from the project root:

    PYTHONPATH=src <env>/bin/python bench/split_vs_whole.py classical
    PYTHONPATH=src <env>/bin/python bench/split_vs_whole.py stardist --version 2D_versatile_fluo \
        --artifact <model folder> --image nuclei_2d.tif --size 2048 --grid 2
    PYTHONPATH=src <env>/bin/python bench/split_vs_whole.py cellpose --version nuclei \
        --artifact <model file> --image nuclei_2d.tif --size 2048 --grid 2
    PYTHONPATH=src <env>/bin/python bench/split_vs_whole.py stardist --version 3D_demo \
        --artifact <model folder> --image nuclei_3d.tif --size 31,244,228 --grid 1,2,2

For each case: the image (synthetic nuclei, or --image tiled up to --size), the adapter on the
whole image, and the same adapter on its substacks (the pipeline's planner and merge,
aiod.splitcheck) with box starts on the network's stride and, as before alignment, on any
pixel; for StarDist also its own predict_instances_big as the peer; for the families evaluated
on the image's grid (Cellpose, Cellpose-SAM, Empanada, SAM 2) also the library's own evaluation
of each box (`segment_library`: Cellpose's `eval`, which resizes and tiles the box from its first
pixel; empanada-napari's engine, MitoNet once over the box; SAM 2's generator, the box resized
to 1024 px) on the whole image and split, as the adapters ran before. Printed: objects, F1@0.5
against the whole-image run (the library's own split: against its own whole), whether the objects
are the same ones, and the wall time of each.
The model library's threads follow OMP_NUM_THREADS (TensorFlow: TF_NUM_INTRAOP_THREADS).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from aiod import splitcheck, synthetic
from aiod.imageio import open_image
from aiod.models import params_namespace, resolve, runtime


def numbers(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def make_image(args, folder: Path) -> Path:
    if args.image:
        tile = tifffile.imread(args.image)
        size = numbers(args.size) if "," in args.size else (int(args.size),) * tile.ndim
        reps = [int(np.ceil(s / t)) for s, t in zip(size, tile.shape)]
        image = np.tile(tile, reps)[tuple(slice(0, s) for s in size)]
    else:
        size = numbers(args.size) if "," in args.size else (int(args.size),) * 2
        labels = synthetic.touching_nuclei(size, n=int(np.prod(size) / 1400), radius=(6.0, 11.0), seed=3)
        image = synthetic.render_nuclei(labels, seed=4)
    path = folder / "image.tif"
    tifffile.imwrite(path, image, metadata={"axes": "ZYX"[-image.ndim:]})
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("family")
    parser.add_argument("--version", default=None)
    parser.add_argument("--artifact", type=Path, default=None)
    parser.add_argument("--config", default="{}", help="the registry location's config, as JSON")
    parser.add_argument("--params", default="{}", help="parameter overrides, as JSON")
    parser.add_argument("--image", type=Path, default=None, help="a TIFF to tile up to --size (default: synthetic nuclei)")
    parser.add_argument("--size", default="2048", help="one edge, or one per axis ('31,244,228')")
    parser.add_argument("--grid", default="2", help="substacks per axis: one count or one per axis")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="aiod-bench-split-"))
    work.mkdir(parents=True, exist_ok=True)
    runtime.keep_libraries_out_of_home(work)
    spec = resolve(args.family, args.version, None, json.loads(args.params))
    adapter, params = importlib.import_module(f"aiod.models.{spec['adapter']}"), params_namespace(spec)
    config = json.loads(args.config)
    image = open_image(make_image(args, work))
    ndim = len(image.spatial_shape)
    grid = numbers(args.grid) if "," in args.grid else (int(args.grid),) * ndim
    model = adapter.load(args.artifact, config, params)
    aligned = np.any(np.asarray(adapter.align(args.artifact, config, params)) > 1)
    run = splitcheck.check(adapter, model, image, params, adapter.prepare(image, None, params), grid, work,
                           artifact=args.artifact, config=config, unaligned=bool(aligned),
                           peer=args.family == "stardist", library=hasattr(adapter, "segment_library"))
    secs = run["seconds"]
    print(f"{args.family}/{spec['version']} on {'x'.join(map(str, image.spatial_shape))}, grid "
          f"{'x'.join(map(str, grid))}, halo {run['halo'][0]}, box starts on multiples of {run['align']}")
    print(f"{'run':<34} {'objects':>8} {'F1 vs whole':>12} {'same objects':>13} {'wall s':>8}")
    rows = [("whole image", {"objects": run["whole_objects"], "f1": 1.0, "same": True}, secs["whole"]),
            ("split", run["aligned"], secs["split"])]
    if "unaligned" in run:
        rows.append(("split, boxes on any pixel (before)", run["unaligned"], None))
    if "library" in run:  # the library's own evaluation of each box, against its own whole
        rows += [("library's own eval, whole", run["library_whole"], secs["library_whole"]),
                 ("library's own eval, split (before)", run["library"], secs["library_split"])]
    if "peer" in run:
        rows.append(("StarDist predict_instances_big", run["peer"], secs["peer"]))
    for name, r, s in rows:
        print(f"{name:<34} {r['objects']:>8} {r['f1']:>12.4f} {str(r['same']):>13} {'' if s is None else f'{s:8.1f}':>8}")
    print(json.dumps(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
