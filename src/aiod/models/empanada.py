"""Empanada models (MitoNet, NucleoNet, DropNet: Panoptic-DeepLab) through empanada-napari's
inference engines, headless.

The artifact is the TorchScript model file (the `.pth` that empanada-napari's model config points
to); the location's `config` holds the rest of that config, as in empanada-napari's bundled
YAMLs (`empanada_napari/configs/*.yaml`):

    norms: {mean: 0.57571, std: 0.12765}   # the training images' normalisation (of 0..1 values)
    padding_factor: 16                     # the engine pads each image to a multiple of this
    thing_list: [1]                        # classes with instances
    labels: [1]
    class_names: {1: mito}

2D substacks go through `Engine2d.infer`; 3D ones through `Engine3d.infer_on_axis` on the xy
planes and `stack_postprocessing` (median over `median_slices` planes, objects tracked from
plane to plane), or with `mode: orthoplane` through all three planes and `tracker_consensus`.
Output: one instance id per object of every thing class (the classes are not kept apart in the
labels), uint32. Engines take the GPU when torch sees one (CUDA_VISIBLE_DEVICES honoured).

Images are given to the engines as uint8 stretched with image-wide percentiles (1st -> 0, 99.8th
-> 255), the same for every substack: empanada-napari divides by the dtype's maximum (uint8 EM
is its use case) and would otherwise scale each float substack by its own maximum.

Parameters (the manifest's): confidence_thr, center_confidence_thr, min_distance_object_centers,
min_size, min_extent, mode (stack | orthoplane), median_slices, pixel_vote_thr, allow_one_view,
downsampling, fine_boundaries. Per-object scores: none.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import runtime
from .runtime import local_file

NAME = "empanada"
# Peak host RAM of segment() per substack voxel, CPU, random-weight MitoNet, measured with
# bench/family_memory_big.py (RSS sampled every 10 ms, above the level before the call): 2D
# 676 B/voxel at 512x512, 405 at 1024x1024 (slope 314); 3D stack 529 at 8x256x256, 90 at
# 8x512x512 (one plane at a time; the result and the trackers' run-length codes). 700 covers
# every case. Not included: the loaded model and libraries (RUNTIME_BYTES + the artifact's
# size) and the 3D engine's forward-matching child process (it holds the planes' run-length codes).
BYTES_PER_VOXEL = 700.0
# Resident before any substack, less the artifact (the planner adds its size for the loaded
# weights): 1041 MB (torch, empanada; the warm-up's one-off kernels included), CPU, measured
# with bench/task_memory.py.
RUNTIME_BYTES = 1152 * 2**20
# Estimate, not measured (no GPU here): ResNet-50 activations of one plane at a time (~1 kB per
# pixel at full resolution in float32 through the decoder), 2x for PointRend and the heads.
GPU_BYTES_PER_VOXEL = 2048.0
# CPU time of segment() per million voxels: the suite's pipeline runs (`make test`, an idle 2-core
# AVX2 EPYC, 2026-12-04: `segment` seconds in each task's log over its boxes' voxels). Only an
# estimate for `--batch auto` (aiod.batches.AUTO_SECONDS); a GPU is far faster.
# 254 s/Mvox: a 128x128 image and a 4x96x96 stack, random-weight MitoNet (a fixed cost per plane
# makes small images dear).
CPU_SECONDS_PER_MEGAVOXEL = 250.0
# ResNet-50's theoretical receptive field is ~480 px and ASPP (rates up to 6 at stride 16) widens
# it, but the effective one is a fraction of that; 128 px of context on each side keeps the
# output of the core stable in practice and holds half of a 256-px object (mitochondria and
# nuclei at the models' 15-40 nm training pixel sizes rarely cross a larger span in one substack).
HALO = 128
MIN_SIZE_3D = 500  # empanada-napari's 3D default (voxels) when min_size is null; 2D: no filter
LABEL_DIVISOR = 10_000_000  # instances per class in the engines' panoptic ids (class * divisor + id)
CONFIG_KEYS = ("norms", "padding_factor", "thing_list", "labels", "class_names")


class Engines:
    """The model config and parameters; each engine is made on first use (one loads the model)."""

    def __init__(self, model_config: dict, params, use_gpu: bool):
        self.config, self.params, self.use_gpu = model_config, params, use_gpu
        self._2d = self._3d = None

    def common(self) -> dict:
        p = self.params
        return dict(inference_scale=p.downsampling, label_divisor=LABEL_DIVISOR, nms_threshold=p.center_confidence_thr,
                    nms_kernel=p.min_distance_object_centers, confidence_thr=p.confidence_thr,
                    fine_boundaries=p.fine_boundaries, use_gpu=self.use_gpu)

    def engine2d(self):
        if self._2d is None:
            from empanada_napari.inference import Engine2d

            self._2d = Engine2d(self.config, **self.common())
        return self._2d

    def engine3d(self):
        if self._3d is None:
            from empanada_napari.inference import Engine3d

            p = self.params
            self._3d = Engine3d(self.config, median_kernel_size=p.median_slices, min_size=min_size_3d(p),
                                min_extent=p.min_extent, **self.common())
        return self._3d


def min_size_3d(params) -> int:
    return MIN_SIZE_3D if params.min_size is None else params.min_size


def min_halo(artifact: Path | None, config: dict, params) -> int:
    return HALO


def align(artifact: Path | None, config: dict, params) -> int:
    """The config's padding_factor (the network's total stride, which the engine pads each image
    to), times the downsampling applied before the network."""
    return int(config.get("padding_factor", 16)) * int(params.downsampling)


def prepare(image, channel: int | None, params) -> dict:
    if channel is None and image.n_channels > 1:
        raise ValueError(f"{NAME}: the image has {image.n_channels} channels; the models take one: "
                         "choose a channel in the samplesheet")
    return runtime.percentile_normalisation(image, channel)


def load(artifact: Path | None, config: dict, params):
    runtime.keep_libraries_out_of_home(".")  # also QT_QPA_PLATFORM=offscreen: napari's Qt, headless
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for news on import
    path = local_file(artifact, NAME)
    if params.downsampling & (params.downsampling - 1) or params.median_slices % 2 == 0:
        raise ValueError(f"{NAME}: downsampling must be a power of 2 and median_slices odd "
                         f"(got {params.downsampling} and {params.median_slices})")
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"{NAME}: the location's config lacks {', '.join(missing)} (the model's "
                         "empanada-napari config: norms, padding_factor, thing_list, labels, class_names)")
    device = runtime.torch_device(NAME)  # the engines pick cuda:0 the same way; this logs it
    model_config = {**{k: config[k] for k in CONFIG_KEYS}, "model": str(path), "model_quantized": None}
    model_config["class_names"] = {int(k): v for k, v in model_config["class_names"].items()}
    engines = Engines(model_config, params, use_gpu=device.type == "cuda")
    runtime.log(f"{NAME}: model {path.name} on {device}")
    return engines


def to_uint8(array: np.ndarray, prepared: dict) -> np.ndarray:
    return np.rint(np.clip(runtime.normalise(array, prepared), 0.0, 1.0) * 255.0).astype(np.uint8)


def segment(model: Engines, array: np.ndarray, params, prepared: dict, spacing, origin=None) -> tuple[np.ndarray, None]:
    """Instance labels (uint32, 0 = background) of one 2D or 3D single-channel substack."""
    image = to_uint8(array, prepared)
    if image.ndim == 2:
        return instances_2d(model.engine2d().infer(image), model.config["thing_list"], params.min_size or 0), None
    return volume_3d(model, image, params), None


def instances_2d(pan_seg: np.ndarray, thing_list, min_size: int) -> np.ndarray:
    """Panoptic ids (class * divisor + instance) -> instance labels 1..n of the thing classes,
    objects smaller than min_size removed."""
    things = np.isin(pan_seg // LABEL_DIVISOR, thing_list) & (pan_seg % LABEL_DIVISOR > 0)
    ids, inverse = np.unique(np.where(things, pan_seg, 0), return_inverse=True)
    labels = inverse.reshape(pan_seg.shape) + (0 if ids[0] == 0 else 1)  # 0 stays background only
    keep = np.bincount(labels.ravel()) >= max(min_size, 1)
    keep[0] = False
    renumber = np.zeros(len(keep), dtype=np.uint32)
    renumber[keep] = np.arange(1, np.count_nonzero(keep) + 1, dtype=np.uint32)
    return renumber[labels]


def volume_3d(model: Engines, volume: np.ndarray, params) -> np.ndarray:
    """empanada-napari's 3D inference: the xy stack, or the consensus of xy, xz and yz."""
    from empanada_napari.inference import stack_postprocessing, tracker_consensus

    engine = model.engine3d()
    axes = ["xy", "xz", "yz"] if params.mode == "orthoplane" else ["xy"]
    trackers = {axis: engine.infer_on_axis(volume, axis)[1] for axis in axes}
    common = dict(label_divisor=LABEL_DIVISOR, min_size=min_size_3d(params), min_extent=params.min_extent, dtype=np.uint32)
    # the napari widgets run these generators in Qt threads (napari's thread_worker); headless, the
    # undecorated generator functions are called directly (thread_worker keeps them as __wrapped__)
    if params.mode == "orthoplane":
        results = tracker_consensus.__wrapped__(trackers, None, model.config, pixel_vote_thr=params.pixel_vote_thr,
                                                allow_one_view=params.allow_one_view, **common)
    else:
        results = stack_postprocessing.__wrapped__(trackers, None, model.config, **common)
    labels = np.zeros(volume.shape, dtype=np.uint32)
    thing_names = {name for cid, name in model.config["class_names"].items() if cid in model.config["thing_list"]}
    for class_volume, name, _instances in results:  # one volume per class, ids 1..n each
        if name not in thing_names:  # a semantic ("stuff") class: no instances
            continue
        offset = labels.max()
        labels[class_volume > 0] = class_volume[class_volume > 0] + offset
    return labels
