"""napari's reader of AIoD results: `<id>.ome.zarr` opened in napari (File > Open, drag and drop)
as its image and its mask together, lazily, with no copy of the image.

The image is, in this order: the one inside the result (`--publish_image`), the OME-Zarr image
its labels name (`image-label.source.image`), or the input that the run's record (`<id>.json`
beside the result) names, a TIFF too; if none of them is there, the mask alone. A cache entry's
`labels.ome.zarr` opens the same way (its image named by the entry's manifest). A folder that is
not an AIoD result is left to other readers (napari-ome-zarr opens a result's mask, and its
image only when the result holds it).
"""

from __future__ import annotations

import json
from pathlib import Path

SUFFIX = ".ome.zarr"


def get_reader(path):
    """The reader for an AIoD result, or None (npe2's reader contribution)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if not (path / "labels" / "zarr.json").is_file() or named_input(path) is False:
        return None
    return read_result


def read_result(path) -> list[tuple]:
    from .layers import result_layers

    path = Path(path[0] if isinstance(path, list) else path)
    return result_layers(path, image_of(path))


def named_input(path: Path):
    """The input image the run's record (or the cache entry's manifest) names: a path, None when
    it names none, False when `path` is no AIoD result."""
    from aiod.publish import is_aiod_record

    if path.name.endswith(SUFFIX):
        record = path.with_name(path.name[: -len(SUFFIX)] + ".json")
        if is_aiod_record(record):
            image = json.loads(record.read_text()).get("image")
            return Path(image) if image else None
    manifest = path.parent / "manifest.json"
    if path.name == "labels.ome.zarr" and manifest.is_file():
        image = (json.loads(manifest.read_text()).get("image") or {}).get("path")
        return Path(image) if image else None
    return False


def image_of(path: Path) -> Path | None:
    """The result's image (module docstring), or None."""
    import zarr

    from aiod import ngff

    from .layers import _ome

    if ngff.image_group(path) is not None:  # the image inside the result
        return path
    names = _ome(zarr.open_group(store=str(path / "labels"), mode="r")).get("labels") or []
    for name in names[:1]:
        meta = json.loads((path / "labels" / name / "zarr.json").read_text())
        source = ((meta.get("attributes") or {}).get("ome") or {}).get("image-label", {}).get("source", {}).get("image")
        if source and (path / "labels" / name / source).is_dir():
            return (path / "labels" / name / source).resolve()
    named = named_input(path)
    return named if named and named.exists() else None
