"""The stardist adapter's receptive field (from config.json) against StarDist's own measurement.

    python stardist_receptive_field.py MODEL_FOLDER

Prints {"computed": [...], "measured": [...], "min_halo": n} as JSON: computed by
aiod.models.stardist.receptive_field without TensorFlow; measured by StarDist's
`_axes_tile_overlap` (it runs the network on an impulse), what `predict_instances_big` uses.
"""

import contextlib
import json
import sys
from pathlib import Path

from aiod.models import runtime, stardist


def main(folder: Path):
    runtime.keep_libraries_out_of_home(Path.cwd())
    computed = stardist.receptive_field(stardist.read_config(folder))
    halo = stardist.min_halo(folder, {}, None)
    model = stardist.load(folder, {}, None)
    with contextlib.redirect_stdout(sys.stderr):
        measured = model._axes_tile_overlap("ZYX"[-model.config.n_dim:])
    print(json.dumps({"computed": list(computed), "measured": [int(m) for m in measured], "min_halo": halo}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
