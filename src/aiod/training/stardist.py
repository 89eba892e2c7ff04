"""Fine-tuning StarDist 2D with StarDist's own training step, on patches read from the images.

The parent's model folder is loaded by the adapter (read-only: nothing is written into it) and
trained with `StarDist2D.train`, StarDist's data generator (the star distances and object
probabilities of each patch, computed from its labels), losses and Adam, one epoch per call.
Each epoch draws `patches_per_epoch` square patches from the training images (an image in
proportion to its area, a position uniformly; seeded by `seed` and the epoch) and reads only those
boxes, image and ground truth (aiod.imageio), so no image is ever held whole; StarDist is given
the epoch's patches as its images, each exactly `train_patch_size`, and takes each whole. A patch
of an image smaller than `patch_size` is padded, its labels with -1: pixels StarDist's losses
ignore. The patches are normalised as the adapter normalises at inference (its image-wide
percentiles, prepare()). Augmentation (`augment`) is that of StarDist's example notebooks: random
flips and 90-degree turns, and a random intensity scale and shift. The learning rate is constant
(StarDist's own lowering on a plateau of the validation loss is off: it restarts with every call).

After every epoch a checkpoint (network weights, Adam's state, epochs done, losses, seconds)
replaces the last one atomically, as one .npz of arrays (no pickle); a run that finds one
continues after its epoch. Patches, augmentations and the batches' order depend only on the seed
and the epoch, so a resumed run takes the steps an uninterrupted run would take.

The saved model is a StarDist model folder like the published ones: config.json (the parent's,
with the training settings used), the weights (`weights_best.h5`, the legacy HDF5 layout that
StarDist loads) and thresholds.json, the probability and NMS thresholds of the new network found
with StarDist's `optimize_thresholds` (as StarDist's own training notebooks do after training) on
the validation patches, or without validation images on training patches drawn for it (the
parent's thresholds suit the parent's probabilities, not the new ones).

3D (StarDist3D) is not taken: its patches need a size per axis (anisotropic volumes, a grid
of its own along Z) that one `patch_size` does not say.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..imageio import open_image
from ..models import runtime
from ..models import stardist as adapter

STRIDE = 16  # the published and the test models: grid 2 and three 2x poolings (checked again on the model)
NDIMS = (2,)  # the spatial dimensions of the images it trains on


def check(params: dict) -> None:
    if params["patch_size"] % STRIDE:
        raise ValueError(f"patch_size {params['patch_size']} is not a multiple of {STRIDE} (the network's stride)")


class _Images:
    """The training images, open (nothing read) with their image-wide normalisation."""

    def __init__(self, items, seg_params):
        self.items = items
        self.images = [open_image(i.image, i.axes) for i in items]
        self.truths = [open_image(i.ground_truth) for i in items]
        for item, image in zip(items, self.images):
            if len(image.spatial_shape) != 2:
                raise ValueError(f"{item.image}: stardist fine-tuning takes 2D images; this one is "
                                 f"{len(image.spatial_shape)}D")
        self.prepared = [adapter.prepare(im, i.channel, seg_params) for im, i in zip(self.images, items)]
        areas = np.array([float(np.prod(im.spatial_shape)) for im in self.images])
        self.weights = areas / areas.sum()

    def patches(self, n: int, size: int, rng: np.random.Generator):
        """n patches: ([image (P, P[, C]) float32], [labels (P, P) int32]), each read as one box."""
        xs, ys = [], []
        for k in rng.choice(len(self.images), size=n, p=self.weights):
            shape = self.images[k].spatial_shape
            box = tuple(slice(s, s + min(size, dim)) for s, dim in
                        ((int(rng.integers(0, max(1, dim - size + 1))), dim) for dim in shape))
            x = runtime.normalise(self.images[k].read(box, self.items[k].channel), self.prepared[k])
            if x.ndim == 3:  # channels first from the reader, last for StarDist
                x = np.moveaxis(x, 0, -1)
            y = np.asarray(self.truths[k].read(box)).astype(np.int32)
            pad = [(0, size - n) for n in y.shape]
            xs.append(np.pad(x, pad + [(0, 0)] * (x.ndim - 2)))
            ys.append(np.pad(y, pad, constant_values=-1))  # -1: ignored by StarDist's losses
        return xs, ys

    def close(self):
        for im in self.images + self.truths:
            im.close()


def _augment(x, y):
    """StarDist's example notebooks' augmenter: a random flip and 90-degree turn (the same for
    image and labels), then a random intensity scale and shift of the image."""
    k = np.random.randint(4)
    x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
    for axis in (0, 1):
        if np.random.rand() < 0.5:
            x, y = np.flip(x, axis), np.flip(y, axis)
    x = x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def _save_checkpoint(path: Path, model, optimizer, state: dict) -> None:
    arrays = {f"w{i}": w for i, w in enumerate(model.keras_model.get_weights())}
    arrays.update({f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    partial = path.with_name(f".{path.name}.partial.npz")
    np.savez(partial, state=np.array(json.dumps(state)), **arrays)
    os.replace(partial, path)


def _load_checkpoint(path: Path, model, optimizer) -> dict:
    with np.load(path, allow_pickle=False) as saved:
        weights = [saved[f"w{i}"] for i in range(sum(k.startswith("w") for k in saved.files))]
        model.keras_model.set_weights(weights)
        optimizer.build(model.keras_model.trainable_variables)
        for i, variable in enumerate(optimizer.variables):
            variable.assign(saved[f"o{i}"])
        return json.loads(str(saved["state"]))


def _seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**31


def _save_model(model, out: Path, patches) -> Path:
    """A StarDist model folder: config.json, weights_best.h5, and thresholds.json found on
    `patches` (images, labels) with StarDist's `optimize_thresholds`."""
    from csbdeep.utils import save_json

    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_json(vars(model.config), str(partial / "config.json"))
    model.keras_model.save_weights(str(partial / "weights_best.h5"))  # StarDist's legacy HDF5 layout
    with contextlib.redirect_stdout(sys.stderr), contextlib.redirect_stderr(io.StringIO()):  # its progress bars
        found = model.optimize_thresholds(patches[0], [np.maximum(y, 0) for y in patches[1]], save_to_json=False)
    (partial / "thresholds.json").write_text(json.dumps({"prob": float(found["prob"]), "nms": float(found["nms"])}))
    runtime.log(f"stardist: thresholds {found} (StarDist's optimize_thresholds on {len(patches[0])} patches)")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return out


