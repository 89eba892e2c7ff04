"""`aiod segment`: segment one substack (its box, halo included) and write its labels."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import claims, diskspace, imageio, planner, substack_labels
from ..models import get_adapter, params_namespace
from ..models.runtime import keep_libraries_out_of_home
from . import artifact_path, log


def segment(*, job_json: Path, image_path: Path, index: int, out: Path) -> None:
    """Segment one substack (its box, halo included) and write its labels."""
    keep_libraries_out_of_home(Path(out).resolve().parent)  # the task's folder
    job = json.loads(Path(job_json).read_text())
    with claims.Heartbeat(**(job.get("claim") or {})):  # tell waiting runs that this key is being computed
        _segment(job, image_path, index, out)


def _segment(job: dict, image_path: Path, index: int, out: Path) -> None:
    model = job["model"]
    adapter, params = get_adapter(model["adapter"]), params_namespace(model)
    the_plan = planner.Plan.from_dict(job["plan"])
    sub = the_plan.substacks[index]
    log(f"{job['id']} substack {index}: box {sub.box}, {model['family']}/{model['version']}")
    started = time.time()
    net = adapter.load(artifact_path(model), (model.get("artifact") or {}).get("config", {}), params)
    load_s = time.time() - started
    # the resolved path: a task sees a staged link, messages name the user's file
    with imageio.open_image(Path(image_path).resolve(), axes=job["image"]["declared_axes"]) as image:
        array = image.read(sub.box_slices, job["image"]["channel"])
    read_s = time.time() - started - load_s
    labels, _scores = adapter.segment(net, array, params, job["prepared"], job["image"]["scale"])
    del array
    seg_s = time.time() - started - load_s - read_s
    diskspace.expect(out, labels.nbytes)  # at most: the labels before compression
    n_objects = substack_labels.write_substack_labels(
        out, labels, index, attrs={"load_seconds": load_s, "read_seconds": read_s, "segment_seconds": seg_s}, plan=the_plan)
    log(f"{job['id']} substack {index}: {n_objects} objects, "
        f"load {load_s:.1f} s, read {read_s:.1f} s, segment {seg_s:.1f} s")
