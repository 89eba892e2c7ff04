"""Objects counted per atlas region (docs/measure.md): counts, object volume, region volume and
density, rolled up through a hierarchy of regions.

An atlas is a label image of region ids (TIFF or (OME-)Zarr) registered to the image, at its
resolution or another. Positions are physical, with the first corner of the image at 0: image
voxel i spans [i * s, (i + 1) * s) along each axis (s: the mask's voxel size, or --voxel-size),
atlas voxel j spans [o + j * a, o + (j + 1) * a) (a: the atlas' voxel size, or --atlas-scale; o:
the atlas' offset). o is --atlas-offset when given; else the atlas' NGFF translation minus the
image's (each file's first voxel placed at its translation; 0 for a file without one), so an
atlas that covers only part of space lands where its metadata puts it. Each object is counted
once, in the atlas voxel that holds its centroid c: j = floor(((c + 0.5) * s - o) / a) (nearest
voxel when the grids are the same). Objects whose centroid falls outside the atlas, or on region
0, get rows of their own.

The atlas is read one block at a time, once: each block's region voxels are counted (region
volumes) and the objects whose centroid falls in it are looked up. Memory: one block plus the
object table's centroids.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .measure import FORMAT as OBJECTS_FORMAT
from .measure import size_column
from .tables import Table, read_table, write_tables

if TYPE_CHECKING:  # numpy is imported where it is used: cli.py imports this module for every command
    import numpy as np

FORMAT = "aiod-regions/1"
OUTSIDE, BACKGROUND = -1, 0  # region ids of the rows for objects outside the atlas and on 0
PARENT_COLUMNS = ("parent_id", "parent_structure_id")  # the latter: Allen / brainglobe tables


@dataclass
class Hierarchy:
    ids: np.ndarray  # int64, in the file's order
    names: list
    acronyms: list
    parents: np.ndarray  # int64 parent id, -1 for a root


def parse_scale(text, ndim: int, what: str) -> tuple[float, ...] | None:
    """'z,y,x' (or 'y,x') as positive floats; None stays None."""
    if text is None:
        return None
    parts = str(text).split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"{what} '{text}': not numbers; expected {ndim} comma-separated values") from None
    if len(values) != ndim:
        raise InputError(f"{what} '{text}': {len(values)} value(s), but the mask has {ndim} spatial axes")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} '{text}': not finite numbers; expected {ndim} comma-separated values")
    if "offset" not in what and not all(v > 0 for v in values):
        raise InputError(f"{what} '{text}': voxel sizes must be > 0")
    return values


def read_hierarchy(path) -> Hierarchy:
    """A regions CSV: id, name, acronym, parent_id (or parent_structure_id); an empty parent
    is a root. Refuses missing columns, bad or repeated ids, unknown parents and cycles."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        parent_col = next((c for c in PARENT_COLUMNS if c in fields), None)
        missing = [c for c in ("id", "name", "acronym") if c not in fields] + ([] if parent_col else ["parent_id"])
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}; expected id, name, acronym, parent_id "
                             f"(found: {', '.join(fields) or 'none'})")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    ids, parents = [], []
    for line, row in enumerate(rows, start=2):
        try:
            ids.append(_int(row["id"]))
            parents.append(_int(row[parent_col]) if row[parent_col] else -1)
        except ValueError:
            raise InputError(f"{path}: line {line}: id '{row['id']}' or {parent_col} '{row[parent_col]}' "
                             "is not an integer") from None
        if ids[-1] < 0 or parents[-1] < -1:
            raise InputError(f"{path}: line {line}: region ids must be >= 0")
    seen, known = set(), set(ids)
    for line, (i, p) in enumerate(zip(ids, parents), start=2):
        if i in seen:
            raise InputError(f"{path}: line {line}: region id {i} appears twice")
        seen.add(i)
        if p != -1 and p not in known:
            raise InputError(f"{path}: line {line}: parent {p} of region {i} is not a region of the file")
    h = Hierarchy(np.array(ids, np.int64), [r["name"] for r in rows], [r["acronym"] for r in rows],
                  np.array(parents, np.int64))
    row = {i: k for k, i in enumerate(ids)}
    _depths(h.ids, [row.get(p, -1) for p in parents], path)
    return h