def train(artifact: Path, config: dict, seg_params, train_items, valid_items, params: dict, folder: Path) -> dict:
    runtime.keep_libraries_out_of_home(folder)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = adapter.load(artifact, config, seg_params)  # read-only: basedir None, no callbacks write anything
    if model.config.n_dim != 2:
        raise ValueError(f"{artifact}: a {model.config.n_dim}D StarDist model; fine-tuning takes 2D models")
    import tensorflow as tf
    from csbdeep.utils.tf import keras_import

    size, seed = params["patch_size"], params["seed"]
    div_by = model._axes_div_by("YX")
    if any(size % d for d in div_by):
        raise ValueError(f"patch_size {size} is not a multiple of {max(div_by)}, this model's stride")
    cfg = model.config
    cfg.train_patch_size, cfg.train_batch_size = (size, size), params["batch_size"]
    cfg.train_learning_rate, cfg.train_reduce_lr, cfg.train_tensorboard = params["learning_rate"], None, False
    optimizer = keras_import("optimizers", "Adam")(params["learning_rate"])
    model.prepare_for_training(optimizer)
    images = _Images(train_items, seg_params)
    valid = _Images(valid_items, seg_params) if valid_items else None
    fixed_valid = valid.patches(params["patches_per_epoch"], size, np.random.default_rng([seed, 1 << 20])) if valid else None
    state = {"epochs_done": 0, "train_loss": [], "valid_loss": [], "seconds": 0.0}
    checkpoint = folder / "checkpoint.npz"
    if checkpoint.exists():
        state.update(_load_checkpoint(checkpoint, model, optimizer))
        runtime.log(f"stardist: resuming after epoch {state['epochs_done']} of {params['epochs']} ({checkpoint})")
    steps = math.ceil(params["patches_per_epoch"] / params["batch_size"])
    for epoch in range(state["epochs_done"], params["epochs"]):
        started = time.time()
        xs, ys = images.patches(params["patches_per_epoch"], size, np.random.default_rng([seed, epoch]))
        tf.keras.utils.set_random_seed(_seed(seed, epoch))  # numpy's (batch order, augmenter) and TensorFlow's
        with contextlib.redirect_stdout(sys.stderr):  # Keras prints its progress bar
            history = model.train(xs, ys, validation_data=fixed_valid or (xs[:1], ys[:1]),
                                   augmenter=_augment if params["augment"] else None, seed=_seed(seed, epoch),
                                   epochs=1, steps_per_epoch=steps).history
        state["train_loss"].append(float(history["loss"][-1]))
        if fixed_valid:
            state["valid_loss"].append(float(history["val_loss"][-1]))
        state["epochs_done"] = epoch + 1
        state["seconds"] += time.time() - started
        _save_checkpoint(checkpoint, model, optimizer, state)
        runtime.log(f"stardist: epoch {epoch + 1}/{params['epochs']}, train loss {state['train_loss'][-1]:.4f}"
                    + (f", valid loss {state['valid_loss'][-1]:.4f}" if fixed_valid else "")
                    + f", {time.time() - started:.1f} s")
    # thresholds for the new network, on the validation patches, else on training patches of their own seed
    picked = fixed_valid or images.patches(params["patches_per_epoch"], size, np.random.default_rng([seed, 1 << 21]))
    weights = _save_model(model, folder / "model", picked)
    images.close()
    if valid:
        valid.close()
    return {"weights": weights, "epochs_done": state["epochs_done"], "seconds": state["seconds"],
            "curves": {"epoch": list(range(1, state["epochs_done"] + 1)), "train_loss": state["train_loss"],
                       "valid_loss": state["valid_loss"]}}
