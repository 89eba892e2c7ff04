"""One compiled pass over a block of labels: the per-object statistics of the object table
(aiod.measure, docs/measure.md).

The pass walks the block in raster order, one run of equal labels along the last axis at a
time. A run adds its length, its coordinate sums and its first/last voxel to its object's row;
with an image, its voxels' sum, minimum and maximum per channel. The rows are the block's own,
one per id present (`block_rows`; a first pass gives each id its row, through a table indexed
by id - smallest id, or np.unique where the ids span more than `DENSE_SPAN` x the block's
voxels), small enough to stay in the CPU's cache; `fold` adds them to the arrays indexed by id
of the whole table. Every voxel is read three times (smallest/largest id, rows, statistics), in
compiled loops; the numpy version this replaces walked the runs about thirty times
(bench/measure.py).

The arrays: count (n,) int64; csum (n, ndim) float64; lo, hi (n, ndim) int32; isum, imin,
imax (n, channels) float64; coordinates are the image's (`offset`: the block's first voxel).

The pass is compiled by numba on first use, per label and image dtype (about a second each), and
kept in numba's cache on disk, where every later process loads it in milliseconds. The cache
folder (`cache_dir`, numba's `NUMBA_CACHE_DIR`, also for the model libraries' own numba code) is
the environment's `var/aiod/numba` where the environment can be written, so that every task
that runs in it shares one copy; else a folder of this user's in the temporary directory; never
$HOME. Where neither can be written the pass is compiled in memory, once per process.
"""

from __future__ import annotations

import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

DENSE_SPAN = 4  # a block's ids may span this many times its voxels (+ 4096) before np.unique compacts them
FIELDS = ("count", "csum", "lo", "hi", "isum", "imin", "imax")


@lru_cache(maxsize=1)
def _compiled():
    import numpy as np

    if "numba" not in sys.modules:
        folder = cache_dir()
        if folder is not None:
            os.environ.setdefault("NUMBA_CACHE_DIR", str(folder))
    from numba import njit

    cache = _cache_writable()

    @njit(nogil=True, cache=cache)
    def id_range(lab):
        """The smallest and largest id of the block, (-1, -1) without any."""
        low, high = np.int64(-1), np.int64(-1)
        for v in lab.ravel():
            if v != 0:
                w = np.int64(v)
                if low < 0 or w < low:
                    low = w
                high = max(high, w)
        return low, high

    @njit(nogil=True, cache=cache)
    def rows_of(lab, low, high):
        """Each id's row (index: id - low; -1: absent), in order of first appearance, and the ids."""
        slot = np.full(high - low + 1, -1, np.int64)
        n = 0
        nz, ny, nx = lab.shape
        for z in range(nz):
            for y in range(ny):
                previous = lab[z, y, 0]
                for x in range(nx):
                    v = lab[z, y, x]
                    if (x == 0 or v != previous) and v != 0 and slot[np.int64(v) - low] < 0:
                        slot[np.int64(v) - low] = n
                        n += 1
                    previous = v
        ids = np.zeros(n, lab.dtype)
        for k in range(slot.shape[0]):
            if slot[k] >= 0:
                ids[slot[k]] = low + k
        return slot, ids

    @njit(nogil=True, cache=cache)
    def accumulate(lab, chans, offset, low, slot, count, csum, lo, hi, isum, imin, imax):
        """Add the block's runs to their rows (slot[id - low])."""
        nz, ny, nx = lab.shape
        n_ch = chans.shape[0]
        ndim = csum.shape[1]
        first = 3 - ndim  # the image's axes are the last ndim of (z, y, x)
        for z in range(nz):
            for y in range(ny):
                at = (z + offset[0], y + offset[1])  # z, y in the image (2D: z is 0)
                x = 0
                while x < nx:
                    v = lab[z, y, x]
                    end = x + 1
                    while end < nx and lab[z, y, end] == v:
                        end += 1
                    if v != 0:
                        k = slot[np.int64(v) - low]
                        length = end - x
                        x0, x1 = x + offset[2], end - 1 + offset[2]
                        count[k] += length
                        for a in range(first, 2):
                            csum[k, a - first] += length * at[a]
                            lo[k, a - first] = min(lo[k, a - first], at[a])
                            hi[k, a - first] = max(hi[k, a - first], at[a])
                        csum[k, ndim - 1] += (x0 + x1) * length * 0.5  # x0 + (x0 + 1) + ... + x1
                        lo[k, ndim - 1] = min(lo[k, ndim - 1], x0)
                        hi[k, ndim - 1] = max(hi[k, ndim - 1], x1)
                        for c in range(n_ch):
                            total, smallest, largest = 0.0, np.inf, -np.inf
                            for i in range(x, end):
                                w = np.float64(chans[c, z, y, i])
                                total += w
                                smallest = min(smallest, w)
                                largest = max(largest, w)
                            isum[k, c] += total
                            imin[k, c] = min(imin[k, c], smallest)
                            imax[k, c] = max(imax[k, c], largest)
                    x = end

    @njit(nogil=True, cache=cache)
    def fold(count, csum, lo, hi, isum, imin, imax, ids, b_count, b_csum, b_lo, b_hi, b_isum, b_imin, b_imax):
        """Add a block's rows (ids[r]'s statistics in row r) to the arrays indexed by id."""
        for r in range(ids.shape[0]):
            k = np.int64(ids[r])
            count[k] += b_count[r]
            for a in range(csum.shape[1]):
                csum[k, a] += b_csum[r, a]
                lo[k, a] = min(lo[k, a], b_lo[r, a])
                hi[k, a] = max(hi[k, a], b_hi[r, a])
            for c in range(isum.shape[1]):
                isum[k, c] += b_isum[r, c]
                imin[k, c] = min(imin[k, c], b_imin[r, c])
                imax[k, c] = max(imax[k, c], b_imax[r, c])

    return id_range, rows_of, accumulate, fold


