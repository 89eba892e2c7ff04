"""Per-object statistics of a label image, accumulated block by block (docs/measure.md).

`ObjectStats` is fed blocks of a label image (and, optionally, the same box of the intensity
image) in any order and from any number of threads, and `finish()` gives one row per object:
voxels, physical size, centroid (voxel and physical), bounding box and mean/min/max intensity
per channel. Objects that span blocks are combined exactly: every statistic is a sum, a
minimum or a maximum, so the blocks' partial rows add up to the whole-image ones.

Per block, one compiled pass (aiod.block_pass, numba) walks the runs of equal labels along the
last axis: a run's voxel count, coordinate sums and first/last voxel follow from its start and
length, its intensity sum/min/max from its voxels. The block's objects get rows of their own
(block_pass.block_rows), which a compiled fold adds into the whole table's.

The blocks' rows are combined into per-object arrays indexed by id (grown as larger ids
appear) while ids stay dense, as AIoD's masks are (1..N): 8 * (1 + 2 * ndim + 3 * channels)
bytes per object. Sparse ids (a mask from elsewhere, ids up to 2**64 - 1) switch to sorted
tables merged in pairs of like size (`_push`), as the evaluation's contingency is: the same
result, up to about three times the memory while two tables merge.

Feeding it from a step that already walks the mask (MERGE writes every output chunk once):

    stats = ObjectStats("ZYX", shape=shape, scale=scale, n_channels=image.n_channels,
                        n_objects=n_objects)              # ids 1..n: arrays allocated once
    # for each output chunk, from any worker thread, after writing `block` at `piece`:
    stats.add(block, image.read(piece), offset=tuple(s.start for s in piece))
    write_tables(stats.finish(), out / "objects")         # objects.parquet, objects.csv

Every voxel must be given exactly once (blocks must not overlap); `add` is thread-safe.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .tables import Table, read_table, write_tables  # noqa: F401 (the tables' API, here too)

if TYPE_CHECKING:  # numpy is imported where it is used: cli.py imports this module for every command
    import numpy as np

FORMAT = "aiod-objects/1"
DENSE_SLACK = 1 << 18  # ids may run this far ahead of the objects seen and stay dense
GROWTH = 1.25  # dense arrays grow by this factor (or to the largest id seen)
COORD, COORD_MAX = "int32", 2**31 - 1  # bounding boxes: any axis up to 2**31 - 1 voxels (checked in add)
# statistic -> the numpy ufunc that combines two partial values, and the value of "nothing seen yet"
# (names, not numpy objects: cli.py imports this module for every command, numpy or not)
FIELDS = {"count": ("add", 0), "csum": ("add", 0.0), "lo": ("minimum", COORD_MAX), "hi": ("maximum", -1),
          "isum": ("add", 0.0), "imin": ("minimum", float("inf")), "imax": ("maximum", float("-inf"))}


def _empty(ndim: int, n_channels: int, n: int = 0) -> dict:
    import numpy as np

    shapes = {"count": (), "csum": (ndim,), "lo": (ndim,), "hi": (ndim,),
              "isum": (n_channels,), "imin": (n_channels,), "imax": (n_channels,)}
    types = {"count": np.int64, "lo": COORD, "hi": COORD}
    return {k: np.full((n, *shapes[k]), FIELDS[k][1], dtype=types.get(k, np.float64)) for k in FIELDS}


def _reduce(ids: np.ndarray, cols: dict) -> tuple[np.ndarray, dict]:
    """Rows with equal ids combined (FIELDS), sorted by id."""
    import numpy as np

    if ids.size == 0:
        return ids, cols
    if np.any(ids[1:] < ids[:-1]):
        order = np.argsort(ids, kind="stable")
        ids, cols = ids[order], {k: v[order] for k, v in cols.items()}
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    if len(starts) == len(ids):
        return ids, cols
    return ids[starts], {k: getattr(np, FIELDS[k][0]).reduceat(v, starts, axis=0) for k, v in cols.items()}


def _merge_two(a: tuple, b: tuple) -> tuple[np.ndarray, dict]:
    import numpy as np

    (ia, ca), (ib, cb) = a, b
    return _reduce(np.concatenate([ia, ib]), {k: np.concatenate([ca[k], cb[k]]) for k in ca})


def _channels(labels: np.ndarray, image: np.ndarray | None) -> np.ndarray:
    """The image block as (channels, *labels.shape), contiguous; no image: zero channels."""
    import numpy as np

    if image is None:
        return np.zeros((0, *labels.shape), np.uint8)
    return np.ascontiguousarray(image[None] if image.ndim == labels.ndim else image)


def block_table(labels: np.ndarray, image: np.ndarray | None = None, offset=None):
    """(sorted ids, partial statistics) of one block; `offset`: its first voxel's index in the
    whole image. `image`: same shape, or (channels, *labels.shape). Labels must not be negative."""
    import numpy as np

    from . import block_pass

    lab = np.ascontiguousarray(labels)
    return block_pass.table(*block_pass.block_rows(lab, _channels(lab, image), offset), lab.ndim)


class ObjectStats:
    """Per-object statistics of a label image, fed block by block (module docstring).

    axes: the spatial axes ("YX" or "ZYX"); shape: the whole image's (kept in the table's
    metadata); scale: physical voxel size per axis (µm; None: unknown, physical columns in
    voxel units); n_channels: intensity channels of the image blocks (0: labels only);
    n_objects: ids are 1..n_objects (allocates once; optional); source: named in errors."""

    def __init__(self, axes: str = "ZYX", *, shape=None, scale=None, n_channels: int = 0,
                 n_objects: int | None = None, source: str = "labels"):
        import numpy as np

        self.axes = axes.upper()
        self.ndim = len(self.axes)
        self.shape = None if shape is None else [int(n) for n in shape]
        self.scale = None if scale is None else [float(s) for s in scale]
        if self.scale is not None and len(self.scale) != self.ndim:
            raise InputError(f"{source}: scale {self.scale} needs one value per axis of {self.axes}")
        self.n_channels = int(n_channels)
        self.source = source
        self.meta: dict = {}  # extra metadata for the table (paths of the mask and image)
        self._lock = threading.Lock()
        self._dense: dict | None = _empty(self.ndim, self.n_channels, (n_objects or 0) + 1)
        self._parts: list[tuple[np.ndarray, dict]] = []  # sorted tables (sparse mode)
        self._id_dtype = np.dtype(np.int64)

    def add(self, labels: np.ndarray, image: np.ndarray | None = None, offset=None) -> None:
        """Add one block: `labels` (the block), `image` (the same box: shape of `labels`, or
        (n_channels, *shape) as ImageSource.read gives), `offset` (index of its first voxel)."""
        import numpy as np

        labels = np.asarray(labels)
        if labels.ndim != self.ndim:
            raise InputError(f"{self.source}: a block of {labels.ndim} dimensions; the labels have axes {self.axes}")
        if labels.dtype.kind not in "ui":
            raise InputError(f"{self.source}: labels are {labels.dtype}; expected an integer label image")
        if image is not None:
            image = np.asarray(image)
            want = (labels.shape if self.n_channels == 1 and image.ndim == labels.ndim
                    else (self.n_channels, *labels.shape))
            if image.shape != want:
                raise InputError(f"{self.source}: image block of shape {image.shape} for labels of shape "
                                 f"{labels.shape} ({self.n_channels} channel(s)); expected {want}")
        elif self.n_channels:
            raise InputError(f"{self.source}: no image block, but the table has {self.n_channels} channel(s)")
        if offset is not None and max(int(o) + n for o, n in zip(offset, labels.shape)) > COORD_MAX:
            raise InputError(f"{self.source}: a block at {tuple(offset)} lies beyond 2**31 - 1 voxels along an axis")
        if labels.dtype.kind == "i" and labels.size and (lowest := int(labels.min())) < 0:
            where = "" if offset is None else f" in the block at {tuple(int(o) for o in offset)}"
            raise InputError(f"{self.source}: negative label {lowest}{where}; labels must be >= 0")
        from . import block_pass

        lab = np.ascontiguousarray(labels)
        chans = _channels(lab, image)
        rows = block_pass.block_rows(lab, chans, offset)  # ids, ints, floats
        with self._lock:
            if labels.dtype == np.uint64:
                self._id_dtype = np.dtype(np.uint64)
            self._combine(*rows)

    def _combine(self, ids: np.ndarray, ints: np.ndarray, floats: np.ndarray) -> None:
        """Add a block's rows (block_pass.block_rows): into the arrays indexed by id while ids
        stay dense, else as a sorted table."""
        import numpy as np

        from . import block_pass

        if self._dense is not None and ids.size:
            capacity = len(self._dense["count"])
            top = int(ids.max())
            if top >= capacity:
                if not self._dense_enough(top, int(np.count_nonzero(self._dense["count"])) + len(ids)):
                    self._to_sparse()
                else:
                    self._grow(max(top + 1, int(capacity * GROWTH)))
        if self._dense is not None:
            block_pass.fold(self._dense, ids, ints, floats)
            return
        self._push(*block_pass.table(ids, ints, floats, self.ndim))
        objects = max(len(t) for t, _ in self._parts)  # at least this many objects
        top = max(int(t[-1]) for t, _ in self._parts if t.size) if objects else 0
        if self._dense_enough(top, objects):  # the ids filled in as the scan went on: dense again
            self._to_dense(top)

    def _grow(self, capacity: int) -> None:
        for name, arr in self._dense.items():  # realloc: large arrays are remapped, not copied
            seen = len(arr)
            arr.resize((capacity, *arr.shape[1:]), refcheck=False)  # only self._dense holds them
            arr[seen:] = FIELDS[name][1]

    @staticmethod
    def _dense_enough(top: int, objects: int) -> bool:
        """Whether arrays indexed by id up to `top` are worth it for this many objects."""
        return top <= 2 * objects + DENSE_SLACK

    def _to_dense(self, top: int) -> None:
        import numpy as np

        ids, cols = self._merged()
        self._dense = _empty(self.ndim, self.n_channels, top + 1)
        index = ids.astype(np.intp)
        for name, value in cols.items():
            self._dense[name][index] = value

    def _to_sparse(self) -> None:
        ids, cols = self._compact()
        self._dense = None
        self._push(ids, cols)

    def _compact(self) -> tuple[np.ndarray, dict]:
        """The dense arrays as a table of the ids seen (views when every id 1..n was)."""
        import numpy as np

        dense = self._dense
        count = dense["count"]
        if count.size > 1 and count[0] == 0 and np.all(count[1:] > 0):
            return np.arange(1, count.size, dtype=np.int64), {k: v[1:] for k, v in dense.items()}
        ids = np.flatnonzero(count)
        cols = {}
        for name in list(dense):  # one column at a time: the dense copy goes as the compact comes
            cols[name] = dense[name][ids]
            dense[name] = dense[name][:0]
        return ids.astype(np.int64), cols

    def _push(self, ids: np.ndarray, cols: dict) -> None:
        """Add a sorted table; merge the last two while the older is at most twice the newer:
        O(log) tables, each row merged O(log) times."""
        self._parts.append((ids, cols))
        while len(self._parts) > 1 and len(self._parts[-2][0]) <= 2 * len(self._parts[-1][0]):
            self._parts.append(_merge_two(self._parts.pop(-2), self._parts.pop()))

    def _merged(self) -> tuple[np.ndarray, dict]:
        """The sorted tables merged into one (and taken out)."""
        import numpy as np

        parts, self._parts = self._parts, []
        while len(parts) > 1:
            parts.append(_merge_two(parts.pop(-2), parts.pop()))
        return parts[0] if parts else (np.zeros(0, np.int64), _empty(self.ndim, self.n_channels))

    def finish(self) -> Table:
        """The object table: one row per object, by id (docs/measure.md lists the columns).
        The accumulated arrays are reused for the columns; the object is spent after this."""
        with self._lock:
            ids, cols = self._compact() if self._dense is not None else self._merged()
            self._dense, self._parts = None, []
        return _table(ids.astype(self._id_dtype), cols, self)


def _table(ids, cols, stats: ObjectStats) -> Table:
    import numpy as np

    axes = [a.lower() for a in stats.axes]
    scale = np.asarray(stats.scale if stats.scale is not None else [1.0] * stats.ndim)
    count = cols["count"]
    out = {"id": ids, "voxels": count, size_column(stats.ndim): count * float(np.prod(scale))}
    centroid = cols["csum"]
    centroid /= np.maximum(count, 1)[:, None]
    out.update({f"centroid_{a}": centroid[:, k] for k, a in enumerate(axes)})
    out.update({f"centroid_{a}_um": centroid[:, k] * scale[k] for k, a in enumerate(axes)})
    cols["hi"] += 1  # a slice stop, as skimage's bbox
    for k, a in enumerate(axes):
        out[f"bbox_min_{a}"], out[f"bbox_max_{a}"] = cols["lo"][:, k], cols["hi"][:, k]
    mean = cols["isum"]
    mean /= np.maximum(count, 1)[:, None]
    for c in range(stats.n_channels):
        out.update({f"mean_intensity_c{c}": mean[:, c], f"min_intensity_c{c}": cols["imin"][:, c],
                    f"max_intensity_c{c}": cols["imax"][:, c]})
    meta = {"format": FORMAT, "axes": stats.axes, "shape": stats.shape, "scale": stats.scale,
            "n_channels": stats.n_channels, **stats.meta}
    return Table(out, meta)


def size_column(ndim: int) -> str:
    """The object table's physical size column: volume in 3D, area in 2D."""
    return "area_um2" if ndim == 2 else "volume_um3"


