"""Fine-tuning Cellpose 3 with cellpose's own training step, on patches read from the images.

Each epoch draws `patches_per_epoch` square patches from the training images (an image in
proportion to its area, a position uniformly; seeded by `seed` and the epoch) and reads only those
boxes, image and ground truth (aiod.imageio), so no image is ever held whole. The patches are
normalised as the adapter normalises at inference (its image-wide percentiles, prepare()), their
flows are cellpose's (`dynamics.labels_to_flows`; an object cut by the patch's edge gets the flows
of its cut part), and the step is cellpose 3.1's `train_seg`, piece for piece: its random rotation
and scaling to the object diameter the model was trained at (`random_rotate_and_resize`), its
loss (`_loss_fn_seg`), AdamW with its learning-rate schedule (a 10-epoch warm-up; over 100 epochs,
halvings in the last 50, over 300 in the last 100). `train_seg` itself takes in-memory images
and keeps its optimiser to itself, so neither lazy patches nor a resumable checkpoint fit through
it; its pieces do.

After every epoch a checkpoint (network, optimiser, epochs done, losses, seconds) replaces the
last one atomically; a run that finds one continues after its epoch. Patches and augmentations
depend only on the seed and the epoch, so a resumed run repeats exactly the steps an
uninterrupted run would take. The saved model keeps the diameter the parent was trained at
(`diam_mean`) and the training objects' mean diameter (`diam_labels`), as cellpose saves them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..imageio import open_image
from ..models import cellpose as adapter
from ..models import runtime

STRIDE = 16  # the network halves its input four times
NDIMS = (2,)  # the spatial dimensions of the images it trains on
# The location config the saved weights make unneeded: the file holds the diameters.
CONFIG_IN_WEIGHTS = ("diam_mean",)


def check(params: dict) -> None:
    if params["patch_size"] % STRIDE:
        raise ValueError(f"patch_size {params['patch_size']} is not a multiple of {STRIDE} (the network's stride)")


def _schedule(lr: float, n_epochs: int) -> np.ndarray:
    """cellpose 3.1's train_seg learning rate per epoch."""
    rates = np.append(np.linspace(0, lr, 10), lr * np.ones(max(0, n_epochs - 10)))
    if n_epochs > 300:
        rates = rates[:-100]
        for _ in range(10):
            rates = np.append(rates, rates[-1] / 2 * np.ones(10))
    elif n_epochs > 100:
        rates = rates[:-50]
        for _ in range(10):
            rates = np.append(rates, rates[-1] / 2 * np.ones(5))
    return rates


class _Images:
    """The training images, open (nothing read) with their image-wide normalisation."""

    def __init__(self, items, seg_params):
        self.items = items
        self.images = [open_image(i.image, i.axes) for i in items]
        self.truths = [open_image(i.ground_truth) for i in items]
        for item, image in zip(items, self.images):
            if len(image.spatial_shape) != 2:
                raise ValueError(f"{item.image}: cellpose fine-tuning takes 2D images; this one is "
                                 f"{len(image.spatial_shape)}D")
        self.prepared = [adapter.prepare(im, i.channel, seg_params) for im, i in zip(self.images, items)]
        areas = np.array([float(np.prod(im.spatial_shape)) for im in self.images])
        self.weights = areas / areas.sum()

    def patches(self, n: int, size: int, rng: np.random.Generator, model):
        """n patches: ([network input (nchan, P, P)], [labels (P, P)]), each read as one box."""
        xs, ys = [], []
        for k in rng.choice(len(self.images), size=n, p=self.weights):
            shape = self.images[k].spatial_shape
            box = tuple(slice(s, s + min(size, dim)) for s, dim in
                        ((int(rng.integers(0, max(1, dim - size + 1))), dim) for dim in shape))
            x = adapter._network_input(self.images[k].read(box, self.items[k].channel), self.prepared[k])
            xs.append(adapter._channels_last(model, x))
            ys.append(np.asarray(self.truths[k].read(box)).astype(np.int64))
        return xs, ys

    def close(self):
        for im in self.images + self.truths:
            im.close()


def _flows(labels: list[np.ndarray], device) -> list[np.ndarray]:
    """[cell probability, Y flow, X flow] of each patch's labels (what train_seg trains on)."""
    from cellpose import dynamics

    return [dynamics.labels_to_flows([lbl.copy()], device=device)[0][1:] for lbl in labels]


