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
applies to its whole input made to depend on the image or the object instead (docs/merge.md).
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
# overlap), from 8 px before the image (cellpose pads its input by 8 px) to 8 px after it.
TILE, STEP, MARGIN = 224, 192, 8
BACKGROUND = (0.0, 0.0, -1e4)  # flows and cell probability where no tile reached (the halo)


def min_halo(artifact: Path | None, config: dict, params) -> int:
    """What a box must hold around its core for its objects to come out as in the whole image:
    one network tile (224 px of the resized image, 224 x diameter / diam_mean image pixels), so
    that every tile reaching the core is evaluated whole, plus two object diameters, as cellpose's
    own distributed segmentation overlaps its blocks (the flows of a cell and the paths its pixels
    follow stay within that distance), plus the pixels of the two linear resizes."""
    from .anchored import covered

    diam_mean, diam_labels = _diameters(artifact, config)
    diameter = float(params.diameter or diam_labels)
    return covered(diam_mean / diameter, TILE) + int(np.ceil(2 * diameter))


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
    """Instance labels (uint32) of the box at `origin` (None: the whole image); cellpose gives
    no per-object scores."""
    x = _network_input(array, prepared)
    shape = tuple(prepared.get("shape") or x.shape[1:])
    origin = tuple(origin or (0,) * len(shape))
    rescale = float(model.diam_mean) / float(params.diameter or model.diam_labels)
    if prepared["ndim"] == 2:
        return _masks_2d(model, _flows_2d(model, x, origin, shape, rescale), params, rescale, shape, origin), None
    if not params.do_3D and not params.stitch_threshold:
        raise ValueError(f"{NAME}: a 3D substack needs do_3D, or a stitch_threshold above 0 to "
                         "segment slice by slice and link the slices")
    if params.do_3D:
        anisotropy = spacing[0] / spacing[1] if spacing else 1.0
        flows = _flows_3d(model, x, origin, shape, rescale, anisotropy)
        return _masks_3d(model, flows, params, rescale, shape, origin), None
    from cellpose import utils

    planes = np.stack([_masks_2d(model, _flows_2d(model, x[:, z], origin[1:], shape[1:], rescale), params, rescale,
                                 shape[1:], origin[1:], min_size=-1) for z in range(x.shape[1])])
    return _fill_holes(utils.stitch3D(planes, stitch_threshold=params.stitch_threshold), params.min_size), None


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


def _forward(model):
    from cellpose import core

    return lambda tiles: core._forward(model.net, tiles)[0]


def _channels_last(model, x: np.ndarray) -> np.ndarray:
    """(nchan, *spatial) as the network takes it: cellpose's own channel conversion."""
    from cellpose import transforms

    channels = [1, 2] if x.shape[0] == 2 else [0, 0]
    z_axis = 1 if x.ndim == 4 else None
    out = transforms.convert_image(x, channels, channel_axis=0, z_axis=z_axis, do_3D=x.ndim == 4, nchan=model.nchan)
    return np.moveaxis(out, -1, 0)


def _flows_2d(model, x: np.ndarray, origin, shape, rescale: float) -> np.ndarray:
    """(3, Y, X): Y and X flows and cell probability of a 2D box, anchored to the image."""
    from . import anchored

    return anchored.evaluate(_forward(model), _channels_last(model, x), origin, shape, rescale, n_out=3,
                             tile=TILE, step=STEP, margin=MARGIN, fill=BACKGROUND)


def _masks_2d(model, flows: np.ndarray, params, rescale: float, shape, origin, min_size=None) -> np.ndarray:
    """Masks of a 2D box from its flows (_masks), cellpose's flow-error check object by object,
    then its hole filling and size floor."""
    masks = _masks(model, flows[:2], flows[2], params, rescale, shape, origin)
    if params.flow_threshold and masks.max() > 0:
        masks = _remove_bad_flow_masks(masks, flows[:2], params.flow_threshold, model.device)
    return _fill_holes(masks, params.min_size if min_size is None else min_size)


