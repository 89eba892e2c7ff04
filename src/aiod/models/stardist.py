"""StarDist (2D and 3D): star-convex nuclei from a model folder, as published or trained.

The artifact is a StarDist model folder (the published zips unpacked): `config.json`,
`thresholds.json` (optional: probability and NMS thresholds found on the model's validation
data) and the weights (`weights_best.h5`, or `*.weights.h5` from Keras 3). The folder may hold
those files or one folder that does. Parameters (manifest): `prob_thresh`, `nms_thresh` (unset:
the model's thresholds.json, else StarDist's 0.5 / 0.4), `norm_low`, `norm_high` (percentiles of
the image-wide normalisation). The location's `config` mapping is not read.

Input: YX / ZYX with as many channels as the model was trained on (channels first from the
step, channels last for StarDist). Normalisation: image-wide percentiles from prepare(), StarDist's
own `normalizer` off. Scores: each object's probability (its centre's object probability).
min_halo: the network's receptive field, and align: its total stride (grid x U-Net pooling),
both computed from config.json alone (no TensorFlow). With box starts on that stride and the
halo covering the receptive field, a split run gives the whole-image objects exactly.
GPU: TensorFlow uses one if its CUDA build is installed (envs/stardist.txt says how); the log
says which.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np

from . import runtime

NAME = "stardist"
# Peak host RAM per substack voxel during segment() (model loaded and warmed up before), measured
# with bench/family_memory.py (RSS sampled every 2 ms) on the briefly trained test models, CPU,
# tensorflow-cpu 2.21: 2D 512^2 / 1024^2 / 2048^2: 360 / 368 / 358; 3D 32x128^2 / 48x192^2:
# 394 / 394 (float32 input, the U-Net's feature maps, prob + 32-48 distances per grid pixel, NMS).
# Rounded up with a margin.
BYTES_PER_VOXEL = 450.0
# Resident before any substack, less the artifact (the planner adds its size for the loaded
# weights): 694 MB for 2D and 3D (TensorFlow), CPU, measured with bench/task_memory.py.
RUNTIME_BYTES = 768 * 2**20
# Not measured (no GPU was lent to this work): an estimate, the host figure without NMS and the
# input copy (the network's feature maps are what lives on the GPU), with TensorFlow's slack.
GPU_BYTES_PER_VOXEL = 400.0
# CPU time of segment() per million voxels: the suite's pipeline runs (`make test`, an idle 2-core
# AVX2 EPYC, 2026-12-04: `segment` seconds in each task's log over its boxes' voxels). Only an
# estimate for `--batch auto` (aiod.batches.AUTO_SECONDS); a GPU is far faster.
# 6.5 s/Mvox: 2D boxes of ~108k voxels and 3D boxes of ~134k, the trained test models.
CPU_SECONDS_PER_MEGAVOXEL = 6.5


def model_folder(artifact: Path) -> Path:
    """The folder that holds config.json: the artifact itself or its only sub-folder that does."""
    artifact = Path(artifact)
    if (artifact / "config.json").is_file():
        return artifact
    found = sorted(p.parent for p in artifact.glob("*/config.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{artifact}: not a StarDist model folder (expected config.json in it or in "
                                f"one sub-folder, found {len(found)})")
    return found[0]


def read_config(artifact: Path) -> dict:
    return json.loads((model_folder(artifact) / "config.json").read_text())


def receptive_field(cfg: dict) -> tuple[int, ...]:
    """Per spatial axis, how far (input pixels, the larger side) an output pixel sees. StarDist's
    own `_axes_tile_overlap` measures this by running the network on an impulse; here it is
    counted from the layers that config.json describes, without TensorFlow: an upper bound of the
    measured one (default Config2D: 52 here, 47 measured; Config3D, grid (1,2,2): (26, 51, 51)
    here, (26, 46, 46) measured; resnet backbone, grid (1,2,2): (17, 30, 30), as measured)."""
    n_dim = int(cfg["n_dim"])
    grid = np.asarray(cfg.get("grid", [1] * n_dim), int)
    left, right, jump = np.zeros(n_dim, int), np.zeros(n_dim, int), np.ones(n_dim, int)

    def conv(kernel, stride=1):  # 'same' padding: k//2 either side; a stride may shift one way
        nonlocal jump
        half, stride = np.broadcast_to(kernel, n_dim) // 2, np.broadcast_to(stride, n_dim)
        left[:] += half * jump
        right[:] += (half + stride - 1) * jump
        jump = jump * stride

    def pool(size):  # output i covers inputs size*i .. size*i + size-1
        nonlocal jump
        right[:] += (np.broadcast_to(size, n_dim) - 1) * jump
        jump = jump * size

    def upsample(size):  # nearest: fine pixel f reads coarse pixel f // size
        nonlocal jump
        jump = jump // size
        left[:] += (np.broadcast_to(size, n_dim) - 1) * jump

    if cfg.get("backbone", "unet") == "unet":
        kernel, per_depth = np.asarray(cfg["unet_kernel_size"]), int(cfg["unet_n_conv_per_depth"])
        unet_pool = np.asarray(cfg.get("unet_pool", [2] * n_dim), int)
        pooled = np.ones(n_dim, int)
        while tuple(pooled) != tuple(grid):  # convolutions + max-pooling down to the grid
            step = 1 + (grid > pooled)
            pooled *= step
            for _ in range(per_depth):
                conv(kernel)
            pool(step)
        for _ in range(int(cfg["unet_n_depth"])):
            for _ in range(per_depth):
                conv(kernel)
            pool(unet_pool)
        for _ in range(per_depth):
            conv(kernel)
        for _ in range(int(cfg["unet_n_depth"])):
            upsample(unet_pool)
            for _ in range(per_depth):
                conv(kernel)
        if cfg.get("net_conv_after_unet", 0):
            conv(kernel)
    elif cfg["backbone"] == "resnet":
        kernel = np.asarray(cfg["resnet_kernel_size"])
        conv(7)
        conv(3)
        pooled = np.ones(n_dim, int)
        for _ in range(int(cfg["resnet_n_blocks"])):
            step = 1 + (grid > pooled)
            pooled *= step
            conv(kernel, step)
            for _ in range(int(cfg["resnet_n_conv_per_block"]) - 1):
                conv(kernel)
        if cfg.get("net_conv_after_resnet", 0):
            conv(kernel)
    else:
        raise ValueError(f"unknown StarDist backbone {cfg['backbone']!r}")
    left += grid - 1  # the grid output is zoomed to pixels (order 0)
    return tuple(int(max(a, b)) for a, b in zip(left, right))


def min_halo(artifact: Path | None, config: dict, params) -> int:
    """The receptive field of the model's network (the largest over the axes, in pixels)."""
    return max(receptive_field(read_config(artifact)))


