"""Lazy image reading: open a TIFF or a Zarr/OME-Zarr image and cut boxes out of it.

`open_image` reads only metadata; `ImageSource.read` reads only the requested box. Nothing here
loads a whole image. Images are always presented in canonical axis order (C first, then Z, Y,
X): the box that is read is transposed, never the stored array.

Axes come from, in order: the `axes` the user declared (samplesheet column), the file's own
metadata (OME/ImageJ TIFF axes, NGFF axis names, zarr v3 dimension names), and last a default
by dimension count: 2 -> YX, 3 -> ZYX. Size-1 T and C axes are dropped; a T axis longer than 1
is refused (time series are not supported yet).

Images that cannot give a true result are refused with one line naming the file (imagecheck.py):
from the header when opened (empty axes, complex pixels, a cut TIFF), and while a box is read
(undecodable chunks, NaN or +-inf pixels).

The image's identity for the cache is in fingerprint.py.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile

from .errors import InputError
from .imagecheck import bad_chunk, box_text, check_pixels, check_tiff_extent, dims, reason, refuse_non_finite

AXIS_LETTERS = "TCZYX"
CANONICAL = "CZYX"
TIFF_SUFFIXES = (".tif", ".tiff")  # also matches .ome.tif / .ome.tiff
ZARR_META = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


def check_axes(axes: str, what: str = "axes") -> str:
    """Upper-case `axes` and check it uses T,C,Z,Y,X at most once each and has Y and X.

    Raises ValueError with a message meant to follow "<where>: " (samplesheet uses this too).
    """
    axes = axes.strip().upper()
    bad = sorted({a for a in axes if a not in AXIS_LETTERS})
    if bad:
        raise ValueError(f"{what} '{axes}' contain unknown letter(s) {', '.join(bad)}; "
                         f"expected letters from {', '.join(AXIS_LETTERS)}, e.g. ZYX or CZYX")
    if len(set(axes)) != len(axes):
        raise ValueError(f"{what} '{axes}' repeat a letter; each axis may appear once")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{what} '{axes}' must contain both Y and X")
    return axes


def _metadata_axes(axes: str | None) -> str | None:
    """Axes found in file metadata, or None when they are absent or not usable."""
    if not axes:
        return None
    axes = axes.upper().replace("S", "C")  # tifffile 'S' = samples (RGB) -> channels
    try:
        return check_axes(axes)
    except ValueError:  # 'Q', 'I' and other unknown letters: treat as no metadata
        return None


class ImageSource:
    """One image opened lazily; see the module docstring for how axes are resolved.

    Attributes: path, axes (canonical, e.g. "CZYX"), shape (in `axes` order), dtype, scale
    (physical pixel size per spatial axis from metadata, else None), source_axes (the stored
    axis order, one letter per stored dimension: what a declared `axes` must say to get this
    same reading).
    """

    def __init__(self, path: Path, array, stored_axes: str, scale_by_axis: dict | None,
                 closers=(), is_zarr: bool = False):
        self.path = path
        self._array = array
        self._is_zarr = is_zarr
        self._closers = list(closers)
        self.source_axes = stored_axes
        stored_shape = tuple(int(n) for n in array.shape)
        self._stored_shape = stored_shape
        sizes = dict(zip(stored_axes, stored_shape))
        if sizes.get("T", 1) > 1:
            self.close()
            raise InputError(f"{path}: image has {sizes['T']} timepoints (axes {stored_axes}, "
                             f"shape {dims(stored_shape)}); time series are not supported yet: "
                             "split timepoints into separate images")
        kept = [a for a in stored_axes if a != "T" and not (a == "C" and sizes[a] == 1)]
        self.axes = "".join(a for a in CANONICAL if a in kept)
        self.shape = tuple(sizes[a] for a in self.axes)
        self.dtype = np.dtype(array.dtype).newbyteorder("=")
        scale = None
        if scale_by_axis and all(a in scale_by_axis for a in self.spatial_axes):
            scale = tuple(float(scale_by_axis[a]) for a in self.spatial_axes)
        self.scale = scale

    @property
    def spatial_axes(self) -> str:
        return self.axes.replace("C", "")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(n for a, n in zip(self.axes, self.shape) if a != "C")

    @property
    def n_channels(self) -> int:
        return self.shape[0] if self.axes[0] == "C" else 1

    def read(self, box: tuple[slice, ...], channel: int | None = None) -> np.ndarray:
        """Read one box. `box`: one slice per spatial axis (step 1). `channel` int -> the
        spatial array of that channel; None -> the spatial array when there is no C axis,
        else (C, *spatial). Only the box is read from disk."""
        box = tuple(box)
        if len(box) != len(self.spatial_axes):
            raise ValueError(f"box has {len(box)} slices but the image has spatial axes "
                             f"{self.spatial_axes}")
        if channel is not None and not 0 <= channel < self.n_channels:
            raise InputError(f"{self.path}: channel {channel} is out of range; the image has "
                             f"{self.n_channels} channel(s), numbered from 0")
        by_axis = {}
        for a, s, n in zip(self.spatial_axes, box, self.spatial_shape):
            start, stop, step = s.indices(n)
            if step != 1:
                raise ValueError(f"box slice for {a} must have step 1, got {s}")
            by_axis[a] = slice(start, max(start, stop))
        index = []
        for a in self.source_axes:
            if a in by_axis:
                index.append(by_axis[a])
            elif a == "C" and "C" in self.axes:
                index.append(slice(None) if channel is None else channel)
            else:  # size-1 T or C
                index.append(0)
        try:
            out = self._array[tuple(index)]
        except MemoryError:
            raise
        except Exception as e:  # codecs raise many types for bytes that do not decode
            raise InputError(self._undecodable(tuple(index), by_axis, e)) from None
        if isinstance(self._array, np.memmap):
            out = np.array(out)  # a copy, so no view keeps the file mapped
        if out.dtype.kind == "f":
            refuse_non_finite(self.path, out, by_axis)
        kept = [a for a, i in zip(self.source_axes, index) if isinstance(i, slice)]
        order = [kept.index(a) for a in CANONICAL if a in kept]
        out = np.asarray(out).transpose(order)
        if not out.dtype.isnative:
            out = out.astype(self.dtype)
        return out

    def _undecodable(self, index: tuple, by_axis: dict, exc: Exception) -> str:
        """The message for a box read that failed: the chunk that does not decode (zarr), else
        the box."""
        key = bad_chunk(self._array, index) if self._is_zarr else None
        if key is not None:
            return f"{self.path}: chunk '{key}' cannot be decoded ({reason(exc)})"
        return f"{self.path}: the pixels of box {box_text(by_axis)} cannot be decoded ({reason(exc)})"

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()
        self._array = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"ImageSource({str(self.path)!r}, axes={self.axes!r}, shape={self.shape}, "
                f"dtype={self.dtype}, scale={self.scale})")


def _image_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if path.is_dir() and (name.endswith(".zarr") or any((path / m).exists() for m in ZARR_META)):
        return "zarr"
    raise InputError(f"{path}: unknown image format; expected a .tif/.tiff/.ome.tif file or a "
                     ".zarr directory (zarr v2 or v3, OME-Zarr)")


def _resolve_axes(path: Path, shape, declared: str | None, meta: str | None) -> str:
    ndim = len(shape)
    if declared is not None:
        try:
            declared = check_axes(declared, "declared axes")
        except ValueError as e:
            raise InputError(f"{path}: {e}") from None
        if len(declared) != ndim:
            raise InputError(f"{path}: declared axes '{declared}' have {len(declared)} letters "
                             f"but the image has {ndim} dimensions (shape {dims(shape)})")
        return declared
    if meta is not None and len(meta) == ndim:
        return meta
    if ndim == 2:
        return "YX"
    if ndim == 3:
        return "ZYX"
    if ndim < 2:
        raise InputError(f"{path}: image has {ndim} dimension(s) (shape {dims(shape)}); "
                         "expected at least 2 (Y and X)")
    raise InputError(f"{path}: image has {ndim} dimensions (shape {dims(shape)}) but no axes; "
                     "add an 'axes' column to the samplesheet, e.g. "
                     f"{'CZYX' if ndim == 4 else 'TCZYX'}")


def _checked_axes(path: Path, shape, declared: str | None, meta: str | None, dtype) -> str:
    """Stored axes (see _resolve_axes) of an image whose header passes check_pixels."""
    try:
        axes = _resolve_axes(path, shape, declared, meta)
    except InputError:
        if 0 in shape:  # the empty axis is the problem to name, not the axes
            check_pixels(path, shape, None, dtype)
        raise
    check_pixels(path, shape, axes, dtype)
    return axes


def _ome_scale(tf: tifffile.TiffFile) -> dict | None:
    if not tf.is_ome or not tf.ome_metadata:
        return None
    try:
        root = ET.fromstring(tf.ome_metadata)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels":
            found = {a: el.get(f"PhysicalSize{a}") for a in "ZYX"}
            return {a: float(v) for a, v in found.items() if v is not None} or None
    return None


def _tiff_file(path: Path) -> tifffile.TiffFile:
    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises several types for corrupt or foreign files
        raise InputError(f"{path}: cannot be read as TIFF ({reason(e)})") from None
    if not tf.series:
        tf.close()
        raise InputError(f"{path}: cannot be read as TIFF (no image series in the file)")
    return tf


def _open_tiff(path: Path, declared: str | None) -> ImageSource:
    tf = _tiff_file(path)
    try:
        series = tf.series[0]
        shape, meta_axes = tuple(series.shape), _metadata_axes(series.axes)
        axes = _checked_axes(path, shape, declared, meta_axes, series.dtype)
        check_tiff_extent(path, tf, series)
        scale = _ome_scale(tf) if declared is None or declared.upper() == meta_axes else None
        if series.dataoffset is not None and not series.transform:
            dtype = np.dtype(series.dtype).newbyteorder(tf.byteorder)
            array = np.memmap(path, dtype=dtype, mode="r", offset=series.dataoffset, shape=shape)
            tf.close()
            return ImageSource(path, array, axes, scale)
        import zarr  # here: an uncompressed TIFF needs none of it, and it costs 0.4 s to import

        store = series.aszarr(level=0)
        array = zarr.open_array(store, mode="r")
        return ImageSource(path, array, axes, scale, closers=(tf.close, store.close))
    except BaseException:
        tf.close()
        raise


def _ngff_multiscales(attrs: dict) -> list | None:
    return (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")


def _ngff_axes_and_scale(ms: dict, dataset: dict) -> tuple[str | None, dict | None]:
    names = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])]
    axes = _metadata_axes("".join(str(n) for n in names)) if all(
        len(str(n)) == 1 for n in names) else None
    scale = None
    for source in (dataset, ms):
        for t in source.get("coordinateTransformations", []) or []:
            if t.get("type") == "scale" and axes and len(t.get("scale", [])) == len(axes):
                scale = scale or {a: 1.0 for a in axes}
                for a, v in zip(axes, t["scale"]):
                    scale[a] *= float(v)
    return axes, scale


def _zarr_level0(path: Path):
    """(level-0 zarr.Array, metadata axes or None, scale dict or None) for a zarr path."""
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as e:
        raise InputError(f"{path}: cannot be read as zarr ({reason(e)})") from None
    if isinstance(node, zarr.Array):
        names = getattr(node.metadata, "dimension_names", None)
        axes = _metadata_axes("".join(names)) if names and all(
            n and len(n) == 1 for n in names) else None
        scale = None
        try:  # an array inside an OME-Zarr image group: take axes and scale from the group
            parent = zarr.open_group(store=str(path.parent), mode="r")
            ms = _ngff_multiscales(dict(parent.attrs))
        except Exception:
            ms = None
        for m in ms or []:
            for ds in m.get("datasets", []):
                if ds.get("path") == path.name:
                    axes, scale = _ngff_axes_and_scale(m, ds)
        return node, axes, scale
    ms = _ngff_multiscales(dict(node.attrs))
    if not ms or not ms[0].get("datasets"):
        raise InputError(f"{path}: zarr group has no OME-NGFF 'multiscales' metadata; expected "
                         "an OME-Zarr image (attributes 'ome.multiscales' or 'multiscales') "
                         "or the path of a zarr array")
    ds = ms[0]["datasets"][0]
    try:
        array = node[ds["path"]]
    except KeyError:
        raise InputError(f"{path}: multiscales dataset '{ds['path']}' is missing") from None
    axes, scale = _ngff_axes_and_scale(ms[0], ds)
    return array, axes, scale


def open_image(path, axes: str | None = None) -> ImageSource:
    """Open an image lazily (metadata only). `axes`: declared stored axis order, wins over
    metadata. Raises InputError naming the path and the problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    kind = _image_format(path)
    if kind == "tiff":
        return _open_tiff(path, axes)
    array, meta, scale = _zarr_level0(path)
    stored = _checked_axes(path, tuple(array.shape), axes, meta, array.dtype)
    if axes is not None and check_axes(axes) != meta:
        scale = None
    return ImageSource(path, array, stored, scale, is_zarr=True)
