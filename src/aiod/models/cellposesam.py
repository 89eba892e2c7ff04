"""Cellpose-SAM (cellpose 4, model `cpsam`): SAM's ViT-L encoder predicting Cellpose flows.

The artifact is the model file itself (`cpsam` as published on Hugging Face: a torch state dict
of the `CPSAM` network, weights saved in float32), loaded with
`cellpose.models.CellposeModel(pretrained_model=<path>)`. Cellpose 4 downloads `cpsam` from
Hugging Face when it is given a name or a path that does not exist: load() refuses anything but
an existing local file and disables the library's download function, so nothing is fetched.

The model is channel-order invariant and takes up to 3 channels: a single-channel substack (or
the channel the samplesheet chose) is given as one channel, a multichannel one with all its
channels. Cellpose 4 ignores the `channels` argument of cellpose 3, so this family has no such
parameter. Each channel is scaled with image-wide percentiles from prepare(), never per
substack (cellpose's own per-image normalisation is switched off).

A box gives exactly the whole image's objects: the adapter resizes and tiles on the image's grid
and runs cpsam's network and cellpose's dynamics as the cellpose adapter does (models/anchored.py,
models/flowmasks.py; docs/merge.md). `segment_library` is cellpose 4's own `eval`, kept for the
benchmark of split against whole.

Parameters (the manifest's): diameter (null: no rescaling; else the image is rescaled by
30 / diameter, as in cellpose 4), flow_threshold, cellprob_threshold, min_size, niter, do_3D,
stitch_threshold (3D per slice when do_3D is false), flow3D_smooth, precision (auto | bf16 | fp32),
batch_size. `config` keys read: none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import runtime
from .runtime import channel_percentiles, channels_last, local_file

NAME = "cellposesam"
# Peak host RAM of segment() per substack voxel, CPU, bf16, measured with
# bench/family_memory_big.py (RSS sampled every 10 ms, above the level before the call): the
# network's working set is 0.25-0.77 GB whatever the size (up to batch_size 256x256 tiles at a
# time), plus ~340 bytes/voxel (slope between 512x512 and 1024x1024: tiles, flows, dynamics);
# 1024x1024 took 510 MB in all (~500 B/voxel), 4x256x256 per slice 510-770 MB. 1100 covers the
# largest working set spread over a 1024x1024 substack plus the slope. The loaded model and its
# libraries (~2.6 GB of RSS on the CPU, fixed per task) are RUNTIME_BYTES + the artifact's size.
BYTES_PER_VOXEL = 1100.0
# Resident before any substack, less the artifact (the planner adds its size for the loaded
# weights): 1437 MB (torch, cellpose 4), CPU, measured with bench/task_memory.py.
RUNTIME_BYTES = 1536 * 2**20
# Estimate, not measured (no GPU here): the network works on fixed 256x256 tiles (batch_size of
# them at a time, a fixed cost); per voxel, the flows, cell probability and the dynamics' pixel
# positions live on the GPU in float32 (about 10 floats per voxel in 3D), x1.5 for the allocator.
GPU_BYTES_PER_VOXEL = 64.0
# CPU time of segment() per million voxels: the suite's pipeline runs (`make test`, an idle 2-core
# AVX2 EPYC, 2026-12-04: `segment` seconds in each task's log over its boxes' voxels). Only an
# estimate for `--batch auto` (aiod.batches.AUTO_SECONDS); a GPU is far faster.
# 426 s/Mvox: a 128x128 image and a 4x96x96 stack, fp32, random-weight ViT-L (it runs on whole
# 256x256 tiles whatever the image's size: small images cost as much as a tile).
CPU_SECONDS_PER_MEGAVOXEL = 430.0
MAX_CHANNELS = 3
TILE = 256  # cpsam's network tile (cellpose's bsize; fixed for the ViT-L)
TRAINING_DIAMETER = 30.0  # cellpose rescales images by 30 / diameter


# The network's tiles: cpsam's 256 px (its position embeddings are for 256-px tiles: a short
# axis gets a whole tile too, the part outside the image zeros), every 224 px (cellpose 4 spreads
# them by at least 10% overlap), from 8 px before the image (cellpose pads by at least 8 px).
STEP, MARGIN = 224, 8


def min_halo(artifact: Path | None, config: dict, params) -> int:
    """One network tile in image pixels (256 x diameter / 30), plus two object diameters, plus
    the resizes' pixels (flowmasks.halo): 320 px at scale 1. The ViT-L attends globally within
    each tile, so a pixel's output depends on its whole tile: every tile that reaches the core
    must lie wholly in the box, evaluated on the image's grid (docs/merge.md)."""
    from .flowmasks import halo

    diameter = params.diameter or TRAINING_DIAMETER
    return halo(_network(None), TRAINING_DIAMETER / diameter, diameter)


