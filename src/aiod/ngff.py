"""OME-Zarr (NGFF 0.5, zarr v3) output: label images, their pyramids, small images, TIFF export.

Layout written by `create_labels` + `finish_labels` (https://ngff.openmicroscopy.org/0.5/):

    <root>/zarr.json                 group, attributes {"ome": {"version": "0.5", ...}}
    <root>/labels/zarr.json          {"ome": {"version": "0.5", "labels": ["<name>", ...]}}
    <root>/labels/<name>/zarr.json   {"ome": {"version": "0.5", "multiscales": [...],
                                              "image-label": {"version": "0.5", ...}}}
    <root>/labels/<name>/0, 1, ...   uint label arrays (zstd), dimension_names = axes

Pyramid rule (`finish_labels`): each level takes every 2nd pixel (nearest neighbour, so label
values stay valid) in Y and X; Z is halved too while its pixel size is not larger than Y's
(isotropic data: every level; anisotropic stacks keep Z until Y/X have caught up; without a
`scale` the data counts as isotropic). Levels are added until one fits in a single chunk or
`max_levels` is reached. Every step works chunk by chunk: no level is ever held in memory.

A result names the image it annotates through `image-label.source.image`, a path relative to
the label image (NGFF 0.5). Labels written into an image group point to it ("../../"). A
result made apart from its image (the pipeline's `labels.ome.zarr`, cached by content and shared
by every copy of the image) names none; `naming_image` gives the metadata a published copy
carries instead: the relative path from where it is published to the input's OME-Zarr image
group, so that NGFF readers (ome-zarr-py, napari-ome-zarr) open image and labels together
without copying the image. A TIFF input has no image group to name.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import tifffile
import zarr
from zarr.codecs import ZstdCodec

from .errors import InputError

NGFF_VERSION = "0.5"
DEFAULT_CHUNKS = {2: (1024, 1024), 3: (128, 128, 128)}
AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
EXPORT_BUDGET = 256 << 20  # bytes of label data export_tiff holds at once (at most)


def _axes_meta(axes: str) -> list[dict]:
    return [{"name": a.lower(), "type": AXIS_TYPES[a]} for a in axes]


def _scale_transform(scale) -> list[dict]:
    return [{"type": "scale", "scale": [float(s) for s in scale]}]


def _chunks(shape, chunks) -> tuple[int, ...]:
    chunks = chunks or DEFAULT_CHUNKS.get(len(shape), (1024, 1024))
    if len(chunks) != len(shape):
        raise ValueError(f"chunks {tuple(chunks)} do not match shape {tuple(shape)}")
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape))


def _check_spatial(axes: str, shape) -> str:
    if axes not in ("YX", "ZYX"):
        raise ValueError(f"label axes must be 'YX' or 'ZYX', not {axes!r}")
    if len(shape) != len(axes):
        raise ValueError(f"shape {tuple(shape)} does not match axes {axes!r}")
    return axes


def _ome(node) -> dict:
    return dict(node.attrs.get("ome") or {})


def _root_group(root: Path):
    """The result's root group: made with its attributes in one write, or opened as it is (and
    given the NGFF version if it has none)."""
    group = zarr.open_group(store=str(root), mode="a", zarr_format=3, attributes={"ome": {"version": NGFF_VERSION}})
    if "version" not in _ome(group):
        group.update_attributes({"ome": {**_ome(group), "version": NGFF_VERSION}})
    return group


def create_labels(root: Path, name: str, shape, axes: str, dtype, chunks=None,
                  scale=None) -> zarr.Array:
    """Create <root>/labels/<name> (a label multiscales group with image-label metadata) and
    return its empty level-0 array (zstd, fill 0) for chunk-wise writing. An existing label
    image of the same name is replaced; other labels and the root image are kept."""
    root = Path(root)
    shape = tuple(int(n) for n in shape)
    axes = _check_spatial(axes, shape)
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui":
        raise ValueError(f"label dtype must be an integer type, not {dtype}")
    scale = tuple(float(s) for s in scale) if scale is not None else (1.0,) * len(axes)
    if len(scale) != len(axes):
        raise ValueError(f"scale {scale} does not match axes {axes!r}")
    # each group made with its attributes (one metadata write each): a batch of small fields
    # creates thousands of these
    group = _root_group(root)
    if "labels" in group:
        labels = group["labels"]
        names = list(_ome(labels).get("labels", []))
        if name not in names or _ome(labels).get("version") != NGFF_VERSION:
            labels.update_attributes({"ome": {**_ome(labels), "version": NGFF_VERSION,
                                              "labels": names + ([name] if name not in names else [])}})
    else:
        labels = group.create_group("labels", attributes={"ome": {"version": NGFF_VERSION, "labels": [name]}})
    image_label = {"version": NGFF_VERSION}
    if "multiscales" in _ome(group):
        image_label["source"] = {"image": "../../"}
    image = labels.create_group(name, overwrite=True, attributes={"ome": {
        "version": NGFF_VERSION,
        "multiscales": [_multiscales(name, axes, [scale])],
        "image-label": image_label,
    }})
    return image.create_array("0", shape=shape, chunks=_chunks(shape, chunks), dtype=dtype,
                              compressors=ZstdCodec(level=3), fill_value=0,
                              dimension_names=list(axes.lower()))


def _multiscales(name: str, axes: str, scales: list, method: str | None = None) -> dict:
    ms = {"name": name, "axes": _axes_meta(axes),
          "datasets": [{"path": str(i), "coordinateTransformations": _scale_transform(s)}
                       for i, s in enumerate(scales)]}
    if method:
        ms["type"] = "nearest"
        ms["metadata"] = {"description": method}
    return ms


def _label_group(root: Path, name: str):
    path = Path(root) / "labels" / name
    try:
        return zarr.open_group(store=str(path), mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise InputError(f"{path}: no label image here; expected one made by create_labels") \
            from None


def _factors(shape, scale, axes: str) -> tuple[int, ...]:
    sizes = dict(zip(axes, shape))
    pix = dict(zip(axes, scale))
    out = []
    for a in axes:
        halve = sizes[a] > 1 and (a != "Z" or pix["Z"] <= pix["Y"] * (1 + 1e-9))
        out.append(2 if halve else 1)
    return tuple(out)


def _downsample(src: zarr.Array, dst: zarr.Array, factors) -> None:
    """dst[i] = src[i * factor] for every pixel, one dst chunk at a time."""
    ranges = [range(0, n, c) for n, c in zip(dst.shape, dst.chunks)]
    for starts in itertools.product(*ranges):
        out = tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, dst.chunks, dst.shape))
        inp = tuple(slice(o.start * f, min(o.stop * f, n))
                    for o, f, n in zip(out, factors, src.shape))
        block = src[inp][tuple(slice(None, None, f) for f in factors)]
        dst[out] = block


def finish_labels(root: Path, name: str, max_levels: int = 8) -> int:
    """Build pyramid levels 1..n from level 0 (rule in the module docstring), write the
    multiscales metadata and return the number of levels (level 0 included)."""
    group = _label_group(root, name)
    ome = _ome(group)
    ms = ome["multiscales"][0]
    axes = "".join(a["name"] for a in ms["axes"]).upper()
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    for key in [k for k in group.array_keys() if k != "0"]:
        del group[key]
    level0 = group["0"]
    full_chunks = level0.chunks
    scales, prev = [list(scale)], level0
    while len(scales) < max(1, max_levels):
        if all(n <= c for n, c in zip(prev.shape, full_chunks)):
            break  # this level fits in one chunk
        factors = _factors(prev.shape, scales[-1], axes)
        shape = tuple(-(-n // f) for n, f in zip(prev.shape, factors))
        arr = group.create_array(str(len(scales)), shape=shape,
                                 chunks=_chunks(shape, full_chunks), dtype=level0.dtype,
                                 compressors=ZstdCodec(level=3), fill_value=0,
                                 dimension_names=list(axes.lower()))
        _downsample(prev, arr, factors)
        scales.append([s * f for s, f in zip(scales[-1], factors)])
        prev = arr
    ome["multiscales"] = [_multiscales(ms.get("name", name), axes, scales,
                                       "nearest neighbour: every 2nd pixel in Y and X; in Z "
                                       "while Z pixels are not larger than Y pixels")]
    group.attrs["ome"] = ome
    return len(scales)


def open_labels(root: Path, name: str | None = None, level: int = 0) -> zarr.Array:
    """Open one level of a label image read-only. `name` None: the first listed label."""
    root = Path(root)
    try:
        labels = zarr.open_group(store=str(root / "labels"), mode="r")
        names = _ome(labels).get("labels") or []
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        names = []
    if name is None:
        if not names:
            raise InputError(f"{root}: no label images (no 'labels' group listing any)")
        name = names[0]
    group = _label_group(root, name)
    datasets = _ome(group)["multiscales"][0]["datasets"]
    if not 0 <= level < len(datasets):
        raise InputError(f"{root}/labels/{name}: level {level} does not exist; "
                         f"levels are 0..{len(datasets) - 1}")
    return zarr.open_array(store=str(root / "labels" / name / datasets[level]["path"]),
                           mode="r")


def write_image(root: Path, data: np.ndarray, axes: str, chunks=None, scale=None) -> None:
    """Write a small in-memory array as an OME-Zarr image (NGFF 0.5, one level "0").

    axes: canonical order (a subsequence of "TCZYX", e.g. "YX", "CZYX"); scale: one value
    per spatial axis (Z, Y, X). The root group is replaced."""
    data = np.asarray(data)
    if axes not in ("".join(a for a in "TCZYX" if a in axes),) or "Y" not in axes \
            or "X" not in axes or len(set(axes)) != len(axes):
        raise ValueError(f"axes must be in NGFF order (a subsequence of TCZYX), not {axes!r}")
    if data.ndim != len(axes):
        raise ValueError(f"data has {data.ndim} dimensions but axes are {axes!r}")
    spatial = [a for a in axes if AXIS_TYPES[a] == "space"]
    sp_scale = list(scale) if scale is not None else [1.0] * len(spatial)
    if len(sp_scale) != len(spatial):
        raise ValueError(f"scale {scale} needs one value per spatial axis {''.join(spatial)}")
    it = iter(sp_scale)
    full_scale = [float(next(it)) if a in spatial else 1.0 for a in axes]
    if chunks is None:
        sp_chunks = iter(DEFAULT_CHUNKS.get(len(spatial), (1024, 1024)))
        chunks = [next(sp_chunks) if a in spatial else 1 for a in axes]
    group = zarr.open_group(store=str(root), mode="w", zarr_format=3)
    arr = group.create_array("0", shape=data.shape, chunks=_chunks(data.shape, chunks),
                             dtype=data.dtype, compressors=ZstdCodec(level=3),
                             dimension_names=list(axes.lower()))
    arr[...] = data
    group.attrs["ome"] = {"version": NGFF_VERSION,
                          "multiscales": [_multiscales(Path(root).name, axes, [full_scale])]}


def image_group(path: Path) -> Path | None:
    """The OME-Zarr image group an input image path names: the path itself when it is a group
    with multiscales metadata (NGFF 0.4 or 0.5), the group above it when it is one of that
    group's multiscales arrays; None for a TIFF, a zarr without NGFF metadata, or no image."""
    path = Path(path)
    if not path.is_dir():
        return None
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception:  # not a zarr store at all
        return None
    if isinstance(node, zarr.Group):
        return path if _multiscales_of(node) else None
    try:
        parent = zarr.open_group(store=str(path.parent), mode="r")
    except Exception:
        return None
    paths = {d.get("path") for ms in _multiscales_of(parent) for d in ms.get("datasets", [])}
    return path.parent if path.name in paths else None


