"""Images and masks as napari layer data, lazily.

A published mask (`<id>.ome.zarr/labels/<name>/0, 1, ...`) becomes a list of zarr arrays, one per
pyramid level, which napari shows as a multiscale labels layer reading only the chunks on screen:
level 0 is never read whole. While a run goes, each substack's labels are shown as soon as its
task has written them (`add_substack`). An image file is opened the same way (a TIFF through tifffile's zarr
view of its pages, an OME-Zarr by its multiscales). An image layer that is not a file yet is
written as OME-Zarr (aiod.ngff.write_image) before a run, so the pipeline can read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr


def _ome(node) -> dict:
    attrs = dict(node.attrs)
    return dict(attrs.get("ome") or attrs)


def label_levels(result: Path, name: str | None = None) -> tuple[list, list[float], str]:
    """(level arrays, level-0 scale, label name) of a label image in an OME-Zarr result."""
    result = Path(result)
    if name is None:
        names = _ome(zarr.open_group(store=str(result / "labels"), mode="r")).get("labels") or []
        if not names:
            raise FileNotFoundError(f"{result}: no label images listed in labels/")
        name = names[0]
    group = zarr.open_group(store=str(result / "labels" / name), mode="r")
    datasets = _ome(group)["multiscales"][0]["datasets"]
    levels = [group[d["path"]] for d in datasets]
    scale = datasets[0]["coordinateTransformations"][0]["scale"]
    return levels, [float(s) for s in scale], name


def image_levels(path: Path) -> tuple[list, str]:
    """(level arrays, stored axes) of an image file, opened lazily; axes from aiod.imageio."""
    from aiod.imageio import open_image
    path = Path(path)
    with open_image(path) as source:
        axes = source.source_axes
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        store = tifffile.imread(path, aszarr=True)
        node = zarr.open(store, mode="r")
        if isinstance(node, zarr.Group):
            arrays = [node[k] for k in sorted(node.array_keys(), key=lambda k: int(k) if k.isdigit() else 0)]
        else:
            arrays = [node]
        return arrays, axes
    group = zarr.open_group(store=str(path), mode="r")
    ms = _ome(group).get("multiscales")
    if ms:
        return [group[d["path"]] for d in ms[0]["datasets"]], axes
    return [group[k] for k in sorted(group.array_keys())][:1], axes


def result_layers(result: Path, image: Path | None, name: str | None = None, image_scale=None) -> list[tuple]:
    """A published (or cached) mask over its image as napari layer data, (data, kwargs, type):
    the image file opened lazily (when it exists; none when `image_scale`, the scale of an image
    layer already shown, is given), then the multiscale labels."""
    levels, scale, label_name = label_levels(result)
    title = name or label_name
    out = []
    if image_scale is None and image is not None and Path(image).exists():
        arrays, axes = image_levels(Path(image))
        spatial = iter(scale)
        per_axis = [next(spatial, 1.0) if a in "ZYX" else 1.0 for a in axes]
        kwargs = {"multiscale": len(arrays) > 1, "name": f"{title} image"}
        if "C" in axes and arrays[0].shape[axes.index("C")] > 1:
            kwargs["channel_axis"] = axes.index("C")
            del per_axis[axes.index("C")]
        out.append((arrays if len(arrays) > 1 else arrays[0], {**kwargs, "scale": per_axis}, "image"))
    elif image_scale is not None:
        scale = list(image_scale)[-len(scale):]
    # napari takes a pyramid as a list of two or more levels; a one-level mask is its zarr array
    out.append((levels if len(levels) > 1 else levels[0], {"multiscale": len(levels) > 1, "scale": scale, "name": title},
                "labels"))
    return out


def add_result(viewer, result: Path, image: Path | None, image_layer=None, name: str | None = None):
    """Add a published (or cached) mask over its image (result_layers): the image layer given,
    or the image file. Returns the labels layer."""
    layer = None
    for data, kwargs, kind in result_layers(result, image, name, None if image_layer is None else image_layer.scale):
        layer = viewer.add_image(data, **kwargs) if kind == "image" else viewer.add_labels(data, **kwargs)
    return layer


def add_substack(viewer, found):
    """One finished substack's labels as they came from its SEGMENT task (command.Substack), over
    its image: a substack's `labels` array is indexed in image coordinates (zero outside its box),
    a one-substack image's result is its mask. Its ids are the substack's own until the merge
    numbers them."""
    scale = found.scale
    if found.is_result:
        levels, result_scale, _ = label_levels(found.path)
        data, scale = levels[0], scale or result_scale
    else:
        data = zarr.open_array(store=str(found.path), mode="r")
    return viewer.add_labels(data, name=found.name, opacity=0.5,
                             scale=list(scale)[-data.ndim:] if scale is not None else None)


def add_plan(viewer, name: str, plan, scale=None):
    """A substack plan as a shapes layer: one rectangle per substack (its core, in Y and X;
    planning.rectangles), numbered, with each substack's grid position, core and box (with the
    overlap) as features. A layer of the same name is replaced."""
    from .planning import features, rectangles
    if name in viewer.layers:
        viewer.layers.remove(name)
    return viewer.add_shapes(rectangles(plan), shape_type="rectangle", name=name, features=features(plan),
                             edge_color="yellow", face_color="transparent", edge_width=2,
                             text={"string": "{substack}", "color": "yellow"},
                             scale=list(scale)[-2:] if scale is not None else None)


def save_layer(layer, folder: Path, sample_id: str) -> Path:
    """Write an image layer as `<folder>/<id>.ome.zarr` (NGFF 0.5) for the pipeline to read.
    2D layers are YX, 3D ZYX; an RGB or multiscale layer is refused."""
    from aiod import ngff
    if getattr(layer, "rgb", False):
        raise ValueError(f"layer '{layer.name}': RGB layers cannot be segmented; split the channels first")
    if getattr(layer, "multiscale", False):
        raise ValueError(f"layer '{layer.name}': a multiscale layer is a file already; pick its file instead")
    data = layer.data
    if data.ndim not in (2, 3):
        raise ValueError(f"layer '{layer.name}': {data.ndim} dimensions; expected 2 (YX) or 3 (ZYX)")
    axes = "YX" if data.ndim == 2 else "ZYX"
    out = Path(folder) / f"{sample_id}.ome.zarr"
    out.parent.mkdir(parents=True, exist_ok=True)
    ngff.write_image(out, np.asarray(data), axes=axes, scale=[float(s) for s in layer.scale])
    return out