def align(artifact: Path | None, config: dict, params) -> int:
    """1: the resize and the network's tiles are laid on the image's grid, not the box's
    (anchored.py), so a box may start on any pixel."""
    return 1


def prepare(image, channel: int | None, params) -> dict:
    return {**channel_percentiles(image, channel, MAX_CHANNELS, NAME), "shape": list(image.spatial_shape)}


def load(artifact: Path | None, config: dict, params):
    runtime.keep_libraries_out_of_home(".")
    path = local_file(artifact, NAME)
    from cellpose import models

    def no_download(name):
        raise RuntimeError(f"{NAME}: cellpose tried to download '{name}'; models come only from the registry's artifact")

    models.cache_model_path = no_download  # cellpose 4 fetches unknown names from Hugging Face
    device = runtime.torch_device(NAME)
    bf16 = use_bf16(params.precision, device)
    model = models.CellposeModel(pretrained_model=str(path), device=device, use_bfloat16=bf16)
    runtime.log(f"{NAME}: loaded {path.name} ({'bf16' if bf16 else 'fp32'}, precision {params.precision}) on {device}")
    return model


def use_bf16(precision: str, device) -> bool:
    """bf16 is cellpose 4's own default (the published cpsam results use it; the weights are
    stored in float32 and cast at load). `auto` takes it where the hardware computes it: a GPU, or
    a CPU with AVX512-BF16 or AMX (256x256 in 11 s against 31 s in fp32, FACTS.md). A CPU without
    them emulates it: a 128x128 image took 215 s in bf16 on an AVX2 machine, so `auto` is fp32 there."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or runtime.cpu_has_bf16()


def segment(model, array: np.ndarray, params, prepared: dict, spacing, origin=None) -> tuple[np.ndarray, dict | None]:
    """Instance labels (uint32, 0 = background) of the 2D or 3D box at `origin` (None: the whole
    image), evaluated on the image's grid (flowmasks); no per-object scores."""
    from . import flowmasks

    x = np.moveaxis(channels_last(array, prepared), -1, 0)
    ndim = x.ndim - 1
    if ndim == 3 and not params.do_3D and not params.stitch_threshold > 0:
        raise ValueError(f"{NAME}: a 3D substack needs do_3D=true or stitch_threshold > 0 "
                         "(else every slice would be labelled on its own)")
    shape = tuple(prepared.get("shape") or x.shape[1:])
    rescale = TRAINING_DIAMETER / params.diameter if params.diameter else 1.0
    anisotropy = spacing[0] / spacing[2] if spacing and ndim == 3 else 1.0
    smooth = [params.flow3D_smooth] * 3 if params.flow3D_smooth else None
    labels = flowmasks.segment(_network(model, params.batch_size), x, params, shape=shape,
                               origin=tuple(origin or (0,) * len(shape)), rescale=rescale,
                               niter=params.niter or int(200 / rescale), anisotropy=anisotropy, smooth=smooth)
    return labels.reshape(x.shape[1:]), None


def segment_library(model, array: np.ndarray, params, prepared: dict, spacing, origin=None):
    """Cellpose 4's own `eval` on the array, which resizes and tiles it from its own first pixel:
    what this adapter ran before its evaluation was anchored to the image (bench/split_vs_whole.py
    shows the difference). `origin` is ignored."""
    x = channels_last(array, prepared)
    ndim = x.ndim - 1
    kwargs = dict(channel_axis=ndim, normalize={"normalize": False}, batch_size=params.batch_size,
                  diameter=params.diameter or None, flow_threshold=params.flow_threshold,
                  cellprob_threshold=params.cellprob_threshold, min_size=params.min_size, niter=params.niter or None)
    if ndim == 3:
        if params.do_3D:
            anisotropy = spacing[0] / spacing[2] if spacing else None
            kwargs.update(do_3D=True, z_axis=0, anisotropy=anisotropy, flow3D_smooth=params.flow3D_smooth)
        else:
            kwargs.update(z_axis=0, stitch_threshold=params.stitch_threshold)
    masks = model.eval(x, **kwargs)[0]
    return np.asarray(masks).astype(np.uint32, copy=False).reshape(x.shape[:-1]), None


def _network(model, batch_size: int = 8):
    """The model's network as flowmasks runs it (None: its tiles only): cpsam's own forward on
    tiles of every channel given (it takes 1 to 3, in any order). On a CPU one tile at a time
    (a padded batch would compute up to batch_size - 1 empty tiles, at ~30 s each); on a GPU
    batch_size tiles."""
    from .flowmasks import Network, forward

    if model is None:
        return Network(None, None, TILE, STEP, MARGIN, TILE, None)
    batch = batch_size if model.device.type == "cuda" else 1
    return Network(forward(model), lambda x: x, TILE, STEP, MARGIN, TILE, model.device, batch)
