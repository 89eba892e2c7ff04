"""Classical nuclei/cell segmentation: smoothing, a global threshold, and a seeded watershed.

Gaussian smoothing; a threshold (Otsu's, or a given number); a Euclidean distance transform,
weighted by the smoothed intensity (dim rims between touching nuclei lower it) and smoothed; its
h-maxima seed a watershed that splits touching objects; then a size filter. The threshold and
the intensity scale are computed once per image at plan time from a bounded sample, so every
substack uses the same values: the result at a voxel then depends only on its neighbourhood, and
substacks with a halo of half the largest object reproduce the whole-image result.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pydantic
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

NAME = "classical"
# Peak bytes per voxel of segment(), measured with bench/classical_memory.py: 114.6 (2D) and
# 131.6 (3D) on synthetic nuclei (float32 smoothing, float64 distance, h-maxima's work arrays,
# int32 markers and labels, watershed queues); rounded up.
BYTES_PER_VOXEL = 140.0
SAMPLE_VOXELS = 16_000_000  # at most this many voxels are read to estimate the threshold


class Params(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    sigma: float = pydantic.Field(1.0, ge=0, le=20, description="Gaussian smoothing (pixels)")
    threshold: Literal["otsu"] | float = pydantic.Field("otsu", description="'otsu' or a fixed intensity")
    h: float = pydantic.Field(0.5, gt=0, le=100, description="h-maxima height of the weighted distance (pixels): larger merges more")
    intensity_weight: float = pydantic.Field(1.0, ge=0, le=4, description="exponent of the intensity weighting of the distance (0: plain distance)")
    distance_sigma: float = pydantic.Field(1.0, ge=0, le=10, description="smoothing of the distance map (pixels)")
    min_size: int = pydantic.Field(30, ge=0, description="objects smaller than this (voxels) are removed")
    max_diameter: int = pydantic.Field(40, ge=1, le=2000, description="largest expected object (pixels): sets the minimum halo")


PRESETS: dict[str, dict] = {
    "nuclei": {"sigma": 1.0, "threshold": "otsu", "h": 0.5, "min_size": 30, "max_diameter": 40},
    "cells": {"sigma": 2.0, "threshold": "otsu", "h": 1.5, "min_size": 100, "max_diameter": 80},
}


def min_halo(params: Params) -> int:
    """Smoothing support plus half the largest object: enough context for a local answer."""
    return int(np.ceil(4 * max(params.sigma, params.distance_sigma))) + params.max_diameter // 2


def prepare(image, channel: int | None, params: Params) -> dict:
    """Image-wide threshold and intensity scale (99th percentile of the foreground), from a
    sample of evenly spread blocks (bounded reads)."""
    values = np.concatenate([block.ravel() for block in _sample_blocks(image, channel)]).astype(np.float64)
    if params.threshold != "otsu":
        threshold = float(params.threshold)
    elif values.min() == values.max():
        threshold = float(values.max())
    else:
        threshold = float(threshold_otsu(values))
    above = values[values > threshold]
    high = float(np.percentile(above, 99)) if above.size else threshold + 1.0
    return {"threshold": threshold, "high": max(high, threshold + 1e-6)}


def _sample_blocks(image, channel):
    """Up to SAMPLE_VOXELS voxels as whole blocks spread over the image (all of a small image)."""
    shape = image.spatial_shape
    total = int(np.prod(shape))
    if total <= SAMPLE_VOXELS:
        yield image.read(tuple(slice(0, n) for n in shape), channel)
        return
    side = 64 if len(shape) == 3 else 512
    block = tuple(min(side, n) for n in shape)
    n_blocks = max(1, SAMPLE_VOXELS // int(np.prod(block)))
    per_axis = max(1, int(round(n_blocks ** (1 / len(shape)))))
    starts = [np.linspace(0, n - b, num=min(per_axis, n // b or 1)).astype(int) for n, b in zip(shape, block)]
    for corner in np.array(np.meshgrid(*starts, indexing="ij")).reshape(len(shape), -1).T:
        yield image.read(tuple(slice(int(c), int(c) + b) for c, b in zip(corner, block)), channel)


def segment(array: np.ndarray, params: Params, prepared: dict, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Instance labels (uint32, 0 = background) of one 2D or 3D single-channel substack."""
    spacing = tuple(spacing) if spacing else (1.0,) * array.ndim
    rel = np.asarray(spacing, dtype=float) / min(spacing)  # anisotropy: fewer pixels along coarse axes
    smooth = ndi.gaussian_filter(array.astype(np.float32, copy=False), sigma=tuple(params.sigma / r for r in rel))
    foreground = smooth > prepared["threshold"]
    if not foreground.any():
        return np.zeros(array.shape, dtype=np.uint32)
    distance = ndi.distance_transform_edt(foreground, sampling=rel)
    if params.intensity_weight > 0:
        low, high = prepared["threshold"], prepared["high"]
        distance *= np.clip((smooth - low) / (high - low), 0.0, 1.0) ** params.intensity_weight
    del smooth
    if params.distance_sigma > 0:
        distance = ndi.gaussian_filter(distance, sigma=tuple(params.distance_sigma / r for r in rel))
    seeds, _ = ndi.label(h_maxima(distance, params.h))
    labels = watershed(-distance, seeds, mask=foreground).astype(np.uint32, copy=False)
    del distance, seeds
    if params.min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < params.min_size
        small[0] = False
        labels[small[labels]] = 0
    return labels