def _fill_holes(masks: np.ndarray, min_size: int) -> np.ndarray:
    """Cellpose's hole filling and size floor, on labels renumbered 1..n first: cellpose maps
    its pixel counts to labels by rank, so with gaps in the labels (masks the flow check dropped)
    it drops the wrong masks, and which ones depends on the other masks in the box."""
    import fastremap
    from cellpose import utils

    masks, _ = fastremap.renumber(masks, in_place=True)
    return utils.fill_holes_and_remove_small_masks(masks, min_size=min_size).astype(np.uint32)


def _masks(model, dP: np.ndarray, cellprob: np.ndarray, params, rescale: float, shape, origin) -> np.ndarray:
    """Cellpose's dynamics: the pixels above the probability threshold follow the flows
    (_follow, in image coordinates), and masks grow from where they gather (cellpose's
    get_masks_torch, on the box's pixels); masks over 40% of the image are dropped."""
    import torch
    from cellpose import dynamics

    fg = cellprob > params.cellprob_threshold
    if not fg.any():
        return np.zeros(cellprob.shape, np.uint32)
    inds = np.nonzero(fg)
    final = _follow(dP * fg / 5.0, inds, int(200 / rescale), origin)
    box = torch.from_numpy(final.astype(np.int32) - np.asarray(origin, np.int32)[:, None]).to(model.device)
    return dynamics.get_masks_torch(box, inds, cellprob.shape, max_size_fraction=_big(shape, cellprob.shape))


def _follow(dP: np.ndarray, inds, niter: int, origin) -> np.ndarray:
    """Cellpose's Euler integration of the pixels `inds` of a box along its flows `dP` (per axis,
    in pixels per step), with multilinear interpolation, clamped to the box, for `niter` steps.
    Positions are kept in image coordinates: float32 rounding of `p + step` depends on the size
    of p, so a box (origin > 0) and the whole image must add the same numbers to get the same
    paths. Returns the final positions (ndim, n) in image coordinates."""
    ndim, shape = dP.shape[0], np.asarray(dP.shape[1:], np.int64)
    lo = np.asarray(origin, np.float32)
    p = np.stack([np.asarray(i, np.float32) for i in inds]) + lo[:, None]
    strides = np.asarray([int(np.prod(shape[k + 1:])) for k in range(ndim)], np.int64)
    _steps()(p, np.ascontiguousarray(dP, np.float32).reshape(ndim, -1), shape, strides, lo, int(niter))
    return p


_STEPS = []


def _steps():
    """The integration loop, compiled once per process with numba (a dependency of cellpose)."""
    if not _STEPS:
        from numba import njit, prange

        @njit(parallel=True, cache=False)
        def steps(p, flat, shape, strides, lo, niter):
            ndim, n = p.shape
            for j in prange(n):
                step = np.empty(ndim, np.float32)
                f0 = np.empty(ndim, np.int64)
                f1 = np.empty(ndim, np.int64)
                frac = np.empty(ndim, np.float32)
                for _ in range(niter):
                    for k in range(ndim):
                        step[k] = 0.0
                    for k in range(ndim):
                        q = p[k, j] - lo[k]  # exact: lo is a whole number no larger than p
                        f = np.int64(q)
                        frac[k] = q - np.float32(f)
                        f0[k] = min(f, shape[k] - 1)
                        f1[k] = min(f0[k] + 1, shape[k] - 1)
                    for corner in range(2 ** ndim):
                        index = 0
                        weight = np.float32(1.0)
                        for k in range(ndim):
                            if (corner >> k) & 1:
                                index += f1[k] * strides[k]
                                weight = weight * frac[k]
                            else:
                                index += f0[k] * strides[k]
                                weight = weight * (np.float32(1.0) - frac[k])
                        for k in range(ndim):
                            step[k] += flat[k, index] * weight
                    for k in range(ndim):
                        p[k, j] = min(max(p[k, j] + step[k], lo[k]), lo[k] + np.float32(shape[k] - 1))

        _STEPS.append(steps)
    return _STEPS[0]


# cellpose's do_3D: the network on the planes of three orientations (planes along Z, Y, X), the
# two flows of each added to the axes they lie along, the cell probabilities summed
_ORIENTATIONS = ((0, (1, 2)), (1, (0, 2)), (2, (0, 1)))