def _int(text: str) -> int:
    """'12' or '12.0' (as a spreadsheet may write it) as 12; anything else is a ValueError."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _depths(ids: np.ndarray, parent: list, path) -> np.ndarray:
    """Depth of every region (roots 0) from the row of each one's parent (-1: a root); a
    cycle of parents is refused, naming it."""
    import numpy as np

    depth = [-1] * len(parent)
    for start in range(len(parent)):
        chain, on_chain, k = [], set(), start
        while k != -1 and depth[k] == -1 and k not in on_chain:
            chain.append(k)
            on_chain.add(k)
            k = parent[k]
        if k != -1 and k in on_chain:
            cycle = chain[chain.index(k):]
            raise InputError(f"{path}: regions {' -> '.join(str(ids[c]) for c in [*cycle, k])} form a cycle of parents")
        base = -1 if k == -1 else depth[k]
        for c in reversed(chain):
            base += 1
            depth[c] = base
    return np.array(depth, np.int64)


def _objects(path) -> tuple[Table, np.ndarray]:
    """The object table's voxel counts and centroids (the only columns read), and its metadata."""
    import numpy as np

    meta = read_table(path, columns=[]).meta
    if meta.get("format") != OBJECTS_FORMAT:
        raise InputError(f"{path}: not an object table of `aiod measure` (no '{OBJECTS_FORMAT}' metadata)")
    axes = meta["axes"].lower()
    table = read_table(path, columns=["voxels", *(f"centroid_{a}" for a in axes)])
    centroids = np.stack([np.asarray(table.columns[f"centroid_{a}"], np.float64) for a in axes], 1)
    return table, centroids.reshape(-1, len(axes))


def _atlas_scale(atlas, meta: dict, atlas_scale, voxel_size):
    """(mask voxel size, atlas voxel size): given, else from the files; the atlas at the mask's
    grid when it has none and the same shape."""
    mask_scale = voxel_size or (tuple(meta["scale"]) if meta.get("scale") else None)
    a_scale = atlas_scale or atlas.scale
    same_grid = list(atlas.spatial_shape) == list(meta.get("shape") or [])
    if a_scale is None and same_grid:
        return mask_scale or (1.0,) * len(atlas.spatial_shape), mask_scale or (1.0,) * len(atlas.spatial_shape)
    if a_scale is None:
        raise InputError(f"{atlas.path}: no voxel size in the file and shape {atlas.spatial_shape} is not the mask's "
                         f"{tuple(meta.get('shape') or ())}; give --atlas-scale")
    if mask_scale is None:
        raise InputError(f"{atlas.path}: the mask has no voxel size to place it in the atlas; give --voxel-size")
    return tuple(mask_scale), tuple(a_scale)


def atlas_offset_of(atlas, images, atlas_offset, ndim: int, what: str = "--atlas-offset"):
    """The atlas' first corner relative to the image's (µm per spatial axis): `atlas_offset`
    when given, else the atlas' NGFF translation minus the image's (the first of `images`, a
    mask or an image, that exists and carries one), a missing translation counting as 0."""
    import numpy as np

    from . import ngff

    given = parse_scale(atlas_offset, ndim, what)
    if given is not None:
        return np.asarray(given, np.float64)

    def translation(path):
        t = ngff.read_translation(Path(path)) if path and Path(path).exists() else None
        return np.asarray(t, np.float64) if t is not None and len(t) == ndim else None

    image = next((t for t in map(translation, images) if t is not None), np.zeros(ndim))
    a = translation(atlas)
    return (np.zeros(ndim) if a is None else a) - image


def _check_cover(atlas, meta, mask_scale, a_scale, offset, hint: str) -> None:
    """Refuse an atlas whose extent misses the image's by more than one atlas voxel: the mark
    of a wrong voxel size or offset."""
    import numpy as np

    shape = meta.get("shape")
    if not shape:
        return
    lo = np.asarray(offset)
    hi = lo + np.asarray(atlas.spatial_shape) * np.asarray(a_scale)
    extent = np.asarray(shape) * np.asarray(mask_scale)
    slack = np.asarray(a_scale) * (1 + 1e-9)
    if np.any(lo > slack) or np.any(hi < extent - slack):
        raise InputError(f"{atlas.path}: the atlas spans {_span(lo, hi)} but the image spans {_span(np.zeros_like(lo), extent)} "
                         f"(µm from the image's first corner); {hint}")


def check_atlas(atlas, shape, scale, *, atlas_scale=None, voxel_size=None, atlas_offset=None, image=None,
                where: str = "atlas") -> None:
    """Refuse, before any work, an atlas that cannot count the objects of an image of `shape`
    (voxel size `scale`, or `voxel_size`; its NGFF translation read from `image`): not an integer
    label image, other axes, no voxel size to place it, or an extent that misses the image's
    (placed by `atlas_offset`, or by the files' translations)."""
    from .imageio import open_image

    ndim = len(shape)
    try:
        atlas_scale = parse_scale(atlas_scale or None, ndim, "atlas_scale")
        voxel_size = parse_scale(voxel_size or None, ndim, "voxel_size")
        offset = atlas_offset_of(atlas, [image], atlas_offset or None, ndim, "atlas_offset")
        with open_image(Path(atlas)) as source:
            if source.dtype.kind not in "ui":
                raise InputError(f"{atlas}: atlas pixels are {source.dtype}; expected an integer label image of region ids")
            if source.n_channels != 1 or len(source.spatial_axes) != ndim:
                raise InputError(f"{atlas}: atlas axes {source.axes} (shape {source.shape}); expected one channel and "
                                 f"{ndim} spatial axes like the image's")
            meta = {"shape": list(shape), "scale": list(scale) if scale else None}
            mask_scale, a_scale = _atlas_scale(source, meta, atlas_scale, voxel_size)
            _check_cover(source, meta, mask_scale, a_scale, offset,
                         "check the atlas_scale, voxel_size and atlas_offset columns (or the files' NGFF translations)")
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def _span(lo, hi) -> str:
    return " x ".join(f"[{a:g}, {b:g})" for a, b in zip(lo, hi))


