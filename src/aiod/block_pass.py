"""One compiled pass over a block of labels: the per-object statistics of the object table
(aiod.measure, docs/measure.md).

The pass walks the block in raster order, one run of equal labels along the last axis at a
time. The first run of an id gives it a row of the block's own, through a slot table indexed by
id; every run adds its length, its coordinate sums and its first/last voxel to its row, and with
an image its voxels' sum, minimum and maximum per channel. A block's rows are few (one per
object in it) and packed in two arrays, so that the pass stays in the CPU's cache; `fold` then
adds them to the whole table's arrays indexed by id, or `table` turns them into a sorted table
(ids far apart, from elsewhere). Every voxel is read once, in a compiled loop; the numpy version
this replaces walked the runs about thirty times (bench/measure.py).

Each thread keeps one slot table (int32) across blocks and resets the entries a block used: no
allocation and no pass over the block to find its ids' range. It grows as larger ids appear, up
to SLOTS_PER_VOXEL entries per voxel of the block (+ SLOTS; 17 MB for a 128³ block); a block with
larger ids gets a slot table of its own from its smallest to its largest id (one more compiled
pass finds them), and one whose ids lie further apart than DENSE_SPAN per voxel is made
consecutive with np.unique first.

A block's rows: `ids`; `ints` (n, 7): voxels, first voxel (z, y, x), last voxel (z, y, x);
`floats` (n, 3 + 3 * channels): coordinate sums (z, y, x), then per channel the intensity sum,
minimum and maximum. Coordinates are the image's (`offset`: the block's first voxel); a 2D block
is one plane at z = 0.

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
import threading
from functools import lru_cache
from pathlib import Path

DENSE_SPAN = 4  # a block's ids may span this many times its voxels (+ 4096) before np.unique compacts them
SLOTS = 1 << 16  # entries a thread's slot table starts with (int32; it grows up to
SLOTS_PER_VOXEL = 2  # this many per voxel of the block, + SLOTS; ids beyond: a table per block)
ROWS = 8192  # rows a block starts with (doubled while a row of voxels could overflow them)
FIELDS = ("count", "csum", "lo", "hi", "isum", "imin", "imax")  # the whole table's arrays (aiod.measure._empty)


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
    def id_range(lab, one):
        """The smallest and largest id of the block (ids below 2**63); largest 0: none. `one` is 1
        in the labels' own unsigned type, so that the loop stays in it (and vectorises)."""
        flat = lab.ravel()
        low, high = flat[0] - one, flat[0]
        for i in range(flat.size):
            v = flat[i]
            low = min(low, v - one)  # 0 wraps to the largest value: this is the smallest id - 1
            high = max(high, v)
        return np.int64(low) + 1, np.int64(high)

    @njit(nogil=True, cache=cache)
    def walk(lab, chans, offset, low, slot, ids, ints, floats, n, row):
        """Add the runs of rows `row`... (z * ny + y) to the block's rows while a whole row of
        voxels' new ids fits; returns (rows used, the next row of voxels), or (rows used, -1) at
        the first id that `slot` (indexed by id - low) does not reach."""
        nz, ny, nx = lab.shape
        n_ch = chans.shape[0]
        while row < nz * ny:
            if n + nx > ids.shape[0]:
                return n, row
            z, y = row // ny, row % ny
            zz, yy = z + offset[0], y + offset[1]
            x = 0
            while x < nx:
                v = lab[z, y, x]
                end = x + 1
                while end < nx and lab[z, y, end] == v:
                    end += 1
                if v != 0:
                    x0, x1 = x + offset[2], end - 1 + offset[2]
                    at = np.int64(v) - low
                    if at < 0 or at >= slot.shape[0]:
                        return n, -1
                    k = slot[at]
                    if k < 0:  # the id's first run: its row
                        k = n
                        slot[at] = n
                        n += 1
                        ids[k] = v
                        ints[k, 0], ints[k, 1], ints[k, 2], ints[k, 3] = 0, zz, yy, x0
                        ints[k, 4], ints[k, 5], ints[k, 6] = zz, yy, x1
                        floats[k, :3] = 0.0
                        for c in range(n_ch):
                            floats[k, 3 + 3 * c], floats[k, 4 + 3 * c], floats[k, 5 + 3 * c] = 0.0, np.inf, -np.inf
                    length = end - x
                    ints[k, 0] += length
                    ints[k, 2] = min(ints[k, 2], yy)  # z only grows in raster order: its first is the least
                    ints[k, 3] = min(ints[k, 3], x0)
                    ints[k, 4] = zz
                    ints[k, 5] = max(ints[k, 5], yy)
                    ints[k, 6] = max(ints[k, 6], x1)
                    floats[k, 0] += length * zz
                    floats[k, 1] += length * yy
                    floats[k, 2] += (x0 + x1) * length * 0.5  # x0 + (x0 + 1) + ... + x1
                    for c in range(n_ch):
                        total, smallest, largest = 0.0, np.inf, -np.inf
                        for i in range(x, end):
                            w = np.float64(chans[c, z, y, i])
                            total += w
                            smallest = min(smallest, w)
                            largest = max(largest, w)
                        floats[k, 3 + 3 * c] += total
                        floats[k, 4 + 3 * c] = min(floats[k, 4 + 3 * c], smallest)
                        floats[k, 5 + 3 * c] = max(floats[k, 5 + 3 * c], largest)
                x = end
            row += 1
        return n, row

    @njit(nogil=True, cache=cache)
    def fold(count, csum, lo, hi, isum, imin, imax, ids, ints, floats):
        """Add a block's rows to the arrays indexed by id (their last ndim axes of z, y, x)."""
        ndim = csum.shape[1]
        first = 3 - ndim
        for r in range(ids.shape[0]):
            k = np.int64(ids[r])
            count[k] += ints[r, 0]
            for a in range(ndim):
                csum[k, a] += floats[r, first + a]
                lo[k, a] = min(lo[k, a], ints[r, 1 + first + a])
                hi[k, a] = max(hi[k, a], ints[r, 4 + first + a])
            for c in range(isum.shape[1]):
                isum[k, c] += floats[r, 3 + 3 * c]
                imin[k, c] = min(imin[k, c], floats[r, 4 + 3 * c])
                imax[k, c] = max(imax[k, c], floats[r, 5 + 3 * c])

    return id_range, walk, fold


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


