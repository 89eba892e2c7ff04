"""Cellpose v3 (cyto3, cyto2, nuclei, or one's own model): flows and cell probability, then masks.

The artifact is one Cellpose 3 model file (the published `cyto3`, `cyto2torch_0`,
`nucleitorch_0`, or a file written by `cellpose.train`), loaded with
`CellposeModel(pretrained_model=<path>)`. Never a model name: for a name, or a path that does not
exist, cellpose 3 downloads its default `cyto3` from cellpose.org; here a missing file is an
error. The size model (`size_*.npy`, the automatic diameter of the `Cellpose` class) is never
used: the diameter is a parameter, or the model's own. Library files go to the task folder
(CELLPOSE_LOCAL_MODELS_PATH, via runtime.keep_libraries_out_of_home), never to ~/.cellpose.

Parameters (manifest): diameter (unset: the model's own), flow_threshold, cellprob_threshold,
min_size, channel_cyto / channel_nuclei (0-based image channels, when the image has several and
none was chosen), do_3D, stitch_threshold (3D per slice when do_3D is false), norm_low /
norm_high (percentiles of the image-wide normalisation). The location's `config` may give
`diam_mean` (the diameter the model was trained at: 30 for cyto3/cyto2, 17 for nuclei), which
cellpose only infers for built-in models from their file names.

Normalisation: image-wide percentiles from prepare(), per channel; cellpose's own off.
No per-object scores (cellpose has none). GPU when the task has one (runtime.torch_device).

A box gives exactly the whole image's objects: the adapter resizes and tiles on the image's grid
(models/anchored.py) and runs cellpose's own network and dynamics, with the two rules cellpose
applies to its whole input made to depend on the image or the object instead (models/flowmasks.py,
shared with cellposesam; docs/merge.md).
`segment_library` is cellpose's own `eval`, kept for the benchmark of split against whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import runtime

NAME = "cellpose"
# Peak host RAM of segment() is a fixed part plus a part per voxel, measured with
# bench/family_memory.py (RSS sampled every 2 ms; CPU, torch 2.15, the briefly trained test model
# at its own diameter): 2D 512^2 / 1024^2 / 2048^2: 615 / 691 / 984 MB = 591 MB + 98 B/voxel (the
# network runs on fixed batches of 224^2 tiles; flows, cell probability and the mask dynamics
# grow with the substack); 3D do_3D 32x128^2 / 48x192^2: 442 / 658 MB = 351 MB + 182 B/voxel.
# One figure per voxel covers both for substacks of 2.5 Mvoxel or more (1600^2, 136^3); smaller
# ones are dominated by the fixed part. A `diameter` below the model's rescales the substack up
# first: memory then grows with (model diameter / diameter)^ndim.
BYTES_PER_VOXEL = 400.0
# Resident before any substack, less the artifact (the planner adds its size for the loaded
# weights): 911 MB (torch, cellpose), CPU, measured with bench/task_memory.py.
RUNTIME_BYTES = 1024 * 2**20
# Not measured (no GPU was lent to this work): an estimate, the per-voxel arrays above (flows,
# probabilities, pixel positions of the dynamics, which cellpose keeps on the GPU) with slack;
# the tiles' feature maps add a fixed ~1-2 GB.
GPU_BYTES_PER_VOXEL = 200.0
# CPU time of segment() per million voxels: the suite's pipeline runs (`make test`, an idle 2-core
# AVX2 EPYC, 2026-12-04: `segment` seconds in each task's log over its boxes' voxels). Only an
# estimate for `--batch auto` (aiod.batches.AUTO_SECONDS); a GPU is far faster.
# 36.8 s/Mvox: four 2D boxes of ~100k voxels, the trained test model at diameter 17.
CPU_SECONDS_PER_MEGAVOXEL = 37.0
DEFAULT_DIAMETER = 30.0  # cellpose's diam_mean for cyto models


# The network's tiles: cellpose's 224 px, every 192 px (cellpose spreads them by at least 10%
# overlap), from 8 px before the image (cellpose pads its input by 8 px) to 8 px after it; a short
# axis gets a tile of its length and margins, up to a multiple of 16 (the U-Net's stride).
TILE, STEP, MARGIN, MULTIPLE = 224, 192, 8, 16


def min_halo(artifact: Path | None, config: dict, params) -> int:
    """One network tile in image pixels (224 x diameter / diam_mean), plus two object diameters,
    plus the resizes' pixels (flowmasks.halo)."""
    from .flowmasks import halo

    diam_mean, diam_labels = _diameters(artifact, config)
    diameter = float(params.diameter or diam_labels)
    return halo(_network(None), diam_mean / diameter, diameter)


def align(artifact: Path | None, config: dict, params) -> int:
    """1: the resize and the network's tiles are laid on the image's grid, not the box's
    (anchored.py), so a box may start on any pixel."""
    return 1


def _diameters(artifact: Path | None, config: dict) -> tuple[float, float]:
    """(diam_mean, diam_labels) as load() sets them: the location's `diam_mean` for both, or the
    values saved in the model file (its diameters are tensors of the state dict)."""
    if config.get("diam_mean"):
        return float(config["diam_mean"]), float(config["diam_mean"])
    if artifact is None or not Path(artifact).is_file():
        return DEFAULT_DIAMETER, DEFAULT_DIAMETER
    import torch

    state = torch.load(str(artifact), map_location="cpu", weights_only=True)
    diam_mean = float(state["diam_mean"]) if "diam_mean" in state else DEFAULT_DIAMETER
    return diam_mean, float(state["diam_labels"]) if "diam_labels" in state else diam_mean