def _flows_3d(model, x: np.ndarray, origin, shape, rescale: float, anisotropy: float) -> np.ndarray:
    """(4, Z, Y, X): Z, Y, X flows and cell probability of a 3D box, anchored to the image: the
    box resized by (anisotropy x rescale, rescale, rescale) as cellpose resizes a volume, the
    planes of each orientation tiled on the image's grid."""
    from . import anchored

    scale = (anisotropy * rescale, rescale, rescale)
    r, starts, lengths = anchored.resize_box(_channels_last(model, x), origin, shape, scale)
    flows = np.zeros((4, *r.shape[1:]), np.float32)
    seen = np.ones(r.shape[1:], bool)
    for axis, (first, second) in _ORIENTATIONS:
        planes = [(np.take(r, i, axis + 1), [starts[first], starts[second]], [lengths[first], lengths[second]])
                  for i in range(r.shape[axis + 1])]
        for i, (out, covered) in enumerate(anchored.run_tiles(_forward(model), planes, n_out=3, tile=TILE,
                                                              step=STEP, margin=MARGIN)):
            index = [slice(None)] * 3
            index[axis] = i
            index = tuple(index)
            flows[(first,) + index] += out[0]
            flows[(second,) + index] += out[1]
            flows[(3,) + index] += out[2]
            seen[index] &= covered
    flows[:, ~seen] = np.asarray(BACKGROUND_3D, np.float32)[:, None]
    return anchored.resize_back(flows, starts, lengths, origin, shape, x.shape[1:], BACKGROUND_3D)


BACKGROUND_3D = (0.0, 0.0, 0.0, -1e4)


def _masks_3d(model, flows: np.ndarray, params, rescale: float, shape, origin) -> np.ndarray:
    """Masks of a 3D box (_masks; cellpose has no flow-error check in 3D), holes filled, size floor."""
    return _fill_holes(_masks(model, flows[:3], flows[3], params, rescale, shape, origin), params.min_size)


def _big(image_shape, box_shape) -> float:
    """Cellpose drops masks over 40% of its input: 40% of the image, as a fraction of the box."""
    return 0.4 * float(np.prod(image_shape)) / float(np.prod(box_shape))


# masks_to_flows diffuses in double precision up to 4e7 pixels, in single above (cellpose)
_DOUBLE_PIXELS = 4e7


def _remove_bad_flow_masks(masks: np.ndarray, dP: np.ndarray, threshold: float, device) -> np.ndarray:
    """Cellpose's flow-error check, object by object: cellpose diffuses every mask of its input
    for twice the largest mask's extent, so a mask's error depends on the other masks in the same
    array; here each mask is diffused for twice its own extent (cellpose's rule for a mask alone).
    Masks of one extent are diffused together, in the bounding box of them all (each alone when
    that box is too large for double precision)."""
    from cellpose import dynamics
    from scipy import ndimage

    boxes = ndimage.find_objects(masks)
    groups: dict[int, list[int]] = {}
    for label, box in enumerate(boxes, start=1):
        if box is not None:
            groups.setdefault(sum(s.stop - s.start for s in box) + 2, []).append(label)
    errors = {}
    for ext, labels in groups.items():
        union = tuple(slice(min(boxes[i - 1][a].start for i in labels), max(boxes[i - 1][a].stop for i in labels))
                      for a in range(masks.ndim))
        if np.prod([s.stop - s.start for s in union]) <= _DOUBLE_PIXELS:
            parts = [(union, labels)]
        else:
            parts = [(boxes[i - 1], [i]) for i in labels]
        for crop, chosen in parts:
            part = np.where(np.isin(masks[crop], chosen), masks[crop], 0)
            mu = dynamics.masks_to_flows_gpu(part, device=device, niter=2 * ext)[0]
            err = np.zeros(len(chosen))
            for k in range(mu.shape[0]):
                err += ndimage.mean((mu[k] - dP[(k,) + crop] / 5.0) ** 2, part, index=chosen)
            errors.update(zip(chosen, err.tolist()))
    bad = [label for label, e in errors.items() if e > threshold]
    if bad:
        masks = masks.copy()
        masks[np.isin(masks, bad)] = 0
    return masks
