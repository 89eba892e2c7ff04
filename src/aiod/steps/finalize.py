"""`aiod finalize`: move a merged result into the cache (or find it there) and publish it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import __version__, claims, ngff, publish
from ..cache import Cache
from ..errors import AiodError
from . import label_name, log


def finalize_batch(items: list[tuple[str, Path, Path | None]], **common) -> list[dict]:
    """`finalize` for each (id, job file, result or None) in turn: one task publishes a batch."""
    return [finalize(job_json=job, result=result, sample_id=sample_id, **common) for sample_id, job, result in items]


def finalize(*, job_json: Path, result: Path | None, sample_id: str, root_dir: Path, tiff: bool,
             outdir: Path | None = None, publish_mode: str = "copy", publish_image: bool = False,
             workdir: Path = Path(".")) -> dict:
    """Move a merged result into the cache (or find it there) and publish it into `outdir`, with
    the input image written into it when `publish_image` (docs/output.md; the rules in
    aiod.publish). The task folder keeps a link to the cache entry's labels and the record, for
    the pipeline's later steps and its summary."""
    job = json.loads(Path(job_json).read_text())
    family, version, key = job["model"]["family"], job["model"]["version"], job["key"]
    cache = Cache(root_dir)
    cache.ensure()
    if result is not None:
        claim = job.get("claim") or {}
        with claims.Heartbeat(**claim):
            entry = cache.commit(Path(result), family, version, key)
        if claim:
            claims.release(claim["path"], claim["token"])
    else:
        entry = cache.lookup(family, version, key)  # re-checks that every file is there before publishing
        if entry is None:
            raise AiodError(f"{sample_id}: the cached result {job['cache_entry']} is gone or damaged since this run was planned; "
                            "run again without -resume to compute it")
    manifest = json.loads((entry / "manifest.json").read_text())
    labels = entry / "labels.ome.zarr"
    link = Path(workdir) / f"{sample_id}.ome.zarr"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(labels, link)
    record = {
        "id": sample_id, "image": job["image"]["path"], "model": job["model"], "model_label": job.get("label") or label_name(job),
        "key": key,
        "cache_hit": result is None, "cache_entry": str(entry), "n_objects": manifest["n_objects"],
        "labels": manifest["labels"], "aiod_version": __version__,
    }
    if outdir is not None:
        writer = (lambda path: ngff.export_tiff(labels, manifest["labels"]["name"], path)) if tiff else None
        image = (Path(job["image"]["path"]), job["image"].get("declared_axes")) if publish_image else None
        written = publish.publish(outdir=Path(outdir), sample_id=sample_id, labels=labels, record=record,
                                  mode=publish_mode, tiff_writer=writer, image=image)
        record = json.loads(written[".json"].read_text())
    (Path(workdir) / f"{sample_id}.json").write_text(json.dumps(record, indent=2))
    log(f"{sample_id}: {manifest['n_objects']} objects, {'from the cache' if result is None else 'stored in the cache'}: {entry}"
        + (f"; published to {outdir}" if outdir is not None else ""))
    return record
