"""Cellpose's flows to instance masks on a box anchored to the image: shared by the cellpose
(v3) and cellposesam (v4, Cellpose-SAM) adapters, which differ in their network (a U-Net on 224-px
tiles; SAM's ViT-L on 256-px tiles, each attended globally) and in how they give it channels.

A box's flows are its network outputs resized and tiled on the image's grid (anchored.py); the
masks follow from them with cellpose's own dynamics and checks, the rules cellpose applies to its
whole input made to depend on the image or the object (docs/merge.md): a box gives exactly the
whole image's objects once its halo holds `halo(...)` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

BACKGROUND = (0.0, 0.0, -1e4)  # flows and cell probability where no tile reached (the halo)
BACKGROUND_3D = (0.0, 0.0, 0.0, -1e4)
# masks_to_flows diffuses in double precision up to 4e7 pixels, in single above (cellpose)
_DOUBLE_PIXELS = 4e7


@dataclass(frozen=True)
class Network:
    """A cellpose network as the anchored evaluation runs it: `forward` (tiles (N, C, t, t) ->
    (N, 3, t, t): Y and X flows, cell probability), `convert` (a box (C, *spatial) -> the
    channels the network takes), its tiles (`tile` px every `step`, from `margin` px before the
    image; a short axis gets a tile of its length and margins up to a multiple of `multiple`) and
    the torch `device` of the dynamics. `batch`: tiles per call of `forward`, always that many
    (the last call's padded with zeros), so that a tile's output never depends on its batch."""

    forward: Callable
    convert: Callable
    tile: int
    step: int
    margin: int
    multiple: int
    device: object
    batch: int = 8


def forward(model) -> Callable:
    """The network of a cellpose (3 or 4) model on a batch of tiles (cellpose's own _forward)."""
    from cellpose import core

    return lambda tiles: core._forward(model.net, tiles)[0]


def halo(net: Network, rescale: float, diameter: float) -> int:
    """What a box must hold around its core for its objects to come out as in the whole image:
    one network tile (`tile` px of the resized image, tile / rescale image pixels), so that every
    tile reaching the core is evaluated whole, plus two object diameters, as cellpose's own
    distributed segmentation overlaps its blocks (the flows of a cell and the paths its pixels
    follow stay within that distance), plus the pixels of the two linear resizes."""
    from .anchored import covered

    return covered(rescale, net.tile) + int(np.ceil(2 * diameter))


def segment(net: Network, x: np.ndarray, params, *, shape, origin, rescale: float, niter: int,
            anisotropy: float = 1.0, smooth=None) -> np.ndarray:
    """Instance labels (uint32) of the box `x` (C, *spatial; the image's normalised channels) at
    `origin` of an image of spatial `shape`: 2D, 3D with `params.do_3D` (`anisotropy`: z spacing
    over y; `smooth`: cellpose 4's flow3D_smooth sigmas), or 3D per plane, stitched."""
    if x.ndim == 3:
        flows = _flows_2d(net, x, origin, shape, rescale)
        return _masks_2d(net, flows, params, niter, shape, origin)
    if params.do_3D:
        flows = _flows_3d(net, x, origin, shape, rescale, anisotropy)
        if smooth is not None and any(s > 0 for s in smooth):
            from scipy.ndimage import gaussian_filter

            flows[:3] = gaussian_filter(flows[:3], [0, *smooth])
        return _masks_3d(net, flows, params, niter, shape, origin)
    if not params.stitch_threshold:
        raise ValueError("a 3D substack needs do_3D, or a stitch_threshold above 0 to segment slice by slice "
                         "and link the slices")
    from cellpose import utils

    planes = np.stack([_masks_2d(net, _flows_2d(net, x[:, z], origin[1:], shape[1:], rescale), params, niter,
                                 shape[1:], origin[1:], min_size=-1) for z in range(x.shape[1])])
    return _fill_holes(utils.stitch3D(planes, stitch_threshold=params.stitch_threshold), params.min_size)


def _flows_2d(net: Network, x: np.ndarray, origin, shape, rescale: float) -> np.ndarray:
    """(3, Y, X): Y and X flows and cell probability of a 2D box, anchored to the image."""
    from . import anchored

    return anchored.evaluate(net.forward, net.convert(x), origin, shape, rescale, n_out=3, tile=net.tile,
                             step=net.step, margin=net.margin, multiple=net.multiple, batch=net.batch,
                             fill=BACKGROUND)


def _masks_2d(net: Network, flows: np.ndarray, params, niter: int, shape, origin, min_size=None) -> np.ndarray:
    """Masks of a 2D box from its flows (_masks), cellpose's flow-error check object by object,
    then its hole filling and size floor."""
    masks = _masks(net, flows[:2], flows[2], params, niter, shape, origin)
    if params.flow_threshold and masks.max() > 0:
        masks = _remove_bad_flow_masks(masks, flows[:2], params.flow_threshold, net.device)
    return _fill_holes(masks, params.min_size if min_size is None else min_size)


def _fill_holes(masks: np.ndarray, min_size: int) -> np.ndarray:
    """Cellpose's hole filling and size floor, on labels renumbered 1..n first: cellpose maps
    its pixel counts to labels by rank, so with gaps in the labels (masks the flow check dropped)
    it drops the wrong masks, and which ones depends on the other masks in the box."""
    import fastremap
    from cellpose import utils

    masks, _ = fastremap.renumber(masks, in_place=True)
    return utils.fill_holes_and_remove_small_masks(masks, min_size=min_size).astype(np.uint32)


def _masks(net: Network, dP: np.ndarray, cellprob: np.ndarray, params, niter: int, shape, origin) -> np.ndarray:
    """Cellpose's dynamics: the pixels above the probability threshold follow the flows
    (_follow, in image coordinates), and masks grow from where they gather (cellpose's
    get_masks_torch, on the box's pixels); masks over 40% of the image are dropped."""
    import torch
    from cellpose import dynamics

    fg = cellprob > params.cellprob_threshold
    if not fg.any():
        return np.zeros(cellprob.shape, np.uint32)
    inds = np.nonzero(fg)
    final = _follow(dP * fg / 5.0, inds, niter, origin)
    box = torch.from_numpy(final.astype(np.int32) - np.asarray(origin, np.int32)[:, None]).to(net.device)
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


def _flows_3d(net: Network, x: np.ndarray, origin, shape, rescale: float, anisotropy: float) -> np.ndarray:
    """(4, Z, Y, X): Z, Y, X flows and cell probability of a 3D box, anchored to the image: the
    box resized by (anisotropy x rescale, rescale, rescale) as cellpose resizes a volume, the
    planes of each orientation tiled on the image's grid."""
    from . import anchored

    scale = (anisotropy * rescale, rescale, rescale)
    r, starts, lengths = anchored.resize_box(net.convert(x), origin, shape, scale)
    flows = np.zeros((4, *r.shape[1:]), np.float32)
    seen = np.ones(r.shape[1:], bool)
    for axis, (first, second) in _ORIENTATIONS:
        planes = [(np.take(r, i, axis + 1), [starts[first], starts[second]], [lengths[first], lengths[second]])
                  for i in range(r.shape[axis + 1])]
        for i, (out, covered) in enumerate(anchored.run_tiles(net.forward, planes, n_out=3, tile=net.tile, step=net.step,
                                                              margin=net.margin, multiple=net.multiple,
                                                              batch=net.batch)):
            index = [slice(None)] * 3
            index[axis] = i
            index = tuple(index)
            flows[(first,) + index] += out[0]
            flows[(second,) + index] += out[1]
            flows[(3,) + index] += out[2]
            seen[index] &= covered
    flows[:, ~seen] = np.asarray(BACKGROUND_3D, np.float32)[:, None]
    return anchored.resize_back(flows, starts, lengths, origin, shape, x.shape[1:], BACKGROUND_3D)


def _masks_3d(net: Network, flows: np.ndarray, params, niter: int, shape, origin) -> np.ndarray:
    """Masks of a 3D box (_masks; cellpose has no flow-error check in 3D), holes filled, size floor."""
    return _fill_holes(_masks(net, flows[:3], flows[3], params, niter, shape, origin), params.min_size)


def _big(image_shape, box_shape) -> float:
    """Cellpose drops masks over 40% of its input: 40% of the image, as a fraction of the box."""
    return 0.4 * float(np.prod(image_shape)) / float(np.prod(box_shape))


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
