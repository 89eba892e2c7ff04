"""The input image inside a published result (`--publish_image`): `<id>.ome.zarr` becomes one NGFF
image with its labels, which every NGFF reader opens as image and mask together (napari's
OME-Zarr reader looks for a label image's image two folders above it and nowhere else; a TIFF
input has no image group for the labels to name).

The image is written at the result's root as a multiscale image of the levels the labels have:
level 0 read from the input box by box (one chunk of the labels at a time, every channel, so
memory holds one box) and chunked as the labels, each next level every 2nd pixel of the one
before along the axes the labels halve (nearest neighbour, as the labels' levels), the channel
axis kept whole. The label images name it as `../../`. Only the published copy holds it: the
cache entry stays the mask alone, shared by every copy of the same result (aiod.publish).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from . import imageio
from .boxes import SLAB_VOXELS, pieces
from .ngff import NGFF_VERSION, _chunks, _downsample, _multiscales, _ome

METHOD = ("nearest neighbour, as the labels' levels: every 2nd pixel along the axes they halve; "
          "the channels kept")


def _levels(labels_root: Path) -> tuple[str, list[str], list[list[float]], tuple[int, ...]]:
    """(spatial axes, label names, the first label image's scales per level, its level-0 chunks)."""
    names = _ome(zarr.open_group(store=str(labels_root / "labels"), mode="r")).get("labels") or []
    group = zarr.open_group(store=str(labels_root / "labels" / names[0]), mode="r")
    ms = _ome(group)["multiscales"][0]
    axes = "".join(a["name"] for a in ms["axes"]).upper()
    scales = [list(d["coordinateTransformations"][0]["scale"]) for d in ms["datasets"]]
    return axes, names, scales, tuple(group["0"].chunks)


def level_names(labels_root: Path) -> set[str]:
    """The arrays the image adds at the result's root: one per level of the labels."""
    return {str(i) for i in range(len(_levels(Path(labels_root))[2]))}


def named_files(labels_root: Path, image: imageio.ImageSource) -> dict[str, bytes]:
    """{path relative to the result: zarr.json bytes}: the root group with the image's multiscales,
    and each label image naming it as `../../`."""
    labels_root = Path(labels_root)
    axes, names, scales, _ = _levels(labels_root)
    if image.spatial_axes != axes:
        raise ValueError(f"{image.path}: spatial axes {image.spatial_axes}, the labels' {axes}")
    channels = "C" if image.n_channels > 1 else ""
    full = [[1.0] * len(channels) + list(s) for s in scales]
    root = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": {
        "version": NGFF_VERSION, "multiscales": [_multiscales(Path(image.path).name, channels + axes, full, METHOD)]}}}
    out = {"zarr.json": json.dumps(root, indent=2).encode()}
    for name in names:
        rel = f"labels/{name}/zarr.json"
        meta = json.loads((labels_root / rel).read_text())
        ome = meta.setdefault("attributes", {}).setdefault("ome", {})
        ome["image-label"] = {**ome.get("image-label", {"version": NGFF_VERSION}), "source": {"image": "../../"}}
        out[rel] = json.dumps(meta, indent=2).encode()
    return out


def write_levels(root: Path, image: imageio.ImageSource, labels_root: Path) -> None:
    """Write the image's levels as arrays "0", "1", ... of the group at `root` (whose zarr.json
    named_files wrote), one box of the labels' chunks at a time."""
    axes, _, scales, chunks = _levels(Path(labels_root))
    lead = (1,) if image.n_channels > 1 else ()
    names = list(("c",) if lead else ()) + [a.lower() for a in axes]
    group = zarr.open_group(store=str(root), mode="r+", zarr_format=3)

    def new(level: int, shape):
        return group.create_array(str(level), shape=shape, chunks=_chunks(shape, lead + chunks), dtype=image.dtype,
                                  compressors=ZstdCodec(level=3), fill_value=0, dimension_names=names)

    prev = new(0, image.shape)
    keep = (slice(None),) * len(lead)
    for box in pieces(tuple((0, n) for n in image.spatial_shape), chunks, (0,) * len(axes), SLAB_VOXELS):
        prev[keep + box] = np.asarray(image.read(box))
    for level in range(1, len(scales)):
        factors = lead + tuple(int(round(b / a)) for a, b in zip(scales[level - 1], scales[level]))
        arr = new(level, tuple(-(-n // f) for n, f in zip(prev.shape, factors)))
        _downsample(prev, arr, factors)
        prev = arr
