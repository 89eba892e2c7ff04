"""Train a Cellpose 3 model briefly on the bundled 2D nuclei, in the cellpose environment.

    python train_cellpose.py OUT_DIR DATA_DIR [--seed N] [--epochs N]

DATA_DIR holds nuclei_2d.tif / nuclei_2d_mask.tif (stardist.data's real nuclei, written by
tests/family_envs.py). Starts from random weights (nothing is downloaded), trains on the four
256x256 quadrants (normalised as the adapter does: 1st-99th percentile of the whole image) and
writes one model file, OUT_DIR/models/cellpose_nuclei: the layout of the published cellpose
models (one file), used for 2D and, with do_3D, for 3D. OUT_DIR/artifacts.json: {"2": file, "3": file}.
--seed sets the initial weights; the crops and augmentations are the same for every seed
(train_seg seeds numpy with the epoch number). Torch's thread count comes from OMP_NUM_THREADS.
"""

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from aiod.models import runtime

# Over 100 epochs cellpose's train_seg ends with 50 epochs whose learning rate halves every 5
# (at 100 or fewer it stays at its peak to the last step). At 100 epochs the final weights were a
# snapshot of a noisy trajectory: F1@0.5 0.744, 0.870 and 0.905 on three machines of one kind
# (same code, seed and thread count); annealed, the model settles (see test_family_cellpose.py).
EPOCHS = 120
CROP = 128  # training crops (cellpose's default 224 costs 2-3x more per epoch on a CPU)


def main(out: Path, data: Path, seed: int = 0, epochs: int = EPOCHS):
    runtime.keep_libraries_out_of_home(out)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # cellpose's training log, to stderr
    import torch

    torch.use_deterministic_algorithms(True)  # no nondeterministic kernels (results still vary across CPUs)
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
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
                                 normalize=False, n_epochs=epochs, learning_rate=0.01, batch_size=4,
                                 save_path=str(out), model_name="cellpose_nuclei", min_train_masks=1,
                                 bsize=CROP)
    print(f"cellpose: trained {epochs} epochs (seed {seed}, {torch.get_num_threads()} threads) in "
          f"{time.time() - started:.0f} s", file=sys.stderr)
    (out / "artifacts.json").write_text(json.dumps({"2": str(path), "3": str(path)}))
    print(out / "artifacts.json")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    main(args.out, args.data, args.seed, args.epochs)