def prepare(image, channel: int | None, params) -> dict:
    """Image-wide percentiles (cellpose's are the 1st and 99th) of each channel the network gets:
    the one channel, or channel_cyto (default 0) and channel_nuclei (if set) of a multi-channel
    image of which no channel was chosen."""
    lo, hi = params.norm_low, params.norm_high
    if channel is not None or image.n_channels == 1:
        chans, percentiles = None, [runtime.percentile_normalisation(image, channel, lo, hi)]
    else:
        chans = [params.channel_cyto or 0] + ([params.channel_nuclei] if params.channel_nuclei is not None else [])
        percentiles = [runtime.percentile_normalisation(image, c, lo, hi) for c in chans]
    return {"ndim": len(image.spatial_shape), "shape": list(image.spatial_shape), "channels": chans,
            "percentiles": percentiles}


def load(artifact: Path | None, config: dict, params):
    """A CellposeModel from the file, on the GPU when the task has one."""
    runtime.keep_libraries_out_of_home(".")
    path = Path(artifact) if artifact is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{NAME}: model file {path} does not exist (cellpose would download cyto3 instead)")
    device = runtime.torch_device(NAME)
    from cellpose import models

    model = models.CellposeModel(pretrained_model=str(path), device=device, gpu=device.type == "cuda")
    if config.get("diam_mean"):
        model.diam_mean = model.diam_labels = float(config["diam_mean"])
    runtime.log(f"{NAME}: model {path.name}, trained at diameter {float(model.diam_mean):.1f}, "
                f"objects of diameter {float(model.diam_labels):.1f}")
    return model


def _network_input(array: np.ndarray, prepared: dict) -> np.ndarray:
    """(C', *spatial) float32, C' = 1 or 2 (cyto, nuclei), normalised with the image's values."""
    if prepared["channels"] is None:
        return runtime.normalise(array, prepared["percentiles"][0])[None]
    return np.stack([runtime.normalise(array[c], p) for c, p in zip(prepared["channels"], prepared["percentiles"])])


def segment(model, array: np.ndarray, params, prepared: dict, spacing=None, origin=None):
    """Instance labels (uint32) of the box at `origin` (None: the whole image), evaluated on the
    image's grid (flowmasks); cellpose gives no per-object scores."""
    from . import flowmasks

    x = _network_input(array, prepared)
    shape = tuple(prepared.get("shape") or x.shape[1:])
    rescale = float(model.diam_mean) / float(params.diameter or model.diam_labels)
    if prepared["ndim"] == 3 and not params.do_3D and not params.stitch_threshold:
        raise ValueError(f"{NAME}: a 3D substack needs do_3D, or a stitch_threshold above 0 to "
                         "segment slice by slice and link the slices")
    anisotropy = spacing[0] / spacing[1] if spacing and prepared["ndim"] == 3 else 1.0
    return flowmasks.segment(_network(model), x, params, shape=shape, origin=tuple(origin or (0,) * len(shape)),
                             rescale=rescale, niter=int(200 / rescale), anisotropy=anisotropy), None


def _network(model):
    """The model's network as flowmasks runs it (None: its tiles only)."""
    from .flowmasks import Network, forward

    if model is None:
        return Network(None, None, TILE, STEP, MARGIN, MULTIPLE, None)
    return Network(forward(model), lambda x: _channels_last(model, x), TILE, STEP, MARGIN, MULTIPLE, model.device)


def segment_library(model, array: np.ndarray, params, prepared: dict, spacing=None, origin=None):
    """Cellpose's own `eval` on the array, which resizes and tiles it from its own first pixel:
    what this adapter ran before its evaluation was anchored to the image (bench/split_vs_whole.py
    shows the difference). `origin` is ignored."""
    x = _network_input(array, prepared)
    kwargs = dict(channels=[1, 2] if x.shape[0] == 2 else [0, 0], channel_axis=0, normalize=False,
                  diameter=params.diameter, flow_threshold=params.flow_threshold,
                  cellprob_threshold=params.cellprob_threshold, min_size=params.min_size)
    if prepared["ndim"] == 3:
        anisotropy = spacing[0] / spacing[1] if spacing else None
        kwargs.update(z_axis=1, do_3D=bool(params.do_3D), anisotropy=anisotropy,
                      stitch_threshold=0.0 if params.do_3D else params.stitch_threshold)
    return np.asarray(model.eval(x, **kwargs)[0]).astype(np.uint32, copy=False), None


def _channels_last(model, x: np.ndarray) -> np.ndarray:
    """(nchan, *spatial) as the network takes it: cellpose's own channel conversion."""
    from cellpose import transforms

    channels = [1, 2] if x.shape[0] == 2 else [0, 0]
    z_axis = 1 if x.ndim == 4 else None
    out = transforms.convert_image(x, channels, channel_axis=0, z_axis=z_axis, do_3D=x.ndim == 4, nchan=model.nchan)
    return np.moveaxis(out, -1, 0)


