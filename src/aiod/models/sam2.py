"""SAM 2 automatic mask generation ("segment everything"), per slice for 3D with slice linking.

The artifact is a published SAM 2 checkpoint (`{"model": state_dict}`, e.g. sam2.1_hiera_tiny.pt);
its architecture comes from the Hydra config YAML named in the location's `config.model_cfg`
(e.g. `configs/sam2.1/sam2.1_hiera_t.yaml`), resolved by the installed sam2 package inside its
own files (importing sam2 initialises Hydra on the `sam2` module): nothing is read from the
network. `build_sam2(model_cfg, checkpoint, device=...)` builds it.

Grey images become the uint8 RGB the model wants by an image-wide percentile stretch (1st -> 0,
99.8th -> 255, clipped; never a uint8 wrap-around), the same for every substack; 2 or 3 channels
become the R, G (and B) planes, each with its own percentiles.

Masks become instance labels deterministically: the mask with the higher predicted IoU wins each
contested pixel (then higher stability, then the generator's order). SAM 2's own
`min_mask_region_area` post-processing needs its optional CUDA extension or OpenCV, so it is done
here instead: islands and holes smaller than it are removed from each mask, and what is left of a
mask after overlaps is dropped when smaller. Per-object scores are the predicted IoUs.

Windows anchored to the image: SAM 2 resizes its input to 1024 px and spreads its point prompts
over it, so handed a box it would see every pixel at another scale and prompt other points than
in the whole image. Instead the generator runs on windows laid on the image's grid (`windows`):
1024 px (the encoder's own size, so no resize) every 768 px from the image's first pixel to its
last, or the whole axis where it is shorter. A window keeps the masks whose box centre is nearer
its centre than any other window's, and, as SAM's own crops do, drops those within 20 px of its
edges where they are not the image's. The kept masks of all windows are then painted together
(below), in an order that does not depend on the box. A box evaluates the windows that lie wholly
in it; with a halo of a window and two object reaches it gives the whole image's objects.

3D: each z slice is segmented alone; a slice's objects are linked to the previous slice's by
overlap: pairs with IoU >= `link_iou`, best first, one-to-one; a linked object keeps the previous
slice's id, others start a new one. Its score is the mean predicted IoU of its slices.

`config` keys read: model_cfg (required).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import runtime
from .runtime import channel_percentiles, channels_last, local_file

NAME = "sam2"
# Peak host RAM of segment(), CPU, Hiera-tiny, measured with bench/family_memory_big.py (RSS
# sampled every 10 ms, above the level before the call; one batch of 64 points, every mask kept):
# 1820 MB at 1024x1024 (one window), 1874 MB at 1536x1536 (four windows, one at a time). The
# generator's working set is one window's whatever the box (the encoder at 1024x1024, a points
# batch's 3 float32 mask logits per point at window size, their thresholded copies): WINDOW_BYTES,
# held by every task, so counted in RUNTIME_BYTES. Per box voxel: the slope between the two, 43
# B (the RGB box, the kept masks' crops, the labels); 100 covers it. (Before the windows, the
# generator worked on the whole box: 1010 B/voxel.)
WINDOW_BYTES = 1850 * 2**20
BYTES_PER_VOXEL = 100.0
# Resident before any substack, less the artifact (the planner adds its size for the loaded
# weights): 1282 MB for hiera_tiny (torch, hydra, sam2; numba with the object table's compiled
# pass), CPU, measured with bench/task_memory.py; plus a window's working set.
RUNTIME_BYTES = 1408 * 2**20 + WINDOW_BYTES
# Estimate, not measured (no GPU here): the encoder works at 1024x1024 whatever the substack (a
# fixed cost); per voxel, as before the windows, a batch of points_per_batch x 3 float32 mask
# logits: 64 x 3 x 4 bytes (now at window size, so this overestimates boxes beyond a window).
GPU_BYTES_PER_VOXEL = 768.0
# CPU time of segment() per million voxels: the suite's pipeline runs (`make test`, an idle 2-core
# AVX2 EPYC, 2026-12-04: `segment` seconds in each task's log over its boxes' voxels). Only an
# estimate for `--batch auto` (aiod.batches.AUTO_SECONDS); a GPU is far faster.
# 394 s/Mvox: a 128x128 image and a 4x96x96 stack at points_per_side 4; the default 32 prompts
# 64 times as many points, so this underestimates default settings.
CPU_SECONDS_PER_MEGAVOXEL = 400.0
MAX_CHANNELS = 3
# The windows the generator runs on: the encoder's input size, every 768 px (a 256-px overlap:
# objects up to 256 px across lie whole in a window that keeps them).
WINDOW, WINDOW_STEP = 1024, 768
# Beyond the windows, what a core object needs of its box: its own extent and that of the masks
# it competes with for pixels (an object up to 256 px across).
REACH = 128
EDGE = 20  # px: a mask this near a window's edge (not the image's) is left to another window, as SAM's crops do


def min_halo(artifact: Path | None, config: dict, params) -> int:
    """A window (every window that reaches the core lies wholly in the box) and two object
    reaches (the masks that compete for a core pixel's, in windows of their own): 1280 px."""
    return WINDOW + 2 * REACH


def min_halo_z(artifact: Path | None, config: dict, params) -> int:
    """A volume is segmented slice by slice and the slices linked: along Z, REACH."""
    return REACH


def align(artifact: Path | None, config: dict, params) -> int:
    """1: the windows are laid on the image's grid, not the box's, so a box may start on any pixel."""
    return 1


def prepare(image, channel: int | None, params) -> dict:
    return {**channel_percentiles(image, channel, MAX_CHANNELS, NAME), "shape": list(image.spatial_shape)}


def load(artifact: Path | None, config: dict, params):
    runtime.keep_libraries_out_of_home(".")
    path = local_file(artifact, NAME)
    model_cfg = config.get("model_cfg")
    if not model_cfg:
        raise ValueError(f"{NAME}: the location's config has no 'model_cfg' (the sam2 package's Hydra "
                         "config name, e.g. configs/sam2.1/sam2.1_hiera_t.yaml)")
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    device = runtime.torch_device(NAME)
    model = build_sam2(model_cfg, str(path), device=str(device))
    runtime.log(f"{NAME}: loaded {path.name} ({model_cfg}) on {device}")
    return SAM2AutomaticMaskGenerator(
        model, points_per_side=params.points_per_side, points_per_batch=params.points_per_batch,
        pred_iou_thresh=params.pred_iou_thresh, stability_score_thresh=params.stability_score_thresh,
        box_nms_thresh=params.box_nms_thresh, min_mask_region_area=0,  # done in masks_to_labels
        output_mode="uncompressed_rle")


def segment(model, array: np.ndarray, params, prepared: dict, spacing, origin=None) -> tuple[np.ndarray, dict | None]:
    """Instance labels (uint32, 0 = background) and {label: predicted IoU} of a 2D or 3D substack
    at `origin` of the image, the generator run on windows anchored to the image."""
    rgb = to_rgb(channels_last(array, prepared))
    shape = tuple(prepared.get("shape") or rgb.shape[:-1])
    origin = tuple(origin or (0,) * len(shape))
    if rgb.ndim == 3:
        return windowed(model, rgb, origin, shape, params.min_mask_region_area)
    return link_slices((windowed(model, plane, origin[1:], shape[1:], params.min_mask_region_area) for plane in rgb),
                       rgb.shape[:3], params.link_iou)


def segment_library(model, array: np.ndarray, params, prepared: dict, spacing, origin=None):
    """SAM 2's generator on the whole box (resized to 1024 px, its prompts over the box): what this
    adapter ran before its windows were anchored to the image (bench/split_vs_whole.py)."""
    rgb = to_rgb(channels_last(array, prepared))
    if rgb.ndim == 3:
        return masks_to_labels(model.generate(rgb), rgb.shape[:2], params.min_mask_region_area)
    return link_slices((masks_to_labels(model.generate(plane), plane.shape[:2], params.min_mask_region_area)
                        for plane in rgb), rgb.shape[:3], params.link_iou)


def windows(length: int) -> list[int]:
    """Window starts along an axis of the image: every WINDOW_STEP from 0, the last ending at the
    axis's end; one window, the whole axis, where it is no longer than WINDOW."""
    from .anchored import tile_starts

    return tile_starts(length, min(WINDOW, length), WINDOW_STEP, 0)


def windowed(model, rgb: np.ndarray, origin, shape, min_area: int, decode=None) -> tuple[np.ndarray, dict]:
    """The generator on every window of the image that lies wholly in the box `rgb` (Y, X, 3) at
    `origin` (y, x) of an image of `shape`; each window's own masks (nearest its centre, not at
    its inner edges), painted together by masks_to_labels in the image's order. `decode` turns a
    record's "segmentation" into the window's boolean mask (default: sam2's RLE decoder)."""
    if decode is None:
        from sam2.utils.amg import rle_to_mask as decode

    size = [min(WINDOW, n) for n in shape]
    starts = [windows(n) for n in shape]
    centres = [np.array(s) + w / 2 for s, w in zip(starts, size)]
    inside = [[s for s in ss if o <= s and s + w <= o + b] for ss, w, o, b in zip(starts, size, origin, rgb.shape[:2])]
    items = []
    for wy in inside[0]:
        for wx in inside[1]:
            view = rgb[wy - origin[0]:wy - origin[0] + size[0], wx - origin[1]:wx - origin[1] + size[1]]
            for i, record in enumerate(model.generate(np.ascontiguousarray(view))):
                x, y, w, h = (int(round(v)) for v in record["bbox"])
                if not _owns((wy, wx), (wy + y, wx + x, wy + y + h, wx + x + w), starts, centres, size, shape):
                    continue
                items.append({**record, "bbox": [wx - origin[1] + x, wy - origin[0] + y, w, h], "segmentation": None,
                              "mask": np.asarray(decode(record["segmentation"])[y:y + h + 1, x:x + w + 1], bool),
                              "order": (wy, wx, i)})
    return masks_to_labels(items, rgb.shape[:2], min_area)


def _owns(window, box, starts, centres, size, shape) -> bool:
    """Whether the window at `window` (y, x) keeps a mask whose box (y0, x0, y1, x1, image pixels,
    ends inclusive) is `box`: its centre is nearest this window's centre (ties: the first), and
    it lies EDGE px or more from the window's edges that are not the image's (SAM's crop rule)."""
    for axis in (0, 1):
        lo, hi, start = box[axis], box[axis + 2], window[axis]
        if int(np.argmin(np.abs(centres[axis] - (lo + hi) / 2))) != starts[axis].index(start):
            return False
        end = start + size[axis]
        if (start > 0 and lo - start <= EDGE) or (end < shape[axis] and end - hi <= EDGE):
            return False
    return True


def to_rgb(scaled: np.ndarray) -> np.ndarray:
    """(*spatial, C) values scaled to [0, 1] -> uint8 (*spatial, 3): 0 -> 0, 1 -> 255, clipped;
    one channel is repeated as grey, two fill R and G."""
    u8 = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    channels = u8.shape[-1]
    if channels == 3:
        return u8
    if channels == 1:
        return np.repeat(u8, 3, axis=-1)
    return np.concatenate([u8, np.zeros(u8.shape[:-1] + (3 - channels,), np.uint8)], axis=-1)


def masks_to_labels(records: list[dict], shape: tuple[int, int], min_area: int, decode=None) -> tuple[np.ndarray, dict]:
    """Paint the generator's masks into one label image; overlaps go to the higher predicted IoU
    (then stability, then the record's "order", else its index). `decode` turns a record's
    "segmentation" into a boolean mask (default: sam2's RLE decoder); a record with a "mask" (its
    bbox's pixels) needs none."""
    if decode is None:
        from sam2.utils.amg import rle_to_mask as decode

    order = sorted(range(len(records)), key=lambda i: (-records[i]["predicted_iou"], -records[i]["stability_score"],
                                                        records[i].get("order", i)))
    labels = np.zeros(shape, dtype=np.uint32)
    scores = {}
    for i in order:
        x, y, w, h = (int(round(v)) for v in records[i]["bbox"])
        box = (slice(y, y + h + 1), slice(x, x + w + 1))
        record = records[i]  # its mask: the whole image's (decoded) or, as "mask", its box's
        mask = record["mask"] if "mask" in record else np.asarray(decode(record["segmentation"])[box], dtype=bool)
        if min_area > 0:
            mask = drop_small_regions(mask, min_area)
        mask = mask & (labels[box] == 0)
        if np.count_nonzero(mask) < max(min_area, 1):
            continue
        new = len(scores) + 1
        labels[box][mask] = new
        scores[new] = float(records[i]["predicted_iou"])
    return labels, scores


def drop_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Fill holes and remove islands smaller than `min_area` pixels (8-connected islands, as SAM's
    own post-processing)."""
    from scipy import ndimage as ndi  # here, not at the top: PLAN imports this module for every image

    holes, _ = ndi.label(~mask)
    hole_sizes = np.bincount(holes.ravel())
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small = hole_sizes < min_area
    small[0] = False
    small[border] = False  # background reaching the box edge is not a hole
    mask = mask | small[holes]
    islands, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
    keep = np.bincount(islands.ravel()) >= min_area
    keep[0] = False
    return keep[islands]


def link_slices(slices, shape: tuple[int, ...], link_iou: float) -> tuple[np.ndarray, dict]:
    """Give the objects of consecutive 2D label images one 3D id per chain of overlapping objects.

    `slices` yields (labels, {label: score}) per z; a slice's object takes the id of the previous
    slice's object it overlaps most (IoU >= link_iou, best pairs first, one-to-one), or a new id.
    """
    volume = np.zeros(shape, dtype=np.uint32)
    score_sum: dict[int, float] = {}
    score_n: dict[int, int] = {}
    previous = None
    for z, (labels, scores) in enumerate(slices):
        mapping = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
        for local, linked in (match_by_iou(previous, labels, link_iou) if previous is not None else {}).items():
            mapping[local] = linked
        for local in range(1, len(mapping)):
            if mapping[local] == 0 and local in scores:
                mapping[local] = len(score_sum) + 1
                score_sum[int(mapping[local])] = 0.0
            if mapping[local]:
                gid = int(mapping[local])
                score_sum[gid] += scores[local]
                score_n[gid] = score_n.get(gid, 0) + 1
        volume[z] = mapping[labels]
        previous = volume[z]
    return volume, {gid: score_sum[gid] / score_n[gid] for gid in score_sum}


def match_by_iou(previous: np.ndarray, current: np.ndarray, threshold: float) -> dict[int, int]:
    """{current label: previous label} for overlapping pairs with IoU >= threshold, greedily best
    IoU first (ties: lower labels first), each label used once."""
    from ..metrics import pair_counts

    prev_ids, cur_ids, counts = pair_counts(previous.ravel().astype(np.int64), current.ravel().astype(np.int64))
    area_prev = np.bincount(prev_ids, weights=counts)
    area_cur = np.bincount(cur_ids, weights=counts)
    both = (prev_ids > 0) & (cur_ids > 0)
    p, c, inter = prev_ids[both], cur_ids[both], counts[both]
    iou = inter / (area_prev[p] + area_cur[c] - inter)
    links: dict[int, int] = {}
    used: set[int] = set()
    for k in np.lexsort((p, c, -iou)):
        if iou[k] < threshold:
            break
        if int(c[k]) not in links and int(p[k]) not in used:
            links[int(c[k])] = int(p[k])
            used.add(int(p[k]))
    return links
