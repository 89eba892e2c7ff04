"""Image identity for the cache key: a content fingerprint of every byte, memoised by file identity.

Independent of the image's path, name and mtime: a copy of an image elsewhere has the same
fingerprint, so someone else's result for it is found in the shared cache. Mode "full" (the
default) hashes every byte with XXH3-128; mode "sample" (opt-in, for read-only archives) reads a
bounded sample and does not see a change outside it. Either is memoised in a small index (one JSON
file per image, `<root_dir>/aiod_cache/.fingerprints/`) keyed by the image's resolved path and the
(size, mtime_ns, inode, device) of its file, or of every file of a Zarr store: an unchanged image
is not read again, a touched or edited one is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import stat
import time
import uuid
from pathlib import Path

import numpy as np
import xxhash

from .errors import InputError, ParameterError
from .imageio import ZARR_META, _image_format, _tiff_file, _zarr_level0

MODES = ("full", "sample")
INDEX_DIR = ".fingerprints"  # below <root_dir>/aiod_cache
_HEAD = _TAIL = 1 << 20
_WINDOW, _N_WINDOWS, _N_CHUNKS = 64 << 10, 16, 16
_BLOCK = 1 << 20  # bytes hashed at a time in mode "full": small enough to stay in the CPU's cache
_MAP = 64 << 20  # bytes of a large file mapped at a time (a multiple of mmap.ALLOCATIONGRANULARITY)
_SETTLE_NS = 2_000_000_000  # a file changed less than this before hashing is not memoised
_FP_VERSION = "aiod-fingerprint-2"  # bump when what a fingerprint covers, or its hash, changes


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


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ParameterError(f"--fingerprint {mode!r}: expected one of {', '.join(MODES)}")


def fingerprint(path, mode: str = "full", index_dir=None) -> str:
    """Hex digest identifying the image content, independent of its path and mtime.

    mode "full" (default): XXH3-128 of every byte of the file, or of every file of a Zarr store
    (relative name, length and bytes, in sorted order), in 1 MiB blocks.
    mode "sample": format, shape, dtype, metadata axes, file size, plus for one file its first and
    last 1 MiB and 16 evenly spaced 64 KiB windows; for a zarr, the metadata files of the group and
    level-0 array and the raw stored bytes of up to 16 chunks spread evenly over the chunk grid. A
    change outside the sampled bytes is NOT seen: only for archives that are never edited.
    With `index_dir`, the result is memoised there by file identity (see `_Memo`).
    """
    check_mode(mode)
    path = Path(path)
    try:
        files = _store_files(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    memo = _Memo(Path(index_dir), path, mode) if index_dir is not None else None
    if memo is not None and (known := memo.lookup(files)) is not None:
        return known
    started = time.time_ns()
    digest = _hash_content(path, mode, files)
    if memo is not None and _settled(files, started) and _stats(files) == _stats(_store_files(path)):
        memo.store(files, digest)
    return digest


def remembered(path, mode: str, index_dir) -> str | None:
    """The fingerprint `fingerprint` memoised for this image under `index_dir`, when the image is
    unchanged since; None otherwise. Reads file metadata only, never the image's bytes."""
    check_mode(mode)
    path = Path(path)
    try:
        files = _store_files(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    return _Memo(Path(index_dir), path, mode).lookup(files)


def _hash_content(path: Path, mode: str, files: list) -> str:
    """Read the image (every byte of `files` in mode "full") and return its fingerprint."""
    kind = _image_format(path)
    if mode == "sample":
        return _sample_fingerprint(path, kind)
    h = xxhash.xxh3_128()
    h.update(json.dumps({"v": _FP_VERSION, "mode": mode, "format": kind}, sort_keys=True).encode())
    buf = bytearray(_BLOCK)
    if path.is_file():
        _hash_file(h, path, buf)
    else:
        for rel, _, p in files:
            name = rel.encode()
            h.update(b"<%d:%s>" % (len(name), name))
            _hash_file(h, p, buf)
    return h.hexdigest()


def _hash_file(h, path, buf: bytearray) -> None:
    """Feed a file's length and every byte to `h`: a small file read into `buf`, a larger one through
    read-only memory maps of 64 MiB, hashed 1 MiB at a time (no copy into a buffer: it keeps up
    with a read from the page cache, where read-then-hash reached 0.6-0.7x; bench/fingerprint.py)."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        h.update(b"%d;" % size)
        if size <= _BLOCK:
            with memoryview(buf) as view:
                n = 0
                while n < size and (got := f.readinto(view[n:size])):
                    n += got
                h.update(view[:n])
            return
        for offset in range(0, size, _MAP):  # mapped a window at a time: memory stays bounded
            with mmap.mmap(f.fileno(), min(_MAP, size - offset), offset=offset, access=mmap.ACCESS_READ) as m:
                m.madvise(mmap.MADV_SEQUENTIAL)
                with memoryview(m) as view:
                    for start in range(0, len(m), _BLOCK):
                        h.update(view[start:start + _BLOCK])


def _store_files(path: Path) -> list[tuple[str, os.stat_result, str]]:
    """(relative name, stat, path) of the image file, or of every file below a Zarr store, sorted
    by name: stats only, no reads."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return [("", st, str(path))]
    found, todo = [], [(str(path), "")]
    while todo:
        folder, prefix = todo.pop()
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    todo.append((e.path, f"{prefix}{e.name}/"))
                elif e.is_file():
                    found.append((f"{prefix}{e.name}", e.stat(), e.path))
    return sorted(found, key=lambda f: f[0])


def _stats(files) -> list:
    return [[rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev] for rel, st, _ in files]


def _settled(files, started_ns: int) -> bool:
    """Every file last changed well before hashing began: a change made while it was read, within
    the filesystem's timestamp resolution, would otherwise leave its old memo in force."""
    return all(st.st_mtime_ns <= started_ns - _SETTLE_NS for _, st, _ in files)


class _Memo:
    """One image's memoised fingerprint: `<index_dir>/<ab>/<digest of version, mode and resolved
    path>.json`, holding the path, a digest of the files' (name, size, mtime_ns, inode, device)
    and the fingerprint. Written to a unique temporary name and renamed, so concurrent writers
    never leave a torn file; an unreadable or foreign file counts as no memo and is rewritten."""

    def __init__(self, index_dir: Path, path: Path, mode: str):
        self.resolved = os.path.realpath(path)
        name = hashlib.sha256(f"{_FP_VERSION}\0{mode}\0{self.resolved}".encode()).hexdigest()
        self.file = os.path.join(index_dir, name[:2], f"{name}.json")

    def _identity(self, files) -> str:
        return hashlib.sha256(json.dumps(_stats(files)).encode()).hexdigest()

    def lookup(self, files) -> str | None:
        try:
            with open(self.file, "rb") as f:
                entry = json.loads(f.read())
            if entry["path"] != self.resolved or entry["files"] != self._identity(files):
                return None
            return entry["fingerprint"] if isinstance(entry["fingerprint"], str) else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, files, digest: str) -> None:
        text = json.dumps({"path": self.resolved, "files": self._identity(files), "fingerprint": digest})
        folder, name = os.path.split(self.file)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, self.file)
        except OSError:  # an index we cannot write (read-only or full root_dir) only costs a re-read
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _sample_fingerprint(path: Path, kind: str) -> str:
    mode = "sample"
    h = hashlib.sha256()
    if kind == "tiff":
        shape, dtype, axes = _tiff_header(path)
        size = path.stat().st_size
        header = {"format": kind, "shape": shape, "dtype": dtype, "axes": axes, "size": size}
        h.update(json.dumps({"v": _FP_VERSION, "mode": mode, **header}, sort_keys=True).encode())
        with open(path, "rb") as f:
            _hash_file_sample(h, f, size)
        return h.hexdigest()
    array, axes, _ = _zarr_level0(path)
    header = {"format": kind, "shape": list(array.shape), "dtype": str(array.dtype),
              "axes": axes or ""}
    h.update(json.dumps({"v": _FP_VERSION, "mode": mode, **header}, sort_keys=True).encode())
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
