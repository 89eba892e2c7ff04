"""Segment one whole image with a family's adapter, in that family's environment.

    python segment.py FAMILY VERSION ARTIFACT IMAGE OUT.npy [--params JSON] [--config JSON]

Parameters are resolved by the registry as the pipeline resolves them: the manifest's defaults
for the version, updated by --params, each checked. Writes the labels to OUT.npy
and {"scores", "seconds", "min_halo", "prepared"} to OUT.json. Run by tests/family_envs.py.
"""

import argparse
import importlib
import json
import time
from pathlib import Path

import numpy as np

from aiod.imageio import open_image
from aiod.models import params_namespace, resolve, runtime



def main():
    parser = argparse.ArgumentParser()
    for name in ("family", "version", "artifact", "image", "out"):
        parser.add_argument(name)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--config", default="{}")
    args = parser.parse_args()
    runtime.keep_libraries_out_of_home(Path(args.out).parent)
    adapter = importlib.import_module(f"aiod.models.{args.family}")
    params = params_namespace(resolve(args.family, args.version, None, json.loads(args.params)))
    config, artifact = json.loads(args.config), Path(args.artifact)
    image = open_image(args.image)
    halo = adapter.min_halo(artifact, config, params)
    prepared = adapter.prepare(image, None, params)
    model = adapter.load(artifact, config, params)
    array = image.read(tuple(slice(0, n) for n in image.spatial_shape))
    started = time.time()
    labels, scores = adapter.segment(model, array, params, prepared, image.scale or (1.0,) * array.ndim)
    seconds = time.time() - started
    np.save(args.out, labels)
    record = {"scores": None if scores is None else {str(k): v for k, v in scores.items()},
              "seconds": seconds, "min_halo": halo, "prepared": prepared}
    Path(args.out).with_suffix(".json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
