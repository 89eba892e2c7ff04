"""Train StarDist 2D and 3D models briefly on the bundled nuclei, in the stardist environment.

    python train_stardist.py OUT_DIR DATA_DIR

DATA_DIR holds nuclei_2d.tif / nuclei_2d_mask.tif / nuclei_3d.tif / nuclei_3d_mask.tif
(stardist.data's real 2D nuclei and synthetic 3D volume, written by tests/family_envs.py).
Writes OUT_DIR/stardist_2d/ and OUT_DIR/stardist_3d/, each a model folder in the layout of the
published zips (config.json, thresholds.json, weights), and OUT_DIR/artifacts.json:
{"2": folder, "3": folder}. Images are normalised as the adapter does (1st-99.8th percentile).
"""

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from aiod.models import runtime


def normalised(x):
    lo, hi = np.percentile(x, [1, 99.8])
    return ((x - lo) / (hi - lo)).astype(np.float32)


def augment(x, y):
    """Random flips and 90-degree turns in the YX plane (the same for image and mask)."""
    k = np.random.randint(4)
    x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
    for ax in (-1, -2):
        if np.random.rand() < 0.5:
            x, y = np.flip(x, ax), np.flip(y, ax)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def train(cls, config, name, x, y, out: Path, epochs, steps):
    started = time.time()
    model = cls(config, name=name, basedir=str(out))
    model.train([x], [y], validation_data=([x], [y]), augmenter=augment, epochs=epochs, steps_per_epoch=steps)
    # writes thresholds.json, like the published models (one NMS value and IoU: seconds, not minutes)
    model.optimize_thresholds([x], [y], nms_threshs=[0.3], iou_threshs=[0.5], optimize_kwargs={"maxiter": 10})
    print(f"{name}: trained in {time.time() - started:.0f} s", file=sys.stderr)
    return out / name, model


ACCEPT_3D = 0.75  # F1 on the training volume a 3D model must reach: the tests' floor (0.7) and a margin


def train_3d(config, x, y, out: Path, epochs, steps, attempts=4):
    """The 3D model, trained again from another seed when it did not learn the volume (StarDist's
    own prediction on the training volume: F1 below ACCEPT_3D). The small U-Net fails now and
    then: in seven trainings on this machine seeds 0 and 2 collapsed to F1 0 four times (the
    probability flat at the background's), yet seed 0 reached 0.85 in another run (TensorFlow's
    training is not reproducible; seed 1 reached 0.76-0.87 three times); one training of seed 0
    stopped at 0.53, under the tests' floor (0.7). A model that did train is judged by the tests,
    through the adapter."""
    import tensorflow as tf
    from stardist.matching import matching
    from stardist.models import StarDist3D

    for attempt in range(attempts):
        np.random.seed(attempt)
        tf.keras.utils.set_random_seed(attempt)
        folder, model = train(StarDist3D, config, "stardist_3d", x, y, out, epochs, steps)
        f1 = matching(y, model.predict_instances(x, show_tile_progress=False)[0], thresh=0.5).f1
        print(f"stardist_3d: attempt {attempt + 1} (seed {attempt}): F1 {f1:.3f} on the training volume", file=sys.stderr)
        if f1 >= ACCEPT_3D:
            return folder, attempt + 1
        shutil.rmtree(folder)
    raise SystemExit(f"stardist_3d: F1 under {ACCEPT_3D} on the training volume in {attempts} trainings")


def main(out: Path, data: Path):
    runtime.keep_libraries_out_of_home(out)
    np.random.seed(0)
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)  # training still varies: stardist feeds it through a parallel tf.data map
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config2D, Config3D, StarDist2D

    x2, y2 = normalised(tifffile.imread(data / "nuclei_2d.tif")), tifffile.imread(data / "nuclei_2d_mask.tif")
    conf2 = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(128, 128), train_batch_size=4,
                     train_tensorboard=False)
    folder2, _ = train(StarDist2D, conf2, "stardist_2d", x2, y2, out, epochs=10, steps=25)

    x3, y3 = normalised(tifffile.imread(data / "nuclei_3d.tif")), tifffile.imread(data / "nuclei_3d_mask.tif")
    # A small U-Net (16 filters at the top, depth 2) on 16x32x32 patches: 0.44 s a step on two
    # threads, where 32 filters on 24x48x48 patches took 2 s a step on one and 6 s on a loaded
    # machine (400 steps: 33 min on a slow machine). 600 steps at 1e-3: after 400, seed 1 gave F1
    # 0.76 (0.82 after 600); at 3e-3 two of three seeds collapsed. Six epochs: the validation
    # runs once per epoch.
    conf3 = Config3D(rays=Rays_GoldenSpiral(32), grid=(1, 2, 2), n_channel_in=1, unet_n_depth=2, unet_n_filter_base=16,
                     train_patch_size=(16, 32, 32), train_batch_size=2, train_learning_rate=1e-3,
                     train_tensorboard=False)
    folder3, attempts = train_3d(conf3, x3, y3, out, epochs=6, steps=100)

    (out / "artifacts.json").write_text(json.dumps({"2": str(folder2), "3": str(folder3), "3_attempts": attempts}))
    print(out / "artifacts.json")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