def block_rows(lab, chans, offset):
    """(ids in order of first appearance, ints, floats) of a block: `lab` (non-negative ids),
    `chans` (channels, *lab.shape), `offset` (its first voxel in the image, or None)."""
    import numpy as np

    if not lab.dtype.isnative:  # numba takes native byte order only (a zarr v2 array may be '>u4')
        lab = lab.astype(lab.dtype.newbyteorder("="))
    if chans.dtype == np.float16:  # nor half floats
        chans = chans.astype(np.float32)
    elif not chans.dtype.isnative:
        chans = chans.astype(chans.dtype.newbyteorder("="))
    lab3 = lab.reshape((1,) * (3 - lab.ndim) + lab.shape)
    chans4 = chans.reshape((-1, *lab3.shape))
    offset3 = np.zeros(3, np.int64)
    if offset is not None:
        offset3[3 - lab.ndim:] = np.asarray(offset, np.int64)
    return _rows3(lab3.view(lab3.dtype.str.replace("i", "u")), chans4, offset3)  # ids >= 0: unsigned alike


_local = threading.local()  # each thread's slot table, indexed by id (reset after every block)


def _rows3(lab3, chans4, offset3):
    import numpy as np

    id_range = _compiled()[0]
    huge = lab3.dtype == np.uint64 and lab3.size and lab3.max() >= 2**63  # beyond the pass's int64
    n_floats = 3 + 3 * chans4.shape[0]
    cap = SLOTS_PER_VOXEL * lab3.size + SLOTS  # the most a thread's slot table grows to
    if not huge:
        slot = getattr(_local, "slot", None)
        if slot is None:
            slot = _local.slot = np.full(SLOTS, -1, np.int32)
        rows = _walk(lab3, chans4, offset3, 0, slot, n_floats)
        if rows is not None:  # no id beyond the thread's table: no range to find first
            return rows
    low, high = (0, 2**63) if huge else id_range(lab3, lab3.dtype.type(1))
    if high == 0:
        return lab3.reshape(-1)[:0], np.zeros((0, 7), np.int64), np.zeros((0, n_floats))
    if high < cap:  # the thread's table grows to reach these ids
        _local.slot = np.full(min(cap, max(high + 1, 2 * len(_local.slot))), -1, np.int32)
        return _walk(lab3, chans4, offset3, 0, _local.slot, n_floats)
    if high - low + 1 > DENSE_SPAN * lab3.size + 4096:  # ids far apart: made consecutive first
        distinct, compact = np.unique(lab3, return_inverse=True)
        compact = compact.reshape(lab3.shape).astype(np.uint64) + np.uint64(distinct[0] != 0)
        table = distinct if distinct[0] == 0 else np.concatenate([np.zeros(1, distinct.dtype), distinct])
        ids, ints, floats = _rows3(compact, chans4, offset3)
        return table[ids], ints, floats
    return _walk(lab3, chans4, offset3, low, np.full(high - low + 1, -1, np.int32), n_floats)  # this block's ids only