def _diameters(labels: list[np.ndarray], fallback: float) -> np.ndarray:
    """cellpose's object diameter of each patch, from the objects that the patch's edge does not
    cut (a cut object looks smaller); `fallback` for a patch without any."""
    from cellpose import utils

    out = []
    for lbl in labels:
        cut = np.unique(np.concatenate([lbl[0], lbl[-1], lbl[:, 0], lbl[:, -1]]))
        whole = np.where(np.isin(lbl, cut), 0, lbl)
        out.append(utils.diameters(whole)[0] if whole.max() > 0 else 0.0)
    out = np.asarray(out, np.float32)
    return np.where(out > 0, out, fallback).astype(np.float32)


def _loss(net, xs, ys, diams, params, device, train: bool):
    import torch
    from cellpose import transforms
    from cellpose.train import _loss_fn_seg

    imgs, lbls = transforms.random_rotate_and_resize(xs, Y=_flows(ys, device), rescale=diams / net.diam_mean.item(),
                                                     scale_range=0.5, xy=(params["patch_size"],) * 2)[:2]
    with torch.set_grad_enabled(train):
        return _loss_fn_seg(lbls, net(torch.from_numpy(imgs).to(device))[0], device)


def train(artifact: Path, config: dict, seg_params, train_items, valid_items, params: dict, folder: Path) -> dict:
    runtime.keep_libraries_out_of_home(folder)
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = adapter.load(artifact, config, seg_params)
    net, device = model.net, model.device
    net.diam_mean.data = torch.full_like(net.diam_mean.data, float(model.diam_mean))  # saved with the weights
    optimizer = torch.optim.AdamW(net.parameters(), lr=params["learning_rate"], weight_decay=params["weight_decay"])
    rates = _schedule(params["learning_rate"], params["epochs"])
    images = _Images(train_items, seg_params)
    valid = _Images(valid_items, seg_params) if valid_items else None
    size, seed = params["patch_size"], params["seed"]
    state = {"epochs_done": 0, "train_loss": [], "valid_loss": [], "seconds": 0.0}
    checkpoint = folder / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        net.load_state_dict(saved.pop("net"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        state.update(saved)
        runtime.log(f"cellpose: resuming after epoch {state['epochs_done']} of {params['epochs']} ({checkpoint})")
    # the objects' mean diameter, from epoch 0's patches (the same in a resumed run)
    _, labels0 = images.patches(params["patches_per_epoch"], size, np.random.default_rng([seed, 0]), model)
    net.diam_labels.data = torch.full_like(net.diam_labels.data, float(np.mean(_diameters(labels0, float(model.diam_mean)))))
    fixed_valid = valid.patches(params["patches_per_epoch"], size, np.random.default_rng([seed, 1 << 20]), model) if valid else None
    for epoch in range(state["epochs_done"], params["epochs"]):
        started = time.time()
        rng = np.random.default_rng([seed, epoch])
        xs, ys = images.patches(params["patches_per_epoch"], size, rng, model)
        np.random.seed((seed * 1_000_003 + epoch) % 2**32)  # cellpose's augmentations draw from numpy's global state
        for group in optimizer.param_groups:
            group["lr"] = float(rates[epoch])
        net.train()
        total = 0.0
        for k in range(0, len(xs), params["batch_size"]):
            batch = slice(k, k + params["batch_size"])
            loss = _loss(net, xs[batch], ys[batch], _diameters(ys[batch], net.diam_labels.item()), params, device, True)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xs[batch])
        state["train_loss"].append(total / len(xs))
        if fixed_valid:
            net.eval()
            np.random.seed(42)
            vx, vy = fixed_valid
            state["valid_loss"].append(float(_loss(net, vx, vy, _diameters(vy, net.diam_labels.item()), params, device,
                                                   False).item()))
        state["epochs_done"] = epoch + 1
        state["seconds"] += time.time() - started
        partial = folder / ".checkpoint.pt.partial"
        torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict(), **state}, partial)
        os.replace(partial, checkpoint)
        runtime.log(f"cellpose: epoch {epoch + 1}/{params['epochs']}, train loss {state['train_loss'][-1]:.4f}"
                    + (f", valid loss {state['valid_loss'][-1]:.4f}" if fixed_valid else "")
                    + f", lr {rates[epoch]:.6f}, {time.time() - started:.1f} s")
    images.close()
    if valid:
        valid.close()
    weights = folder / "model"
    net.save_model(str(weights))  # cellpose's own format: the network's state dict
    return {"weights": weights, "epochs_done": state["epochs_done"], "seconds": state["seconds"],
            "curves": {"epoch": list(range(1, state["epochs_done"] + 1)), "train_loss": state["train_loss"],
                       "valid_loss": state["valid_loss"]}}
