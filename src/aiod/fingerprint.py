"""Image identity for the cache key: a content fingerprint that reads a bounded sample.

Independent of the image's path, name and mtime: a copy of an image elsewhere has the same
fingerprint, so someone else's result for it is found in the shared cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .imageio import ZARR_META, _image_format, _tiff_file, _zarr_level0

_HEAD = _TAIL = 1 << 20
_WINDOW, _N_WINDOWS, _N_CHUNKS = 64 << 10, 16, 16
_FP_VERSION = "aiod-fingerprint-1"


def _hash_file_sample(h, f, size: int) -> None:
    if size <= _HEAD + _TAIL + _N_WINDOWS * _WINDOW:
        _hash_stream(h, f)
        return
    spans = [(0, _HEAD), (size - _TAIL, _TAIL)]
    spans += [((i + 1) * (size - _WINDOW) // (_N_WINDOWS + 1), _WINDOW)
              for i in range(_N_WINDOWS)]
    for offset, length in sorted(spans):
        f.seek(offset)
        h.update(f"@{offset}:{length};".encode())
        h.update(f.read(length))


def _hash_stream(h, f) -> None:
    for block in iter(lambda: f.read(8 << 20), b""):
        h.update(block)


def _hash_small_file(h, p: Path, label: str) -> None:
    h.update(f"<{label}>".encode())
    if p.is_file():
        with open(p, "rb") as f:
            _hash_stream(h, f)
    else:
        h.update(b"<missing>")


def _sample_chunk_coords(grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    total = int(np.prod(grid)) if grid else 1
    n = min(_N_CHUNKS, total)
    picks = sorted({round(i * (total - 1) / max(n - 1, 1)) for i in range(n)})
    return [tuple(int(c) for c in np.unravel_index(k, grid)) if grid else () for k in picks]


def fingerprint(path, mode: str = "sample") -> str:
    """Hex sha256 identifying the image content, independent of its path and mtime.

    mode "sample" (default) reads a bounded amount: format, shape, dtype, metadata axes, file
    size, plus for one file its first and last 1 MiB and 16 evenly spaced 64 KiB windows; for a
    zarr, the metadata files of the group and level-0 array and the raw stored bytes of up to 16
    chunks spread evenly over the chunk grid (keys computed from the metadata, no listing; a
    missing chunk hashes as a marker). A change outside the sampled bytes is NOT seen: use mode
    "full", which hashes every byte, when that matters.
    """
    if mode not in ("sample", "full"):
        raise ValueError(f"fingerprint mode must be 'sample' or 'full', not {mode!r}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    kind = _image_format(path)
    h = hashlib.sha256()
    if kind == "tiff":
        shape, dtype, axes = _tiff_header(path)
        size = path.stat().st_size
        header = {"format": kind, "shape": shape, "dtype": dtype, "axes": axes, "size": size}
        h.update(json.dumps({"v": _FP_VERSION, "mode": mode, **header}, sort_keys=True).encode())
        with open(path, "rb") as f:
            if mode == "full":
                _hash_stream(h, f)
            else:
                _hash_file_sample(h, f, size)
        return h.hexdigest()
    array, axes, _ = _zarr_level0(path)
    header = {"format": kind, "shape": list(array.shape), "dtype": str(array.dtype),
              "axes": axes or ""}
    h.update(json.dumps({"v": _FP_VERSION, "mode": mode, **header}, sort_keys=True).encode())
    if mode == "full":
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                _hash_small_file(h, p, p.relative_to(path).as_posix())
        return h.hexdigest()
    array_dir = path / array.path if array.path else path
    for d, label in ((path, "root"), (array_dir, "array")):
        for m in ZARR_META:
            if (d / m).exists():
                _hash_small_file(h, d / m, f"{label}/{m}")
    block = array.shards or array.chunks
    grid = tuple(-(-n // c) for n, c in zip(array.shape, block))
    for coords in _sample_chunk_coords(grid):
        _hash_small_file(h, array_dir / array.metadata.encode_chunk_key(coords),
                         f"chunk {coords}")
    return h.hexdigest()


def _tiff_header(path: Path) -> tuple[list[int], str, str]:
    """(shape, dtype, metadata axes) of a TIFF's first series, reading only its header."""
    with _tiff_file(path) as tf:
        s = tf.series[0]
        return list(s.shape), str(np.dtype(s.dtype)), s.axes
