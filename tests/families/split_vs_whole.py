"""A family's adapter on whole images and on their substacks (aiod.splitcheck), in its environment.

    python split_vs_whole.py JOB.json

JOB: {"family", "version", "artifact", "params": {}, "config": {},
      "cases": [{"name", "image", "grid": [..], "unaligned": bool, "peer": bool, "library": bool}]}
Each case runs whole and split on the adapter's stride; with "unaligned" also split with box
starts on any pixel (align 1, as before alignment), with "peer" (StarDist) also StarDist's own
predict_instances_big, with "library" also the adapter's `segment_library` (the library's own
evaluation of each box) split against its own whole. Prints one JSON line: {case: aiod.splitcheck.check's record}.
"""

import importlib
import json
import sys
from pathlib import Path

from aiod import splitcheck
from aiod.imageio import open_image
from aiod.models import params_namespace, resolve, runtime


def main(job_path: Path):
    job = json.loads(job_path.read_text())
    work = job_path.parent
    runtime.keep_libraries_out_of_home(work)
    adapter = importlib.import_module(f"aiod.models.{job['family']}")
    params = params_namespace(resolve(job["family"], job["version"], None, job.get("params", {})))
    artifact, config = Path(job["artifact"]), job.get("config", {})
    model = adapter.load(artifact, config, params)
    out = {}
    for case in job["cases"]:
        image = open_image(case["image"])
        out[case["name"]] = splitcheck.check(adapter, model, image, params, adapter.prepare(image, None, params),
                                             case["grid"], work / case["name"], artifact=artifact, config=config,
                                             unaligned=case.get("unaligned", False), peer=case.get("peer", False),
                                             library=case.get("library", False))
    print(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
