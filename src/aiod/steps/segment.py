"""`aiod segment`: segment substacks (each its box, halo included) and write their labels.

A SEGMENT task takes a batch of substacks, from one image or many (aiod.batches), and loads the
model once for all of them. An image planned as one substack needs no merge: its labels become
the result here, renumbered and written as OME-Zarr by MERGE's writer (steps.merge.write_whole),
with no label file in between."""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from pathlib import Path

from .. import claims, diskspace, imageio, planner, substack_labels
from ..models import get_adapter, params_namespace
from ..models.runtime import device_in_use, keep_libraries_out_of_home
from . import artifact_path, log
from .merge import write_whole


def segment(*, job_json: Path, image_path: Path, index: int, out: Path) -> None:
    """Segment one substack (its box, halo included) and write its labels."""
    segment_batch([(Path(job_json), Path(image_path), index, Path(out))])


def segment_batch(items: list[tuple[Path, Path, int, Path]]) -> None:
    """Segment each (job file, image, substack index, out) in turn, with the model loaded once.
    `out` gets the substack's label file, or the finished result (labels.ome.zarr + manifest.json)
    when the image is one substack."""
    keep_libraries_out_of_home(Path(items[0][3]).resolve().parent)  # the task's folder
    jobs = {path: json.loads(Path(path).read_text()) for path in dict.fromkeys(p for p, _, _, _ in items)}
    nets: dict[str, tuple] = {}
    with contextlib.ExitStack() as stack:
        for job in jobs.values():  # tell waiting runs that these keys are being computed
            stack.enter_context(claims.Heartbeat(**(job.get("claim") or {})))
        for job_path, image_path, index, out in items:
            job = jobs[job_path]
            model_key = json.dumps(job["model"], sort_keys=True)
            if model_key not in nets:
                nets[model_key] = _load(job["model"])
            _segment(job, image_path, index, Path(out), *nets[model_key])


def _load(model: dict) -> tuple:
    started = time.time()
    net = get_adapter(model["adapter"]).load(artifact_path(model), (model.get("artifact") or {}).get("config", {}),
                                             params_namespace(model))
    log(f"{model['family']}/{model['version']} loaded in {time.time() - started:.1f} s")
    return net, time.time() - started


def _segment(job: dict, image_path: Path, index: int, out: Path, net, load_s: float) -> None:
    model = job["model"]
    adapter, params = get_adapter(model["adapter"]), params_namespace(model)
    the_plan = planner.Plan.from_dict(job["plan"])
    sub = the_plan.substacks[index]
    log(f"{job['id']} substack {index}: box {sub.box}, {model['family']}/{model['version']}")
    started = time.time()
    # the resolved path: a task sees a staged link, messages name the user's file
    with imageio.open_image(Path(image_path).resolve(), axes=job["image"]["declared_axes"]) as image:
        array = image.read(sub.box_slices, job["image"]["channel"])
    read_s = time.time() - started
    labels, _scores = adapter.segment(net, array, params, job["prepared"], job["image"]["scale"],
                                      origin=tuple(a for a, _ in sub.box))
    del array
    seg_s = time.time() - started - read_s
    record = {"load_seconds": load_s, "read_seconds": read_s, "segment_seconds": seg_s,
              # the task's peak so far (Linux counts KiB), where it ran, in which environment
              "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "device": device_in_use(), "python": sys.prefix}
    diskspace.expect(out, labels.nbytes)  # at most: the labels before compression
    log(f"{job['id']} substack {index}: read {read_s:.1f} s, segment {seg_s:.1f} s")
    if len(the_plan.substacks) == 1:  # the whole image in one box: its result is written here, no MERGE task
        write_whole(job, labels, out, record)
        return
    n_objects = substack_labels.write_substack_labels(out, labels, index, attrs=record, plan=the_plan)
    log(f"{job['id']} substack {index}: {n_objects} objects")