def _scan_atlas(atlas, index: np.ndarray, inside: np.ndarray):
    """One pass over the atlas: (region ids, voxel counts) and each object's region (the
    atlas value at `index`, OUTSIDE where not `inside`)."""
    import numpy as np

    from .boxes import SLAB_VOXELS, pieces

    region = np.full(len(index), OUTSIDE, np.int64)
    boxes = pieces(tuple((0, n) for n in atlas.spatial_shape), None, (0,) * index.shape[1], SLAB_VOXELS)
    starts = [np.unique([b[k].start for b in boxes]) for k in range(index.shape[1])]
    grid = tuple(len(s) for s in starts)
    where = np.flatnonzero(inside)
    cell = np.ravel_multi_index(tuple(np.searchsorted(s, index[where, k], side="right") - 1
                                      for k, s in enumerate(starts)), grid) if where.size else where
    order = np.argsort(cell, kind="stable")
    where, cell = where[order], cell[order]
    ids, counts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for n, box in enumerate(boxes):  # boxes come in C order of the grid: box n is cell n
        block = np.ascontiguousarray(atlas.read(box))
        flat = block.reshape(-1)
        keep = np.empty(flat.size, bool)
        keep[:1] = True
        np.not_equal(flat[1:], flat[:-1], out=keep[1:])
        run_start = np.flatnonzero(keep)
        values = flat[run_start]
        if values.size and values.min() < 0:
            raise InputError(f"{atlas.path}: negative region id {int(values.min())}; region ids must be >= 0")
        ids.append(values.astype(np.int64))
        counts.append(np.diff(run_start, append=flat.size))
        a, b = np.searchsorted(cell, [n, n + 1])
        if b > a:
            local = index[where[a:b]] - np.array([s.start for s in box])
            region[where[a:b]] = block[tuple(local.T)]
        if len(ids) > 64:  # the blocks' counts are summed now and then, not kept
            u, c = _sum_by_id(np.concatenate(ids), np.concatenate(counts))
            ids, counts = [u], [c]
    return (*_sum_by_id(np.concatenate(ids), np.concatenate(counts)), region)


def _sum_by_id(ids, weights):
    import numpy as np

    u, inv = np.unique(ids, return_inverse=True)
    return u, np.bincount(inv.ravel(), weights=weights, minlength=len(u)).astype(weights.dtype)


def count_regions(objects, atlas, *, atlas_scale=None, voxel_size=None, atlas_offset=None, regions=None,
                  partial_atlas: bool = False, image=None) -> Table:
    """The region table of an object table (`aiod measure`'s Parquet) in `atlas` (docs/measure.md).
    Without `atlas_offset`, the atlas is placed by its NGFF translation relative to that of
    `image` (the image the mask was made from; default: the mask, else the image, the object
    table names)."""
    import numpy as np

    from .imageio import open_image

    hierarchy = read_hierarchy(regions) if regions is not None else None
    table, centroids = _objects(objects)
    ndim = centroids.shape[1]
    atlas_scale = parse_scale(atlas_scale, ndim, "--atlas-scale")
    voxel_size = parse_scale(voxel_size, ndim, "--voxel-size")
    images = [image] if image is not None else [table.meta.get("mask"), table.meta.get("image")]
    offset = atlas_offset_of(atlas, images, atlas_offset, ndim)
    with open_image(Path(atlas)) as source:
        if source.dtype.kind not in "ui":
            raise InputError(f"{atlas}: atlas pixels are {source.dtype}; expected an integer label image of region ids")
        if source.n_channels != 1 or len(source.spatial_axes) != ndim:
            raise InputError(f"{atlas}: atlas axes {source.axes} (shape {source.shape}); expected one channel and "
                             f"{ndim} spatial axes like the mask's {table.meta['axes']}")
        mask_scale, a_scale = _atlas_scale(source, table.meta, atlas_scale, voxel_size)
        if not partial_atlas:
            _check_cover(source, table.meta, mask_scale, a_scale, offset,
                         "check --atlas-scale, --voxel-size and --atlas-offset (or the files' NGFF translations), or "
                         "give --partial-atlas to count what lies outside as 'outside atlas'")
        index = np.floor(((centroids + 0.5) * np.asarray(mask_scale) - offset) / np.asarray(a_scale)).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(source.spatial_shape)), axis=1)
        region_ids, voxels, region = _scan_atlas(source, index, inside)
    size = np.asarray(table.columns["voxels"], np.float64) * float(np.prod(mask_scale))
    result = _rows(region_ids, voxels * float(np.prod(a_scale)), region, size, hierarchy, ndim)
    result.meta.update(objects=str(objects), atlas=str(atlas), regions=None if regions is None else str(regions),
                       voxel_size=list(mask_scale), atlas_scale=list(a_scale), atlas_offset=offset.tolist(),
                       n_objects=len(table))
    return result


