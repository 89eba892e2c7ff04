"""Segment boxes of images with one loaded model, in a family's environment (any family; the
large models are slow to load, so one process runs every case).

    python segment_cases.py JOB.json

JOB: {"family", "version", "artifact" (null: none, as classical), "config", "params": {name: value},
      "out": folder, "cases": [{"name", "image": tif, "box": [[start, stop], ...] or null (whole),
      "repeat": n}]}
Parameters are the manifest's defaults for the version, overridden by `params`, each checked by
the registry's schema as the pipeline checks them. prepare() sees the whole image, segment() the
box (one substack, at its origin in the image). Writes OUT/<name>_<i>.npy per run and
OUT/record.json: {"runs": {<name>_<i>: {"seconds", "scores"}}, "min_halo", "prepared", "load_seconds"}.
"""

import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from aiod.imageio import open_image
from aiod.models import params_namespace, resolve, runtime


def main(job: dict) -> None:
    runtime.keep_libraries_out_of_home(".")
    adapter = importlib.import_module(f"aiod.models.{job['family']}")
    params = params_namespace(resolve(job["family"], job["version"], None, job["params"]))
    artifact, out = Path(job["artifact"]) if job["artifact"] else None, Path(job["out"])
    started = time.time()
    model = adapter.load(artifact, job["config"], params)
    record = {"runs": {}, "load_seconds": time.time() - started, "prepared": {},
              "min_halo": adapter.min_halo(artifact, job["config"], params)}
    for case in job["cases"]:
        with open_image(case["image"]) as image:
            prepared = adapter.prepare(image, None, params)
            box = case.get("box") or [[0, n] for n in image.spatial_shape]
            array = image.read(tuple(slice(a, b) for a, b in box))
            spacing = image.scale
        record["prepared"][case["name"]] = prepared
        for i in range(case.get("repeat", 1)):
            started = time.time()
            labels, scores = adapter.segment(model, array, params, prepared, spacing, origin=tuple(a for a, _ in box))
            np.save(out / f"{case['name']}_{i}.npy", labels)
            record["runs"][f"{case['name']}_{i}"] = {
                "seconds": time.time() - started,
                "scores": None if scores is None else {str(k): v for k, v in scores.items()}}
    (out / "record.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