def _open_mask(path: Path, name: str | None):
    """(ImageSource of the labels, chunk shape or None): an OME-Zarr's label image (`name`, or
    the first listed), else any integer image that imageio opens (a TIFF, a zarr array)."""
    from . import imageio, ngff

    if (path / "labels").is_dir() or name is not None:
        level0 = ngff.open_labels(path, name)
        return imageio.open_image(Path(level0.store.root)), level0.chunks
    return imageio.open_image(path), None


def measure_result(mask, image=None, *, label_name: str | None = None, image_axes: str | None = None,
                   block_voxels: int | None = None, workers: int | None = None) -> Table:
    """The object table of a mask (an OME-Zarr result, or a label TIFF/zarr), read one block
    (one chunk, or `block_voxels`) at a time by `workers` threads; with `image`, the intensity
    columns of each of its channels (same spatial shape as the mask)."""
    from concurrent.futures import ThreadPoolExecutor

    from .imageio import open_image
    from .boxes import SLAB_VOXELS, pieces

    mask = Path(mask)
    if not mask.exists():
        raise InputError(f"{mask}: file not found")
    labels, chunks = _open_mask(mask, label_name)
    img = None
    try:
        if labels.dtype.kind not in "ui" or labels.n_channels != 1:
            raise InputError(f"{mask}: not a label image ({labels.dtype}, axes {labels.axes}); "
                             "expected one integer channel")
        if image is not None:
            img = open_image(Path(image), image_axes)
            if img.spatial_axes != labels.spatial_axes or img.spatial_shape != labels.spatial_shape:
                raise InputError(f"{image}: spatial axes {img.spatial_axes} of shape {img.spatial_shape} differ "
                                 f"from the mask's ({labels.spatial_axes}, {labels.spatial_shape})")
        stats = ObjectStats(labels.spatial_axes, shape=labels.spatial_shape, scale=labels.scale,
                            n_channels=img.n_channels if img else 0, source=str(mask))
        stats.meta.update(mask=str(mask), image=str(image) if image is not None else None)
        whole = tuple((0, n) for n in labels.spatial_shape)
        boxes = pieces(whole, chunks, (0,) * len(whole), block_voxels or SLAB_VOXELS)

        def one(box):
            stats.add(labels.read(box), img.read(box) if img else None, offset=tuple(s.start for s in box))

        with ThreadPoolExecutor(workers or min(2, os.cpu_count() or 1)) as pool:
            for _ in pool.map(one, boxes):
                pass
    finally:
        labels.close()
        if img is not None:
            img.close()
    return stats.finish()


def _cli(a) -> None:
    from .merge import bound_malloc

    bound_malloc()  # this process only measures: keep the threads' freed blocks from piling up
    table = measure_result(Path(a.mask), a.image, label_name=a.label, image_axes=a.image_axes)
    parquet, csv = write_tables(table, a.out, inputs=(a.mask, a.image))
    print(f"[aiod] {a.mask}: {len(table)} objects -> {parquet}, {csv}")
