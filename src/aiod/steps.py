"""The pipeline's steps, one function each; `aiod <step>` (cli.py) and the Nextflow processes
call them. Each composes the library modules and writes the files its process declares.

The job file (`plan.json`, written by `plan`, read by every later step) carries everything a
step needs: the image's identity and axes, the resolved model, the substack plan, the cache key.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np

from . import RESULT_FORMAT_VERSION, __version__, imageio, merge, ngff, planner, substack_labels
from .cache import Cache, cache_key
from .fingerprint import fingerprint
from .errors import AiodError, PlanError
from .models import get_family

JOB_FORMAT = "aiod-job/1"
MERGE_SETTINGS = {"rule": "core-ownership+seam-links", "link_threshold": 0.5}


def log(message: str) -> None:
    print(f"[aiod] {message}", flush=True)


def parse_memory(text: str) -> int:
    """'2 GB', '512MB', '1.5 GiB', '4.GB' -> bytes (powers of 1024, as Nextflow counts)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*\.?\s*([KMGT]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise PlanError(f"substack_memory: '{text}' is not a memory size (expected e.g. '2 GB' or '512 MB')")
    return int(float(m.group(1)) * 1024 ** "BKMGT".index((m.group(2) or "B").upper()))


def plan(*, image_path: Path, sample_id: str, axes: str | None, channel: int | None, model_json: Path,
         num_substacks: str, overlap: str, substack_memory: str, root_dir: Path, fingerprint_mode: str,
         out: Path) -> dict:
    """Identify the image, compute its cache key, look it up, and plan substacks on a miss."""
    model = json.loads(Path(model_json).read_text())
    family = get_family(model["family"])
    params = family.Params(**model["params"])
    with imageio.open_image(image_path, axes=axes) as image:
        ndim = len(image.spatial_shape)
        requested = planner.parse_num_substacks(num_substacks, ndim)
        halo = planner.parse_overlap(overlap, ndim)
        sizing = {"bytes_per_voxel": family.BYTES_PER_VOXEL + image.n_channels * image.dtype.itemsize,
                  "memory_budget": parse_memory(substack_memory)}
        the_plan = planner.plan_substacks(image.spatial_shape, image.spatial_axes, requested, halo, **sizing)
        floor = family.min_halo(params)
        if min(the_plan.overlap) < floor:
            log(f"overlap raised to {floor} px: the least {model['family']}/{model['version']} needs for seam-free results")
            wider = tuple(float(max(floor, o)) for o in the_plan.overlap)
            the_plan = planner.plan_substacks(image.spatial_shape, image.spatial_axes, requested, wider, **sizing)
        identity = {
            "fingerprint": fingerprint(image_path, mode=fingerprint_mode),
            "axes": image.axes, "shape": list(image.shape), "dtype": str(image.dtype), "channel": channel,
        }
        key = cache_key({
            "image": identity, "model": model, "plan": the_plan.to_dict(), "merge": MERGE_SETTINGS,
            "result_format": RESULT_FORMAT_VERSION,
        })
        cache = Cache(root_dir)
        hit = cache.lookup(model["family"], model["version"], key)
        job = {
            "format": JOB_FORMAT, "id": sample_id, "key": key,
            "image": {**identity, "path": str(Path(image_path).resolve()), "declared_axes": axes,
                      "scale": list(image.scale) if image.scale else None},
            "model": model, "plan": the_plan.to_dict(), "merge": MERGE_SETTINGS,
            "cache_entry": str(cache.entry(model["family"], model["version"], key)),
            "prepared": None,
        }
        if hit is None:
            started = time.time()
            job["prepared"] = family.prepare(image, channel, params)
            log(f"{sample_id}: image-wide values {job['prepared']} in {time.time() - started:.1f} s")
    Path(out).write_text(json.dumps(job, indent=2))
    n = len(the_plan.substacks)
    Path(out).with_suffix(".status").write_text(f"{'hit' if hit else 'miss'} {n}\n")
    log(f"{sample_id}: {image.axes} {'x'.join(map(str, image.shape))} -> "
        + (f"in the cache ({hit})" if hit else f"{n} substack(s), grid {the_plan.grid}, overlap {the_plan.overlap}"))
    return job


def segment(*, job_json: Path, image_path: Path, index: int, out: Path) -> None:
    """Segment one substack (its box, halo included) and write its labels."""
    job = json.loads(Path(job_json).read_text())
    family = get_family(job["model"]["family"])
    params = family.Params(**job["model"]["params"])
    sub = planner.Plan.from_dict(job["plan"]).substacks[index]
    log(f"{job['id']} substack {index}: box {sub.box} on cpu ({family.NAME} runs on the CPU)")
    started = time.time()
    with imageio.open_image(image_path, axes=job["image"]["declared_axes"]) as image:
        array = image.read(sub.box_slices, job["image"]["channel"])
    read_s = time.time() - started
    labels = family.segment(array, params, job["prepared"], job["image"]["scale"])
    del array
    seg_s = time.time() - started - read_s
    substack_labels.write_substack_labels(out, labels, index, attrs={"read_seconds": read_s, "segment_seconds": seg_s})
    log(f"{job['id']} substack {index}: {int(np.count_nonzero(np.unique(labels)))} objects, read {read_s:.1f} s, segment {seg_s:.1f} s")


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
    the_plan = planner.Plan.from_dict(job["plan"])
    name = label_name(job)
    out = Path(out)
    if out.exists():
        raise AiodError(f"{out}: already exists; merge writes a new folder")
    out.mkdir(parents=True)
    root = out / "labels.ome.zarr"
    scale = job["image"]["scale"]
    started = time.time()
    merge.bound_malloc()  # this process only merges: keep freed slabs from piling up
    stats = merge.merge_substacks(
        the_plan, substacks,
        lambda dtype: ngff.create_labels(root, name, the_plan.spatial_shape, the_plan.spatial_axes, dtype, scale=scale),
        link_threshold=job["merge"]["link_threshold"],
    )
    levels = ngff.finish_labels(root, name)
    merge_s = time.time() - started
    timings = {}
    for path in substacks:
        index, arr = substack_labels.open_substack_labels(path)
        timings[str(index)] = {k: arr.attrs.get(k) for k in ("read_seconds", "segment_seconds")}
    manifest = {
        "format": "aiod-result/1", "result_format": RESULT_FORMAT_VERSION, "aiod_version": __version__,
        "key": job["key"], "id": job["id"], "image": job["image"], "model": job["model"],
        "plan": job["plan"], "merge": job["merge"], "prepared": job["prepared"],
        "labels": {"path": f"labels.ome.zarr/labels/{name}", "name": name, "dtype": stats.dtype, "levels": levels},
        "n_objects": stats.n_objects,
        "timings": {"substacks": timings, "merge_seconds": merge_s},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log(f"{job['id']}: {stats.n_objects} objects from {len(substacks)} substack(s), {stats.dtype}, merged in {merge_s:.1f} s")
    return manifest


def finalize(*, job_json: Path, result: Path | None, sample_id: str, root_dir: Path, tiff: bool, workdir: Path = Path(".")) -> dict:
    """Move a merged result into the cache (or find it there) and lay out what is published."""
    job = json.loads(Path(job_json).read_text())
    family, version, key = job["model"]["family"], job["model"]["version"], job["key"]
    cache = Cache(root_dir)
    cache.ensure()
    if result is not None:
        entry = cache.commit(Path(result), family, version, key)
    else:
        entry = cache.lookup(family, version, key)
        if entry is None:
            raise AiodError(f"{sample_id}: the cached result {job['cache_entry']} is gone since this run was planned; "
                            "run again without -resume to compute it")
    manifest = json.loads((entry / "manifest.json").read_text())
    link = Path(workdir) / f"{sample_id}.ome.zarr"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(entry / "labels.ome.zarr", link)
    if tiff:
        ngff.export_tiff(entry / "labels.ome.zarr", manifest["labels"]["name"], Path(workdir) / f"{sample_id}.tif")
    record = {
        "id": sample_id, "image": job["image"]["path"], "model": job["model"], "key": key,
        "cache_hit": result is None, "cache_entry": str(entry), "n_objects": manifest["n_objects"],
        "labels": manifest["labels"], "aiod_version": __version__,
    }
    (Path(workdir) / f"{sample_id}.json").write_text(json.dumps(record, indent=2))
    log(f"{sample_id}: {manifest['n_objects']} objects, {'from the cache' if result is None else 'stored in the cache'}: {entry}")
    return record


def label_name(job: dict) -> str:
    return f"{job['model']['family']}_{job['model']['version']}" if job["model"] else "segmentation"
