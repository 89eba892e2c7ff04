"""Build a random-weight Cellpose-SAM model file, in the cellposesam environment.

    python build_cellposesam.py OUT_DIR

Writes OUT_DIR/cpsam: the layout of the published model (one file named `cpsam`, a float32
state dict of cellpose 4's CPSAM network, saved with the network's own `save_model`), which
`CellposeModel(pretrained_model=<path>)` loads, and prints one JSON line {family, version, task,
artifact, config} (config: the registry location's config, empty for this family).

Weights: the ViT-L encoder is SAM's random initialisation (seeded), nothing is downloaded. The
readout layer is made to point the flows of every 8x8 patch at its centre (5 x unit vectors, the
scale cellpose's flows have) with a small random part, and leaves the cell probability to the
random encoder: such a network finds patch-sized objects that depend on the image, so a test
sees the whole path from the network to masks. Its output means nothing.
"""

import json
import sys
from pathlib import Path

import numpy as np

from aiod.models import runtime


def main(out: Path) -> dict:
    runtime.keep_libraries_out_of_home(".")
    import torch
    from cellpose.vit import CPSAM

    torch.manual_seed(0)
    net = CPSAM(dtype=torch.float32)
    ps = net.ps  # 8-pixel patches: the readout gives nout x ps x ps values per patch
    yy, xx = np.mgrid[0:ps, 0:ps].astype(np.float32) - (ps - 1) / 2
    norm = np.hypot(yy, xx)
    bias = np.stack([-5 * yy / norm, -5 * xx / norm, np.zeros_like(yy)])  # dY, dX, cell probability
    with torch.no_grad():
        net.out.weight[: 2 * ps * ps].mul_(0.1)
        net.out.bias.copy_(torch.from_numpy(bias.reshape(-1)))
    path = out / "cpsam"
    net.save_model(str(path))
    return {"family": "cellposesam", "version": "cpsam", "task": "cyto", "artifact": str(path), "config": {}}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]).resolve())))