def align(artifact: Path | None, config: dict, params) -> tuple[int, ...]:
    """Per spatial axis, the network's total stride: its grid times the U-Net's pooling over its
    depth (the grid alone for a ResNet backbone), what StarDist itself pads every input to."""
    cfg = read_config(artifact)
    n_dim = int(cfg["n_dim"])
    grid = np.broadcast_to(np.asarray(cfg.get("grid", [1] * n_dim), int), n_dim)
    if cfg.get("backbone", "unet") == "unet":
        pool = np.broadcast_to(np.asarray(cfg.get("unet_pool", [2] * n_dim), int), n_dim)
        return tuple(int(v) for v in pool ** int(cfg["unet_n_depth"]) * grid)
    return tuple(int(v) for v in grid)


def prepare(image, channel: int | None, params) -> dict:
    """Image-wide normalisation percentiles (joint over channels, as StarDist's H&E model wants)."""
    return runtime.percentile_normalisation(image, channel, params.norm_low, params.norm_high)


def load(artifact: Path | None, config: dict, params):
    """StarDist2D or StarDist3D from the folder, read-only (nothing is written into it)."""
    runtime.keep_libraries_out_of_home(".")
    folder = model_folder(artifact)
    n_dim = int(read_config(folder)["n_dim"])
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:  # take GPU memory as needed, not all of it up front
        tf.config.experimental.set_memory_growth(gpu, True)
    runtime.log(f"{NAME}: running on {'GPU ' + gpus[0].name if gpus else 'the CPU (no GPU visible to TensorFlow)'}")
    from stardist.models import StarDist2D, StarDist3D

    with contextlib.redirect_stdout(sys.stderr):  # StarDist prints what it loads
        model = (StarDist2D if n_dim == 2 else StarDist3D)(None, name=folder.name, basedir=str(folder.parent))
    model.basedir = None  # read-only from here on
    runtime.log(f"{NAME}: {n_dim}D model {folder}, thresholds {dict(model.thresholds._asdict())}")
    return model


def segment(model, array: np.ndarray, params, prepared: dict, spacing=None, origin=None):
    """Instance labels (uint32) and each object's probability."""
    n_dim, n_channel = model.config.n_dim, model.config.n_channel_in
    channels = array.ndim == n_dim + 1
    if array.ndim not in (n_dim, n_dim + 1) or (channels and array.shape[0] != n_channel) or (
            not channels and n_channel != 1):
        raise ValueError(f"{NAME}: the model takes {n_dim}D images with {n_channel} channel(s); "
                         f"got an array of shape {array.shape}")
    x = runtime.normalise(array, prepared)
    axes = "ZYX"[-n_dim:]
    if channels:
        x, axes = np.moveaxis(x, 0, -1), axes + "C"
    thresholds = dict(prob_thresh=params.prob_thresh, nms_thresh=params.nms_thresh)
    with contextlib.redirect_stdout(sys.stderr):
        if n_dim == 2:
            labels, details = model.predict_instances(x, axes=axes, normalizer=None, show_tile_progress=False,
                                                      **thresholds)
        else:  # render the polyhedra here, without StarDist's relabelling: label j+1 = object j
            from stardist.geometry import polyhedron_to_label

            _, details = model.predict_instances(x, axes=axes, normalizer=None, show_tile_progress=False,
                                                 return_labels=False, **thresholds)
            labels = np.zeros(x.shape[:3], np.uint16)
            if len(details["prob"]):
                labels = polyhedron_to_label(details["dist"], details["points"], rays=details["rays"],
                                             prob=details["prob"], shape=x.shape[:3], verbose=False)
    labels = np.asarray(labels).astype(np.uint32, copy=False)
    prob = np.asarray(details["prob"], dtype=float)
    present = np.unique(labels)
    scores = {int(i): float(prob[i - 1]) for i in present[present > 0]}
    return labels, scores