def _walk(lab3, chans4, offset3, low, slot, n_floats):
    """The block's rows through `slot` (indexed by id - low, all -1; left so), or None if an
    id falls outside it."""
    import numpy as np

    walk = _compiled()[1]
    size = max(ROWS, lab3.shape[2])
    ids, ints, floats = np.empty(size, lab3.dtype), np.empty((size, 7), np.int64), np.empty((size, n_floats))
    n, row = walk(lab3, chans4, offset3, low, slot, ids, ints, floats, 0, 0)
    while 0 <= row < lab3.shape[0] * lab3.shape[1]:  # more objects than rows: twice the rows, go on
        ids, ints, floats = (np.concatenate([a, np.empty_like(a)]) for a in (ids, ints, floats))
        n, row = walk(lab3, chans4, offset3, low, slot, ids, ints, floats, n, row)
    slot[ids[:n].astype(np.int64) - low] = -1
    return None if row < 0 else (ids[:n], ints[:n], floats[:n])


def fold(arrays: dict, ids, ints, floats) -> None:
    """Add a block's rows to the whole table's arrays indexed by id (each id below their length)."""
    _compiled()[2](*(arrays[k] for k in FIELDS), ids, ints, floats)


def table(ids, ints, floats, ndim: int) -> tuple:
    """A block's rows as (sorted ids, {count, csum, lo, hi, isum, imin, imax}) of `ndim` axes."""
    import numpy as np

    order = np.argsort(ids)
    ids, ints, floats = ids[order], ints[order], floats[order]
    axes = slice(3 - ndim, 3)
    return ids, {"count": ints[:, 0].copy(), "csum": floats[:, :3][:, axes].copy(),
                 "lo": ints[:, 1:4][:, axes].astype(np.int32), "hi": ints[:, 4:7][:, axes].astype(np.int32),
                 "isum": floats[:, 3::3].copy(), "imin": floats[:, 4::3].copy(), "imax": floats[:, 5::3].copy()}


def warm() -> None:
    """Compile the pass for the label and image types the pipeline writes and reads most (uint32
    or uint64 labels; no image, uint8, uint16 or float32 intensities) into the cache, so that tasks
    only load it: `aiod env build` calls this once per environment."""
    import numpy as np

    for labels, image in ((np.uint32, np.uint8), (np.uint32, np.uint16), (np.uint32, np.float32), (np.uint64, np.uint8)):
        lab = np.array([[1, 1], [1, 1 << 20]], labels)  # 2**20: beyond the slot table, so id_range too
        rows = block_rows(lab, np.zeros((1, 2, 2), image), None)
        size = (1 << 20) + 1
        arrays = {"count": np.zeros(size, np.int64), "csum": np.zeros((size, 2)), "lo": np.zeros((size, 2), np.int32),
                  "hi": np.zeros((size, 2), np.int32), "isum": np.zeros((size, 1)), "imin": np.zeros((size, 1)),
                  "imax": np.zeros((size, 1))}
        fold(arrays, *rows)  # arrays as aiod.measure._empty makes them