def _multiscales_of(group) -> list:
    attrs = dict(group.attrs)
    return (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales") or []


def read_translation(path: Path) -> tuple[float, ...] | None:
    """The physical position of the first voxel of an OME-Zarr image (NGFF 0.4 or 0.5), one
    value per spatial axis in the file's order (z, y, x): level 0's `translation` composed with
    the multiscale's own transformations, each list a scale then a translation, so that the
    origin is t_level0 * s_multiscale + t_multiscale. `path` is an image group or one of its
    multiscales arrays (then that array's dataset), or a result whose root holds only labels
    (then its first label image). None when neither carries a translation, and for a TIFF or a
    zarr without NGFF metadata."""
    path = Path(path)
    group = image_group(path)
    if group is None and (path / "labels").is_dir():
        try:
            attrs = dict(zarr.open_group(store=str(path / "labels"), mode="r").attrs)
            names = (attrs.get("ome") or attrs).get("labels") or []  # NGFF 0.5 or 0.4
        except Exception:  # not a zarr group
            names = []
        group = image_group(path / "labels" / names[0]) if names else None
    if group is None:
        return None
    ms = _multiscales_of(zarr.open_group(store=str(group), mode="r"))
    datasets = [(m, d) for m in ms for d in m.get("datasets", [])]
    if group == path.parent:  # an array of the group: its own dataset
        datasets = [(m, d) for m, d in datasets if d.get("path") == path.name]
    if not datasets:
        return None
    m, dataset = datasets[0]
    axes = m.get("axes") or []
    spatial = [k for k, a in enumerate(axes)
               if (a.get("type") == "space" if isinstance(a, dict) else str(a).lower() in ("z", "y", "x"))]
    origin, found = np.zeros(len(axes)), False
    for source in (dataset, m):  # x = (i * s0 + t0) * s1 + t1
        for t in source.get("coordinateTransformations", []) or []:
            values = t.get(t.get("type"))
            if t.get("type") not in ("scale", "translation") or not isinstance(values, list) \
                    or len(values) != len(axes) or not all(isinstance(v, (int, float)) for v in values):
                continue  # another kind (NGFF 0.6: affine, ...), or not a vector of numbers: not read
            if t["type"] == "scale":
                origin = origin * np.asarray(values, float)
            else:
                origin, found = origin + np.asarray(values, float), True
    return tuple(float(origin[k]) for k in spatial) if found and spatial else None


def naming_image(root: Path, image: Path | None, published_at: Path) -> dict[str, bytes]:
    """The metadata files of the label images in the result `root`, as they read when the
    result is published at `published_at` beside an input `image`: {path relative to root:
    new zarr.json bytes}, whose `image-label.source.image` is the path from the published
    label image to the input's OME-Zarr image group (both resolved, so that a reader following
    the path from the published folder lands on the image). Empty when the input has no image
    group (a TIFF): the labels then name no image."""
    group = image_group(Path(image)) if image else None
    if group is None:
        return {}
    root = Path(root)
    names = _ome(zarr.open_group(store=str(root / "labels"), mode="r")).get("labels") or []
    at = Path(os.path.realpath(Path(published_at).parent)) / Path(published_at).name
    out = {}
    for name in names:
        rel = f"labels/{name}/zarr.json"
        meta = json.loads((root / rel).read_text())
        ome = meta.setdefault("attributes", {}).setdefault("ome", {})
        source = os.path.relpath(os.path.realpath(group), at / "labels" / name)
        ome["image-label"] = {**ome.get("image-label", {"version": NGFF_VERSION}), "source": {"image": source}}
        out[rel] = json.dumps(meta, indent=2).encode()
    return out


def _tiles(arr: zarr.Array, tile: tuple[int, int]):
    """Yield (ty, tx) tiles of every plane in TIFF order, holding at most EXPORT_BUDGET bytes:
    a slab of whole planes (up to one chunk deep), or one tile row when a plane is larger."""
    is3d = arr.ndim == 3
    n_planes = arr.shape[0] if is3d else 1
    height, width = arr.shape[-2:]
    ty, tx = tile
    plane_bytes = height * width * arr.dtype.itemsize

    def tile_row(plane, y):
        row = plane[y:y + ty] if isinstance(plane, np.ndarray) else (
            arr[plane, y:y + ty, :] if is3d else arr[y:y + ty, :])
        for x in range(0, width, tx):
            yield row[:, x:x + tx]

    if plane_bytes <= EXPORT_BUDGET:
        depth = min(arr.chunks[0], EXPORT_BUDGET // plane_bytes) if is3d else 1
        slabs = ((arr[z0:z0 + depth] if is3d else arr[...][None])
                 for z0 in range(0, n_planes, depth))
        planes = (plane for slab in slabs for plane in slab)
    else:
        planes = iter(range(n_planes))  # read tile row by tile row from the array
    for plane in planes:
        for y in range(0, height, ty):
            yield from tile_row(plane, y)


def export_tiff(root: Path, name: str, out_path: Path) -> None:
    """Write level 0 of label image `name` as a zlib-compressed, tiled BigTIFF with OME axes
    (and physical sizes), streamed tile by tile. Written to a temporary name, then renamed."""
    arr = open_labels(root, name, 0)
    ms = _ome(_label_group(root, name))["multiscales"][0]
    axes = "".join(a["name"] for a in ms["axes"]).upper()
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    metadata = {"axes": axes}
    metadata.update({f"PhysicalSize{a}": float(s) for a, s in zip(axes, scale)})
    tile = tuple(max(16, -(-min(c, 1024) // 16) * 16) for c in arr.chunks[-2:])
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    try:
        tifffile.imwrite(tmp, data=_tiles(arr, tile), shape=arr.shape, dtype=arr.dtype,
                         bigtiff=True, compression="zlib", tile=tile,
                         photometric="minisblack", metadata=metadata, ome=True)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
