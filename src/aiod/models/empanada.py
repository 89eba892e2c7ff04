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

The network is evaluated anchored to the image (`anchor`): the engines' own forward pass, which
runs MitoNet once over the whole box, is replaced by one on 256-px tiles laid on the image's grid
(anchored.py), blended; the engines' own post-processing (centres, grouping, PointRend's
semantic map, the 3D median and tracking) then runs on those maps. MitoNet's ASPP pools its
deepest features over its whole input and PointRend refines the 8,192 most uncertain points of
its input: over a box they make every pixel depend on the box, over a fixed tile only on the
tile, so a box gives the whole image's objects once its halo holds a tile and an object
(docs/merge.md). `segment_library` keeps the engines' own evaluation of the whole box.
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
# bench/family_memory_big.py (RSS sampled every 10 ms, above the level before the call), on the
# anchored tiles: 2D 170 B/voxel at 512x512, 73 at 1024x1024 (slope 41: the blended maps, 5
# float32 per pixel); 3D stack 557 at 8x256x256, 34 at 8x512x512 (one plane at a time; the
# trackers' run-length codes). The engines' own pass over the whole box took up to 676. 700
# covers every case. Not included: the loaded model and libraries (RUNTIME_BYTES + the
# artifact's size) and the 3D engine's forward-matching child process (it holds the planes'
# run-length codes).
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
# The anchored tiles, in the network's pixels (the image's downsampled by `downsampling`): 256 px
# (MitoNet's training crops), every 224 from 16 before the image. Each tile's ASPP pooling and
# PointRend points are its own, so a pixel's maps depend on its tiles alone.
TILE, STEP, MARGIN = 256, 224, 16
# Tiles per forward call, always that many (a tile's output never depends on its batch): 2 on a
# CPU (0.25 s a tile against 0.35 alone, 2 cores), 8 on a GPU.
CPU_BATCH, GPU_BATCH = 2, 8
# Beyond the tiles, what a core object needs of its box: the centre it is grouped to, its
# connected pixels and the size filter. 128 px holds half of a 256-px object (mitochondria and
# nuclei at the models' 15-40 nm training pixel sizes rarely cross a larger span in one substack).
REACH = 128
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
    """One tile in image pixels (every tile that reaches the core lies wholly in the box) plus the
    downsampling's pixels, plus REACH for the objects: 388 px at downsampling 1."""
    from .anchored import covered

    return covered(1 / params.downsampling, TILE) + REACH


def min_halo_z(artifact: Path | None, config: dict, params) -> int:
    """Along a volume's Z in stack mode the network sees one plane at a time: REACH, plus the
    median's half (median_slices planes). Ortho-plane mode tiles the XZ and YZ planes too:
    min_halo."""
    if params.mode == "orthoplane":
        return min_halo(artifact, config, params)
    return REACH + params.median_slices // 2


def align(artifact: Path | None, config: dict, params) -> int:
    """The config's padding_factor (the network's total stride, which the engine pads each image
    to), times the downsampling applied before the network."""
    return int(config.get("padding_factor", 16)) * int(params.downsampling)


def prepare(image, channel: int | None, params) -> dict:
    if channel is None and image.n_channels > 1:
        raise ValueError(f"{NAME}: the image has {image.n_channels} channels; the models take one: "
                         "choose a channel in the samplesheet")
    return {**runtime.percentile_normalisation(image, channel), "shape": list(image.spatial_shape)}


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
    """Instance labels (uint32, 0 = background) of one 2D or 3D single-channel substack at
    `origin` of the image, its network evaluated on tiles anchored to the image."""
    return _segment(model, array, params, prepared, tuple(origin or (0,) * array.ndim)), None


def segment_library(model: Engines, array: np.ndarray, params, prepared: dict, spacing, origin=None):
    """The engines' own evaluation, MitoNet once over the whole box: what this adapter ran before
    its evaluation was anchored to the image (bench/split_vs_whole.py shows the difference)."""
    return _segment(model, array, params, prepared, None), None