def _rows(region_ids, region_um, region, size, hierarchy: Hierarchy | None, ndim: int) -> Table:
    """One row per region (of the hierarchy, of the atlas, or holding objects), after the
    'outside atlas' and 'background (0)' rows; the totals roll up to every ancestor."""
    import numpy as np

    h = hierarchy or Hierarchy(np.zeros(0, np.int64), [], [], np.zeros(0, np.int64))
    extra = np.setdiff1d(np.union1d(region_ids, region), np.concatenate([h.ids, [OUTSIDE, BACKGROUND]]))
    ids = np.concatenate([[OUTSIDE, BACKGROUND], h.ids[h.ids != BACKGROUND], extra]).astype(np.int64)
    names = {**{int(i): n for i, n in zip(h.ids, h.names)}, OUTSIDE: "outside atlas"}
    names.setdefault(BACKGROUND, "background (0)")
    acronyms = {int(i): a for i, a in zip(h.ids, h.acronyms)}
    parents = {int(i): int(p) for i, p in zip(h.ids, h.parents) if p != -1}
    row = {int(i): k for k, i in enumerate(ids)}
    parent = np.array([row[parents[int(i)]] if int(i) in parents else -1 for i in ids], np.int64)
    depth = _depths(ids, list(parent), "regions")

    sorter = np.argsort(ids)
    at = sorter[np.searchsorted(ids, region, sorter=sorter)]  # each object's row
    own_n = np.bincount(at, minlength=len(ids)).astype(np.int64)
    own_size = np.bincount(at, weights=size, minlength=len(ids))
    own_um = np.zeros(len(ids))
    own_um[sorter[np.searchsorted(ids, region_ids, sorter=sorter)]] = region_um
    total = [own_n.copy(), own_size.copy(), own_um.copy()]
    for level in range(int(depth.max(initial=0)), 0, -1):  # children into parents, deepest first
        child = np.flatnonzero(depth == level)
        for arr in total:
            np.add.at(arr, parent[child], arr[child])
    unit = 1e9 if ndim == 3 else 1e6  # µm³ per mm³, µm² per mm²
    name, per = ("volume", "mm3") if ndim == 3 else ("area", "mm2")
    obj = size_column(ndim).replace(name, f"object_{name}")
    region_mm = np.where(ids == OUTSIDE, np.nan, total[2] / unit)
    own_mm = np.where(ids == OUTSIDE, np.nan, own_um / unit)
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(region_mm > 0, total[0] / region_mm, np.nan)
    columns = {
        "region_id": ids, "name": np.array([names.get(int(i), "") for i in ids], object),
        "acronym": np.array([acronyms.get(int(i), "") for i in ids], object),
        "parent_id": np.ma.masked_array(np.where(parent >= 0, ids[np.maximum(parent, 0)], 0), mask=parent < 0),
        "depth": depth, "objects": total[0], obj: total[1], f"region_{name}_{per}": region_mm,
        f"density_per_{per}": density, "objects_self": own_n, obj.replace(f"_{name}", f"_{name}_self"): own_size,
        f"region_{name}_self_{per}": own_mm,
    }
    return Table(columns, {"format": FORMAT})


def _cli(a) -> None:
    import numpy as np

    table = count_regions(Path(a.objects), Path(a.atlas), atlas_scale=a.atlas_scale, voxel_size=a.voxel_size,
                          atlas_offset=a.atlas_offset, regions=Path(a.regions) if a.regions else None,
                          partial_atlas=a.partial_atlas)
    parquet, csv_path = write_tables(table, a.out, inputs=(a.objects, a.atlas, a.regions))
    c = table.columns
    print(f"[aiod] {a.atlas}: {table.meta['n_objects']} objects in {int(np.count_nonzero(c['objects_self'][2:]))} "
          f"region(s), {int(c['objects'][1])} on background, {int(c['objects'][0])} outside -> {parquet}, {csv_path}")
