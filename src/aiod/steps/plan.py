"""`aiod plan`: identify an image, compute its cache key, look it up, plan substacks on a miss."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from .. import RESULT_FORMAT_VERSION, batches, claims, imageio, planner
from ..cache import Cache, cache_key
from ..errors import InputError, PlanError
from ..fingerprint import INDEX_DIR, check_mode, fingerprint, remembered
from ..models import get_adapter, halo_floor, params_namespace
from . import JOB_FORMAT, MERGE_SETTINGS, artifact_path, log


def parse_memory(text: str) -> int:
    """'2 GB', '512MB', '1.5 GiB', '4.GB' -> bytes (powers of 1024, as Nextflow counts)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*\.?\s*([KMGT]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise PlanError(f"substack_memory: '{text}' is not a memory size (expected e.g. '2 GB' or '512 MB')")
    return int(float(m.group(1)) * 1024 ** "BKMGT".index((m.group(2) or "B").upper()))


def plan(*, image_path: Path, sample_id: str, axes: str | None, channel: int | None, model_json: Path,
         num_substacks: str, overlap: str, substack_memory: str, root_dir: Path, fingerprint_mode: str,
         out: Path, verify_cache: bool = False, claim_stale_seconds: float = claims.STALE_SECONDS,
         claim_poll_seconds: float = claims.POLL_SECONDS) -> dict:
    """Identify the image, compute its cache key, look it up, and plan substacks on a miss."""
    check_mode(fingerprint_mode)
    cache = Cache(root_dir)
    model, label = model_of(json.loads(Path(model_json).read_text()))
    adapter, params = get_adapter(model["adapter"]), params_namespace(model)
    # the resolved path: a task sees a staged link, messages name the user's file
    with imageio.open_image(Path(image_path).resolve(), axes=axes) as image:
        _check_model_fits_image(model, image, channel, image.path)
        the_plan, sizing = substack_plan(image, model, num_substacks, overlap, substack_memory)
        identity = image_identity(image_path, image, channel, fingerprint_mode, cache)
        key = result_key(identity, model, the_plan)
        family, version = model["family"], model["version"]
        hit = cache.lookup(family, version, key, verify=verify_cache)
        claim = None
        if hit is None:  # claim the key, or wait for the run computing it (src/aiod/claims.py)
            claim_file = claims.claim_path(cache.entry(family, version, key))
            claim = claims.acquire(claim_file, lambda: cache.entry(family, version, key).exists(), log,
                                   stale_seconds=claim_stale_seconds, poll_seconds=claim_poll_seconds)
            hit = cache.lookup(family, version, key, verify=verify_cache)
            if hit is not None and claim is not None:
                claims.release(claim_file, claim["token"])
                claim = None
        job = {
            "format": JOB_FORMAT, "id": sample_id, "key": key, "label": label,
            "image": {**identity, "path": str(Path(image_path).resolve()), "declared_axes": axes,
                      "scale": list(image.scale) if image.scale else None},
            "model": model, "plan": the_plan.to_dict(), "merge": MERGE_SETTINGS,
            "cache_entry": str(cache.entry(model["family"], model["version"], key)),
            "prepared": None, "cache_hit": hit is not None,
            # what a SEGMENT task of this image needs: fixed + per voxel of its box (aiod.batches)
            "task_memory": {"fixed": sizing["fixed_bytes"], "per_voxel": sizing["bytes_per_voxel"]},
            "cpu_seconds_per_voxel": getattr(adapter, "CPU_SECONDS_PER_MEGAVOXEL", 0.0) / 1e6,
            "claim": {"path": str(claim_file), "token": claim["token"], "interval": claim_stale_seconds / 10} if claim else None,
        }
        if hit is None:
            started = time.time()
            job["prepared"] = adapter.prepare(image, channel, params)
            log(f"{sample_id}: image-wide values {job['prepared']} in {time.time() - started:.1f} s")
    Path(out).write_text(json.dumps(job, indent=2))
    n = len(the_plan.substacks)
    log(f"{sample_id}: {image.axes} {'x'.join(map(str, image.shape))} -> "
        + (f"in the cache ({hit})" if hit else f"{n} substack(s), grid {the_plan.grid}, overlap {the_plan.overlap}, box starts on multiples of {the_plan.align}"))
    return job


def model_of(spec: dict) -> tuple[dict, str]:
    """(the model as it enters the cache key, the label naming it in this run) of a model spec
    as FETCH_ARTIFACTS writes it: what names the model in a run (aiod.model_list) is not what it
    is, and is kept out of the result."""
    model = dict(spec)
    label = model.pop("label", None) or f"{model['family']}_{model['version']}"
    for run_only in ("index", "subdir", "entry"):
        model.pop(run_only, None)
    return model, label


def substack_plan(image, model: dict, num_substacks: str, overlap: str, substack_memory: str) -> tuple[planner.Plan, dict]:
    """(the substack plan, the sizing it was made with) of an open image for a model: boxes
    start on the network's stride (every box sees the pixel grid the whole image does), the
    overlap is raised to the least the model needs for seam-free results, `auto` fits the
    memory budget with the family's measured memory per voxel and the artifact's size."""
    adapter, params = get_adapter(model["adapter"]), params_namespace(model)
    artifact = model.get("artifact") or {}
    ndim = len(image.spatial_shape)
    requested = planner.parse_num_substacks(num_substacks, ndim)
    halo = planner.parse_overlap(overlap, ndim)
    sizing = {"bytes_per_voxel": adapter.BYTES_PER_VOXEL + image.n_channels * image.dtype.itemsize,
              "memory_budget": parse_memory(substack_memory),
              "fixed_bytes": adapter.RUNTIME_BYTES + size_on_disk(artifact_path(model)),
              "align": adapter.align(artifact_path(model), artifact.get("config", {}), params)}
    the_plan = planner.plan_substacks(image.spatial_shape, image.spatial_axes, requested, halo, **sizing)
    floor = halo_floor(adapter, artifact_path(model), artifact.get("config", {}), params, image.spatial_axes)
    if any(o < f for o, f in zip(the_plan.overlap, floor)):
        least = f"{floor[0]} px" if len(set(floor)) == 1 else f"{','.join(map(str, floor))} px ({image.spatial_axes})"
        log(f"overlap raised to {least}: the least {model['family']}/{model['version']} needs for seam-free results")
        wider = tuple(float(max(f, o)) for f, o in zip(floor, the_plan.overlap))
        the_plan = planner.plan_substacks(image.spatial_shape, image.spatial_axes, requested, wider, **sizing)
    return the_plan, sizing


def image_identity(image_path: Path, image, channel: int | None, fingerprint_mode: str, cache: Cache,
                   read: bool = True) -> dict | None:
    """What identifies the image in the cache key: its content fingerprint (memoised under the
    cache, aiod.fingerprint), axes, shape, dtype and channel. With `read` False, the image is
    never read: None when its fingerprint is not remembered."""
    index = cache.dir / INDEX_DIR
    found = fingerprint(image_path, mode=fingerprint_mode, index_dir=index) if read else \
        remembered(image_path, mode=fingerprint_mode, index_dir=index)
    if found is None:
        return None
    return {"fingerprint": found, "axes": image.axes, "shape": list(image.shape), "dtype": str(image.dtype),
            "channel": channel}


def result_key(identity: dict, model: dict, the_plan: planner.Plan) -> str:
    """The cache key of a result: everything that can change it (docs/cache.md)."""
    return cache_key({"image": identity, "model": model_identity(model), "plan": the_plan.to_dict(),
                      "merge": MERGE_SETTINGS, "result_format": RESULT_FORMAT_VERSION})


def find_result(*, image_path: Path, spec: dict, num_substacks: str, overlap: str, substack_memory: str,
                root_dir: Path, fingerprint_mode: str, axes: str | None = None, channel: int | None = None,
                read: bool = False) -> Path | None:
    """The finished cache entry that PLAN would find for this image and model spec (as
    FETCH_ARTIFACTS writes it) with these settings, or None; the same plan and key as `plan`,
    without claiming anything or preparing a miss. With `read` False the image's bytes are never
    read: an image whose fingerprint is not remembered under the cache is a miss here."""
    check_mode(fingerprint_mode)
    cache = Cache(root_dir)
    model, _label = model_of(spec)
    with imageio.open_image(Path(image_path).resolve(), axes=axes) as image:
        the_plan = plan_for(image, spec, num_substacks, overlap, substack_memory, channel)
        identity = image_identity(image_path, image, channel, fingerprint_mode, cache, read=read)
    if identity is None:
        return None
    return cache.lookup(model["family"], model["version"], result_key(identity, model, the_plan))


def plan_for(image, spec: dict, num_substacks: str, overlap: str, substack_memory: str,
             channel: int | None = None) -> planner.Plan:
    """The substack plan PLAN makes for an open image and a model spec (as FETCH_ARTIFACTS
    writes it), after the same check that the model can take the image (InputError)."""
    model, _label = model_of(spec)
    _check_model_fits_image(model, image, channel, image.path)
    return substack_plan(image, model, num_substacks, overlap, substack_memory)[0]


def plan_batch(*, rows: list[dict], out_dir: Path, batch: str = "auto", name: str = "", publish: dict | None = None,
               **common) -> dict:
    """Plan every image of `rows` ({id, image, axes, channel}) into `out_dir/<id>.json`, and group
    the substacks of those not in the cache into SEGMENT tasks (aiod.batches). Writes and returns
    `out_dir/../batches.json`: {"hits": [id...], "n_substacks": {id: n}, "segment": [...]}.

    publish: {records, outdir, tiff, publish_mode, publish_image}: the cache hits are published now, as
    FINALIZE publishes a result (aiod.steps.finalize), their records into `records/<id>.json`:
    a rerun of cached results needs no task after its PLAN tasks."""
    rule = batches.parse_batch(batch)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hits, works, n_substacks = [], [], {}
    for row in rows:
        job = plan(image_path=Path(row["image"]), sample_id=row["id"], axes=row.get("axes") or None,
                   channel=None if row.get("channel") in (None, "") else int(row["channel"]),
                   out=out_dir / f"{row['id']}.json", **common)
        n_substacks[row["id"]] = len(job["plan"]["substacks"])
        if job["cache_hit"]:
            hits.append(row["id"])
            continue
        boxes = planner.Plan.from_dict(job["plan"]).substacks
        works.append(batches.Work(row["id"], [math.prod(sub.box_shape) for sub in boxes],
                                  job["task_memory"]["fixed"], job["task_memory"]["per_voxel"],
                                  job["cpu_seconds_per_voxel"]))
    summary = {"hits": hits, "n_substacks": n_substacks,
               "segment": batches.segment_batches(works, rule, prefix=f"{name}." if name else "")}
    (out_dir.parent / "batches.json").write_text(json.dumps(summary, indent=2))
    log(f"{len(rows)} image(s): {len(hits)} in the cache, {sum(len(b['items']) for b in summary['segment'])} substack(s) "
        f"to segment in {len(summary['segment'])} task(s)")
    if publish is not None:
        from .finalize import finalize_batch

        records = Path(publish["records"])
        records.mkdir(parents=True, exist_ok=True)
        finalize_batch([(i, out_dir / f"{i}.json", None) for i in hits], workdir=records, root_dir=common["root_dir"],
                       tiff=publish.get("tiff", False), outdir=publish.get("outdir"),
                       publish_mode=publish.get("publish_mode", "copy"), publish_image=publish.get("publish_image", False))
    return summary


def size_on_disk(path: Path | None) -> int:
    """Bytes of an artifact file or folder: about what its weights take once loaded."""
    if path is None:
        return 0
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def model_identity(model: dict) -> dict:
    """What of a model spec can change a result: not where its artifact was found, only what it is."""
    artifact = model.get("artifact") or {}
    return {"family": model["family"], "adapter": model["adapter"], "version": model["version"], "task": model["task"],
            "params": model["params"], "artifact_sha256": artifact.get("sha256"), "artifact_config": artifact.get("config")}


def _check_model_fits_image(model: dict, image, channel: int | None, image_path) -> None:
    """Refuse, before any work, an image the model version cannot take (dimensions, channels)."""
    name = f"{model['family']}/{model['version']}"
    ndim = len(image.spatial_shape)
    if ndim not in model["axes"]["ndim"]:
        raise InputError(f"{image_path}: {name} segments {' or '.join(f'{n}D' for n in model['axes']['ndim'])} images; "
                         f"this one is {ndim}D ({image.axes})")
    for pname in model["channel_params"]:
        value = model["params"][pname]
        if value is not None and value >= image.n_channels:
            raise InputError(f"{image_path}: parameter '{pname}' of {name} is channel {value}, but the image has "
                             f"{image.n_channels} channel(s), numbered from 0")
    n_in = 1 if channel is not None or "C" not in image.axes else image.n_channels
    if not model["channel_params"] and n_in not in model["axes"]["channels"]:
        raise InputError(f"{image_path}: {name} takes {' or '.join(map(str, model['axes']['channels']))} channel(s); "
                         f"this image has {n_in}: choose one with the samplesheet's 'channel' column")