def cache_dir() -> Path | None:
    """The environment's var/aiod/numba if it can be written, else $TMPDIR/aiod-numba-<uid> (made
    private to this user), else None."""
    for folder, private in ((Path(sys.prefix) / "var" / "aiod" / "numba", False),
                            (Path(tempfile.gettempdir()) / f"aiod-numba-{os.getuid()}", True)):
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if private and (folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077):
                continue  # another user's folder: its compiled code is not ours to load
            tempfile.TemporaryFile(dir=folder).close()
            return folder
        except OSError:
            continue
    return None


def _cache_writable() -> bool:
    """Whether numba can keep the compiled pass on disk (it refuses to compile with cache=True
    where no cache folder can be written)."""
    from numba.core.caching import FunctionCache

    try:
        FunctionCache(_probe)
    except RuntimeError:
        return False
    return True


def _probe():  # a function of this file, for _cache_writable
    pass


def _blocks3(lab, chans, offset):
    """The block as (z, y, x), the channels as (c, z, y, x), the offset as three int64."""
    import numpy as np

    lab3 = lab.reshape((1,) * (3 - lab.ndim) + lab.shape)
    offset3 = np.zeros(3, np.int64)
    if offset is not None:
        offset3[3 - lab.ndim:] = np.asarray(offset, np.int64)
    return lab3, chans.reshape((-1, *lab3.shape)), offset3


def id_range(lab) -> tuple[int, int]:
    """The block's smallest and largest id ((-1, -1): none); ids below 2**63."""
    low, high = _compiled()[0](lab)
    return int(low), int(high)


def fold(arrays: dict, ids, rows: dict) -> None:
    """Add a block's rows (block_rows) to per-id arrays (each id below len(arrays["count"]))."""
    _compiled()[3](*(arrays[k] for k in FIELDS), ids, *(rows[k] for k in FIELDS))


def block_rows(lab, chans, offset, empty, ordered: bool = True):
    """(ids, arrays with one row per id) of a block, in increasing id order if `ordered`, else in
    order of first appearance; `empty(n)`: arrays of n rows holding each statistic's starting
    value."""
    import numpy as np

    lab3, chans4, offset3 = _blocks3(lab, chans, offset)
    huge = lab3.dtype == np.uint64 and lab3.size and lab3.max() >= 2**63  # beyond the pass's int64
    low, high = (0, 2**63) if huge else id_range(lab3)
    if high < 0:
        return lab3.reshape(-1)[:0], empty(0)
    if high - low + 1 > DENSE_SPAN * lab3.size + 4096:  # ids far apart: made consecutive first
        distinct, compact = np.unique(lab3, return_inverse=True)
        compact = compact.reshape(lab3.shape) + (0 if distinct[0] == 0 else 1)
        table = distinct if distinct[0] == 0 else np.concatenate([np.zeros(1, distinct.dtype), distinct])
        ids, arrays = block_rows(compact, chans4, offset3, empty, ordered)
        return table[ids], arrays
    _, rows_of, accumulate, _ = _compiled()
    slot, ids = rows_of(lab3, low, high)
    arrays = empty(len(ids))
    accumulate(lab3, chans4, offset3, low, slot, *(arrays[k] for k in FIELDS))
    if not ordered:
        return ids, arrays
    order = np.argsort(ids)
    return ids[order], {k: v[order] for k, v in arrays.items()}


def warm() -> None:
    """Compile the pass for the label and image types the pipeline writes and reads most (uint32
    or uint64 labels; no image, uint8, uint16 or float32 intensities) into the cache, so that tasks
    only load it: `aiod env build` calls this once per environment."""
    import numpy as np

    from .measure import _empty

    for labels, image in ((np.uint32, np.uint8), (np.uint32, np.uint16), (np.uint32, np.float32), (np.uint64, np.uint8)):
        lab, chans = np.ones((2, 2), labels), np.zeros((1, 2, 2), image)
        ids, rows = block_rows(lab, chans, (0, 0), lambda n: _empty(2, 1, n))
        fold(_empty(2, 1, 2), ids, rows)
