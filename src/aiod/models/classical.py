"""Classical nuclei/cell segmentation: smoothing, a global threshold, and a seeded watershed.

Gaussian smoothing; a threshold (Otsu's, or a given number); a Euclidean distance transform,
weighted by the smoothed intensity (dim rims between touching nuclei lower it) and smoothed; its
h-maxima seed a watershed that splits touching objects; then a size filter. The threshold and
the intensity scale are computed once per image at plan time from a bounded sample, so every
substack uses the same values: the result at a voxel then depends only on its neighbourhood, and
substacks with a halo of half the largest object reproduce the whole-image result.
"""

from __future__ import annotations

import numpy as np

from .runtime import sample_values

# scipy and scikit-image are imported where they are used: PLAN reads this module's constants,
# min_halo and align for every image, cache hits included, and those imports cost 0.8 s.

NAME = "classical"
# Peak bytes per voxel of segment(), measured with bench/classical_memory.py: 114.6 (2D) and
# 131.6 (3D) on synthetic nuclei (float32 smoothing, float64 distance, h-maxima's work arrays,
# int32 markers and labels, watershed queues); rounded up.
BYTES_PER_VOXEL = 140.0
# Resident before any substack (interpreter, numpy/scipy/scikit-image, numba with the object
# table's compiled pass): 184 MB measured with bench/task_memory.py (112 MB before numba).
RUNTIME_BYTES = 208 * 2**20
GPU_BYTES_PER_VOXEL = 0.0  # runs on the CPU
# CPU time of segment() per million voxels: the suite's pipeline runs (`make test`, an idle 2-core
# AVX2 EPYC, 2026-12-04: `segment` seconds in each task's log over its boxes' voxels). Only an
# estimate for `--batch auto` (aiod.batches.AUTO_SECONDS); a GPU is far faster.
# 1.2 s/Mvox over 125 boxes of 65k-1.2M voxels (0.9 in bench/throughput.py's 1000 fields).
CPU_SECONDS_PER_MEGAVOXEL = 1.2
SAMPLE_VOXELS = 16_000_000  # at most this many voxels are read to estimate the threshold


def min_halo(artifact, config: dict, params) -> int:
    """Smoothing support plus half the largest object: enough context for a local answer."""
    return int(np.ceil(4 * max(params.sigma, params.distance_sigma))) + params.max_diameter // 2


def align(artifact, config: dict, params) -> int:
    """Filters and watershed work pixel by pixel: any box start gives the same result."""
    return 1


def prepare(image, channel: int | None, params) -> dict:
    """Image-wide threshold and intensity scale (99th percentile of the foreground), from a
    sample of evenly spread blocks (bounded reads)."""
    values = sample_values(image, channel, SAMPLE_VOXELS)
    if params.threshold != "otsu":
        threshold = float(params.threshold)
    elif values.min() == values.max():
        threshold = float(values.max())
    else:
        from skimage.filters import threshold_otsu

        threshold = float(threshold_otsu(values))
    above = values[values > threshold]
    high = float(np.percentile(above, 99)) if above.size else threshold + 1.0
    return {"threshold": threshold, "high": max(high, threshold + 1e-6)}


def load(artifact, config: dict, params) -> None:
    """Nothing to load: the method has no learned weights."""
    return None


def segment(model, array: np.ndarray, params, prepared: dict, spacing: tuple[float, ...] | None = None, origin=None):
    """Instance labels (uint32, 0 = background) of one 2D or 3D single-channel substack; no
    per-object scores."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    spacing = tuple(spacing) if spacing else (1.0,) * array.ndim
    rel = np.asarray(spacing, dtype=float) / min(spacing)  # anisotropy: fewer pixels along coarse axes
    smooth = ndi.gaussian_filter(array.astype(np.float32, copy=False), sigma=tuple(params.sigma / r for r in rel))
    foreground = smooth > prepared["threshold"]
    if not foreground.any():
        return np.zeros(array.shape, dtype=np.uint32), None
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
    return labels, None
