"""What an image must satisfy before and while it is read, each refusal one line naming the file.

From the header alone (when the image is opened): every axis has pixels, pixels are real
numbers, and a TIFF's strips or tiles all lie inside the file (a cut file is named before any
pixel is read). While a box is read: pixels that do not decode name their chunk, and float
pixels must be finite (NaN and +-inf are refused: docs/usage.md says why).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from .errors import InputError


def dims(shape) -> str:
    return "x".join(str(n) for n in shape)


def reason(exc: Exception) -> str:
    """A library's error as one line (messages must stay on one line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def box_text(by_axis: dict) -> str:
    return ", ".join(f"{a} {s.start}:{s.stop}" for a, s in by_axis.items())


def refuse_non_finite(path: Path, out: np.ndarray, by_axis: dict) -> None:
    """Refuse NaN and +-inf pixels: no model gives a meaningful result for them, and no
    replacement value is right for every image (docs/usage.md)."""
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if bad:
        nan = int(np.count_nonzero(np.isnan(out)))
        raise InputError(f"{path}: {bad} voxel(s) in box {box_text(by_axis)} are not finite ({nan} NaN, "
                         f"{bad - nan} +-inf); replace them with a finite value (e.g. the background "
                         "intensity) before segmenting")


def bad_chunk(array, index: tuple) -> str | None:
    """The key (relative to the image path) of the first stored chunk under `index` that
    cannot be read, or None when each reads alone."""
    grid = array.shards or array.chunks
    ranges = []
    for i, c, n in zip(index, grid, array.shape):
        if isinstance(i, slice):
            ranges.append(range(i.start // c, -(-max(i.start + 1, i.stop) // c)))
        else:
            ranges.append(range(i // c, i // c + 1))
    for coords in itertools.product(*ranges):
        region = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(coords, grid, array.shape))
        try:
            array[region]
        except MemoryError:
            raise
        except Exception:
            key = array.metadata.encode_chunk_key(coords)
            return f"{array.path}/{key}" if array.path else key
    return None


def check_pixels(path: Path, shape, axes: str | None, dtype) -> None:
    """Refuse, from the header alone, images that have no pixels or complex ones."""
    for i, n in enumerate(shape):
        if n == 0:
            name = f"axis {axes[i]}" if axes else f"dimension {i}"
            raise InputError(f"{path}: {name} has length 0 (shape {dims(shape)}); expected at least one "
                             "pixel along every axis")
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise InputError(f"{path}: complex-valued pixels ({dtype.name}) cannot be segmented; save a real-valued "
                         "image (e.g. the magnitude) instead")


def check_tiff_extent(path: Path, tf, series) -> None:
    """Refuse a cut TIFF from its header (`tf` a tifffile.TiffFile, `series` its image series):
    every strip or tile must end inside the file."""
    size = os.path.getsize(path)
    if series.dataoffset is not None and not series.transform:
        end = series.dataoffset + series.nbytes
        if end > size:
            raise InputError(f"{path}: truncated TIFF: the image data ends at byte {end} but the file has "
                             f"{size} bytes")
        return
    pages = list(tf.pages)
    for p, page in enumerate(pages):
        kind = "tile" if page.keyframe.is_tiled else "strip"  # a TiffFrame (pages after the first) has no is_tiled
        counts = page.databytecounts
        for k, (offset, count) in enumerate(zip(page.dataoffsets, counts)):
            if offset + count > size:
                where = f"page {p + 1} of {len(pages)}, " if len(pages) > 1 else ""
                raise InputError(f"{path}: truncated TIFF: {where}{kind} {k + 1} of {len(counts)} ends at byte "
                                 f"{offset + count} but the file has {size} bytes")