def _segment(model: Engines, array: np.ndarray, params, prepared: dict, origin) -> np.ndarray:
    image, shape = to_uint8(array, prepared), tuple(prepared.get("shape") or array.shape)
    if image.ndim == 2:
        engine = model.engine2d()
        anchor(engine.engine, params, origin, shape)
        return instances_2d(engine.infer(image), model.config["thing_list"], params.min_size or 0)
    return volume_3d(model, image, params, origin, shape)


def anchor(render, params, origin, shape) -> None:
    """Make an engine's network pass (`render.infer`) evaluate the network on tiles laid on the
    image's grid (anchored.run_tiles), for planes at `origin` (y, x) of planes of `shape`; None:
    the engine's own pass over the whole plane. The engine hands `infer` the plane downsampled and
    padded to its padding factor; the box starts on a multiple of both (`align`), so the plane's
    pixels are the image's. The maps it returns are the blended tiles': the semantic
    probabilities (PointRend's, at the image's resolution: packed into the tile's pixels while
    blending), the centre heatmap and the offsets (at a quarter, unless fine_boundaries)."""
    import torch
    import torch.nn.functional as F
    from empanada.inference.engines import logits_to_prob

    from .anchored import run_tiles

    render.__dict__.pop("infer", None)
    if origin is None:
        return
    d, factor = int(params.downsampling), int(render.padding_factor)
    starts = [o // d for o in origin]
    lengths = [-(-(-(-n // d)) // factor) * factor for n in shape]  # ceil(ceil(n / d) / factor) * factor
    classes, quarter = int(render.model.num_classes), render.coarse_boundaries
    device = next(render.model.parameters()).device
    batch = GPU_BATCH if device.type == "cuda" else CPU_BATCH

    def infer(image, render_steps: int) -> dict:
        def forward(tiles: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = render.model(torch.from_numpy(tiles).to(device), render_steps, not quarter)
                sem = F.pixel_unshuffle(logits_to_prob(out["sem_logits"]), d)  # (N, classes * d * d, T, T)
                centres = torch.cat([out["ctr_hmp"], out["offsets"]], 1)
                if quarter:
                    centres = centres.repeat_interleave(4, 2).repeat_interleave(4, 3)
                return torch.cat([sem, centres], 1).float().cpu().numpy()

        x = image[0].float().cpu().numpy()
        ((maps, _seen),) = run_tiles(forward, [(x, starts, lengths)], n_out=classes * d * d + 3, tile=TILE,
                                     step=STEP, margin=MARGIN, multiple=factor, batch=batch)
        maps = torch.from_numpy(maps)[None].to(device)
        sem, centres = F.pixel_shuffle(maps[:, :classes * d * d], d), maps[:, classes * d * d:]
        if quarter:
            centres = centres[..., ::4, ::4]
        return {"sem": sem, "ctr_hmp": centres[:, :1].contiguous(), "offsets": centres[:, 1:].contiguous()}

    render.infer = infer


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


def volume_3d(model: Engines, volume: np.ndarray, params, origin, shape) -> np.ndarray:
    """empanada-napari's 3D inference: the xy stack, or the consensus of xy, xz and yz; each
    axis's planes anchored at their origin (None: the engine's own pass)."""
    from empanada_napari.inference import stack_postprocessing, tracker_consensus

    engine = model.engine3d()
    axes = {"xy": (1, 2), "xz": (0, 2), "yz": (0, 1)}  # the image axes of each axis's planes
    trackers = {}
    for axis in ["xy", "xz", "yz"] if params.mode == "orthoplane" else ["xy"]:
        anchor(engine.engine, params, None if origin is None else [origin[a] for a in axes[axis]],
               [shape[a] for a in axes[axis]])
        trackers[axis] = engine.infer_on_axis(volume, axis)[1]
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
