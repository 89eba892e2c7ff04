"""Train a Cellpose 3 model briefly on the bundled 2D nuclei, in the cellpose environment.

    python train_cellpose.py OUT_DIR DATA_DIR

DATA_DIR holds nuclei_2d.tif / nuclei_2d_mask.tif (stardist.data's real nuclei, written by
tests/family_envs.py). Starts from random weights (nothing is downloaded), trains on the four
256x256 quadrants (normalised as the adapter does: 1st-99th percentile of the whole image) and
writes one model file, OUT_DIR/models/cellpose_nuclei: the layout of the published cellpose
models (one file), used for 2D and, with do_3D, for 3D. OUT_DIR/artifacts.json: {"2": file, "3": file}.
"""

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from aiod.models import runtime

EPOCHS = 100
CROP = 128  # training crops (cellpose's default 224 costs 2-3x more per epoch on a CPU)


def main(out: Path, data: Path):
    runtime.keep_libraries_out_of_home(out)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # cellpose's training log, to stderr
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    from cellpose import models, train

    image = tifffile.imread(data / "nuclei_2d.tif").astype(np.float32)
    mask = tifffile.imread(data / "nuclei_2d_mask.tif")
    lo, hi = np.percentile(image, [1, 99])
    image = (image - lo) / (hi - lo)
    crops = [(slice(y, y + 256), slice(x, x + 256)) for y in (0, 256) for x in (0, 256)]
    images, masks = [image[c] for c in crops], [mask[c] for c in crops]

    started = time.time()
    model = models.CellposeModel(pretrained_model=False, device=runtime.torch_device("cellpose"))
    path, _, _ = train.train_seg(model.net, train_data=images, train_labels=masks, channels=[0, 0],
                                 normalize=False, n_epochs=EPOCHS, learning_rate=0.01, batch_size=4,
                                 save_path=str(out), model_name="cellpose_nuclei", min_train_masks=1,
                                 bsize=CROP)
    print(f"cellpose: trained {EPOCHS} epochs in {time.time() - started:.0f} s", file=sys.stderr)
    (out / "artifacts.json").write_text(json.dumps({"2": str(path), "3": str(path)}))
    print(out / "artifacts.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
