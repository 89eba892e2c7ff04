"""`aiod merge`: substack labels -> one OME-Zarr mask and the result's manifest."""

from __future__ import annotations

import contextlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zarr

from .. import RESULT_FORMAT_VERSION, __version__, boxes, claims, imageio, measure, merge, ngff, planner, substack_labels, tables
from ..errors import AiodError
from . import JOB_FORMAT, MERGE_SETTINGS, label_name, log

# what the result's manifest keeps of each substack's SEGMENT (timings.substacks)
SUBSTACK_RECORD = ("read_seconds", "segment_seconds", "peak_memory_bytes", "device", "python")


def load_job(path: Path) -> dict:
    """A job file written by `plan`, or a bare substack plan (aiod-plan/1, docs/merge.md) seen
    as a job with no image, model or cache key: what `aiod merge` needs outside the pipeline."""
    data = json.loads(Path(path).read_text())
    if data.get("format") == JOB_FORMAT:
        return data
    if data.get("format") == planner.Plan.from_dict(data).to_dict().get("format"):
        return {"format": JOB_FORMAT, "id": Path(path).stem, "key": None, "image": {"scale": None},
                "model": None, "plan": data, "merge": MERGE_SETTINGS, "prepared": None}
    raise AiodError(f"{path}: neither a job file ({JOB_FORMAT}) nor a substack plan")


def merge_result(*, job_json: Path, substacks: list[Path], out: Path) -> dict:
    """Merge substack labels into `out/labels.ome.zarr` and write `out/manifest.json`."""
    job = load_job(job_json)
    merge.bound_malloc()  # this process only merges: keep freed slabs from piling up
    with claims.Heartbeat(**(job.get("claim") or {})):  # tell waiting runs that this key is being computed
        return write_result(job, substacks, Path(out))


def write_result(job: dict, substacks: list[Path], out: Path) -> dict:
    """The merged labels (`out/labels.ome.zarr`) and the result's manifest (`out/manifest.json`)."""
    the_plan = planner.Plan.from_dict(job["plan"])

    def fill(create_output, on_block):
        stats = merge.merge_substacks(the_plan, substacks, create_output,
                                      link_threshold=job["merge"]["link_threshold"], on_block=on_block)
        return stats.n_objects, stats.dtype

    timings = {}
    for path in substacks:
        index, arr = substack_labels.open_substack_labels(path)
        timings[str(index)] = {k: arr.attrs.get(k) for k in SUBSTACK_RECORD}
    return _write(job, Path(out), fill, timings, f"from {len(substacks)} substack(s), merged")


def write_whole(job: dict, labels, out: Path, record: dict) -> dict:
    """How SEGMENT finishes an image planned as one substack: its labels (the whole image, any
    integers, 0 = background) become the result, renumbered 1..n in the order of the model's ids
    and written chunk by chunk with their object table. The same result as merging the one
    substack's label file (its core is the image: merge's ids are the file's), without writing
    and reading that file. `record`: the substack's SUBSTACK_RECORD (timings, peak memory)."""
    the_plan = planner.Plan.from_dict(job["plan"])
    whole = tuple((0, n) for n in the_plan.spatial_shape)

    def fill(create_output, on_block):
        renumbered, n, _ = substack_labels.renumber(labels)
        dtype = merge.label_dtype(n)
        output = create_output(dtype)

        def one(piece):
            block = renumbered[piece].astype(dtype)
            output[piece] = block
            on_block(block, piece)

        chunks = getattr(output, "chunks", None)
        with zarr.config.set({"async.concurrency": 1}), ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
            list(pool.map(one, boxes.pieces(whole, chunks, (0,) * len(whole), boxes.SLAB_VOXELS)))
        return n, dtype.name

    return _write(job, Path(out), fill, {"0": {k: record.get(k) for k in SUBSTACK_RECORD}}, "in one substack, written")


def _write(job: dict, out: Path, fill, timings: dict, how: str) -> dict:
    """A result folder: `fill(create_output, on_block)` writes the labels into
    `create_output(dtype)`, passing every block it writes to `on_block(block, piece)` once, and
    returns (objects, dtype); here the OME-Zarr, its pyramid, the object table and the manifest."""
    the_plan = planner.Plan.from_dict(job["plan"])
    name = label_name(job)
    if out.exists():
        raise AiodError(f"{out}: already exists; merge writes a new folder")
    out.mkdir(parents=True)
    root = out / "labels.ome.zarr"
    scale = job["image"]["scale"]
    started = time.time()
    with contextlib.ExitStack() as stack:
        # the object table, from every output block as it is written, with the image's same box
        image = (stack.enter_context(imageio.open_image(Path(job["image"]["path"]), axes=job["image"].get("declared_axes")))
                 if job["image"].get("path") else None)
        objects = measure.ObjectStats(the_plan.spatial_axes, shape=the_plan.spatial_shape, scale=scale,
                                      n_channels=image.n_channels if image else 0, source=str(out))
        objects.meta.update(id=job["id"], image=job["image"].get("path"), labels=name)

        def measure_block(block, piece):
            objects.add(block, image.read(piece) if image else None, offset=tuple(p.start for p in piece))

        n_objects, dtype = fill(
            lambda dtype: ngff.create_labels(root, name, the_plan.spatial_shape, the_plan.spatial_axes, dtype, scale=scale),
            measure_block)
    levels = ngff.finish_labels(root, name)
    table = objects.finish()
    tables.write_tables(table, out / "objects")
    merge_s = time.time() - started
    manifest = {
        "format": "aiod-result/1", "result_format": RESULT_FORMAT_VERSION, "aiod_version": __version__,
        "key": job["key"], "id": job["id"], "image": job["image"], "model": job["model"],
        "plan": job["plan"], "merge": job["merge"], "prepared": job["prepared"],
        "labels": {"path": f"labels.ome.zarr/labels/{name}", "name": name, "dtype": dtype, "levels": levels},
        "n_objects": n_objects,
        # one row per object: size, centroid, bounding box, intensity per channel (docs/measure.md)
        "objects": {"parquet": "objects.parquet", "csv": "objects.csv", "rows": len(table)},
        "timings": {"substacks": timings, "merge_seconds": merge_s},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log(f"{job['id']}: {n_objects} objects {how} in {merge_s:.1f} s, {dtype}")
    return manifest
