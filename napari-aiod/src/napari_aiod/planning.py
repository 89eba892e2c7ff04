"""What the pipeline will do with the widget's request, known before it runs (no Qt here).

Both answers come from the pipeline's own code (aiod.steps.plan), with the model spec that
RESOLVE_MODEL and FETCH_ARTIFACTS would give the run:

- `plan_of`: the substack plan PLAN makes for an image (`substack_plan`: the model's stride,
  its least overlap, `auto` fitted to the memory budget), drawn as one rectangle per substack;
- `cached`: the finished cache entry PLAN would find (`find_result`: the same plan and cache
  key), so that a result already computed opens without starting Nextflow (`open_cached`).

The request carries every setting these depend on (substacks, overlap, `substack_memory`,
`fingerprint`), as the run will be given them on its command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class NotKnownYet(Exception):
    """The request cannot be planned here (the model's weights are not fetched yet)."""


def model_spec(entry: dict, root_dir: Path) -> dict:
    """The model spec of one of the request's models (RunRequest.entries) as FETCH_ARTIFACTS
    writes it, from the artifacts already in the checkpoints under `root_dir`; NotKnownYet when
    the weights are not fetched yet."""
    from aiod.artifacts import fetched
    from aiod.models import resolve
    spec = resolve(entry["model"], entry["version"], entry["task"], entry.get("params") or {}, source="napari")
    spec["artifact"] = fetched(spec, Path(root_dir).expanduser()) if spec["locations"] else None
    if spec["locations"] and spec["artifact"] is None:
        raise NotKnownYet(f"the weights of {entry['model']}/{entry['version']} are not in the cache yet: "
                          "the first run fetches them")
    return spec


def layer_image(layer):
    """An image layer as the pipeline will read it (aiod.imageio's ImageSource over its data):
    YX or ZYX, its scale; the layer is not written."""
    from aiod.imageio import ImageSource
    axes = "YX" if layer.data.ndim == 2 else "ZYX"
    return ImageSource(Path(layer.name), layer.data, axes, dict(zip(axes, (float(s) for s in layer.scale))))


def plan_of(image, spec: dict, request):
    """PLAN's substack plan of an open image (aiod.imageio.ImageSource) for the request."""
    from aiod.steps.plan import plan_for
    return plan_for(image, spec, request.num_substacks, request.overlap, request.substack_memory)


def rectangles(plan) -> list[np.ndarray]:
    """Each substack's core as a rectangle in Y and X (its four corners, pixel edges), one per
    substack; a 3D plan's substacks are drawn over every plane, those of one column on top of
    each other."""
    out = []
    for sub in plan.substacks:
        (y0, y1), (x0, x1) = sub.core[-2:]
        out.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float) - 0.5)
    return out


def features(plan) -> dict[str, list]:
    """Per substack: its index, grid position, core and box (with the overlap) as text."""
    def ranges(rs):
        return " ".join(f"{a}{r0}:{r1}" for a, (r0, r1) in zip(plan.spatial_axes, rs))
    return {"substack": [s.index for s in plan.substacks],
            "grid": [",".join(map(str, s.grid_pos)) for s in plan.substacks],
            "core": [ranges(s.core) for s in plan.substacks],
            "box": [ranges(s.box) for s in plan.substacks]}


def cached(image_path: Path, spec: dict, request, read: bool = False) -> Path | None:
    """The cache entry a run of this request would take for the image, or None; with `read`
    False the image's bytes are never read (an image PLAN has not seen under this root is a
    miss here, and the run finds out)."""
    from aiod.steps.plan import find_result
    return find_result(image_path=Path(image_path), spec=spec, num_substacks=request.num_substacks,
                       overlap=request.overlap, substack_memory=request.substack_memory,
                       root_dir=Path(request.root_dir).expanduser(), fingerprint_mode=request.fingerprint,
                       read=read)


def draw_plans(viewer, items, request) -> list:
    """Each image's plan (`items`: (sample id, {"path"} or {"layer"}) pairs) drawn as a shapes
    layer `<id> substacks` over it (layers.add_plan); the layers."""
    from aiod.imageio import open_image
    from .layers import add_plan
    spec = model_spec(request.entries()[0], Path(request.root_dir))  # several models: the first one's plan
    drawn = []
    for sample_id, item in items:
        if "layer" in item:
            the_plan, scale = plan_of(layer_image(item["layer"]), spec, request), item["layer"].scale
        else:
            with open_image(Path(item["path"]).expanduser()) as image:
                the_plan, scale = plan_of(image, spec, request), image.scale
        drawn.append(add_plan(viewer, f"{sample_id} substacks", the_plan, scale))
    return drawn


def open_cached(viewer, request, layer_of: dict) -> list[tuple[str, str, Path, object]]:
    """Open each image of the request (`request.images`: (id, path)) whose result is in the
    cache, for each of its models (`request.labels` name them), as a labels layer over its image
    (layers.add_result): (id, model label, cache entry, layer) of each. An image saved from a
    layer (`layer_of`: id -> layer) is small and new: its fingerprint is computed. A model whose
    weights are not fetched yet, an image PLAN has not seen under this root, or one the lookup
    cannot read is left to the run, which reports its own errors."""
    from aiod.errors import AiodError
    from .layers import add_result
    hits = []
    for entry, label in zip(request.entries(), request.labels or [None]):
        try:
            spec = model_spec(entry, Path(request.root_dir))
        except (NotKnownYet, AiodError):
            continue
        for sample_id, path in request.images:
            try:
                found = cached(Path(path), spec, request, read=sample_id in layer_of)
            except (AiodError, OSError, ValueError):
                continue
            if found is not None:
                name = f"{sample_id} {label or json.loads((found / 'manifest.json').read_text())['labels']['name']}"
                if name in viewer.layers:
                    viewer.layers.remove(name)
                layer = add_result(viewer, found / "labels.ome.zarr", Path(path), layer_of.get(sample_id), name=name)
                hits.append((sample_id, label, found, layer))
    return hits
