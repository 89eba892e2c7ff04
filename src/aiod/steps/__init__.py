"""The pipeline's steps, one module each (plan, segment, merge, finalize); `aiod <step>` (cli.py)
and the Nextflow processes call them. Each composes the library modules and writes the files its
process declares. One module per step keeps what each task imports apart, so that editing one
library module reruns only the tasks that use it on -resume (src/aiod/sources.py).

The job file (`plan.json`, written by `plan`, read by every later step) carries everything a
step needs: the image's identity and axes, the resolved model, the substack plan, the cache key.
"""

from __future__ import annotations

from pathlib import Path

JOB_FORMAT = "aiod-job/1"
MERGE_SETTINGS = {"rule": "core-ownership+seam-links", "link_threshold": 0.5}


def log(message: str) -> None:
    print(f"[aiod] {message}", flush=True)


def artifact_path(model: dict) -> Path | None:
    artifact = model.get("artifact")
    return Path(artifact["path"]) if artifact else None


def label_name(job: dict) -> str:
    return f"{job['model']['family']}_{job['model']['version']}" if job["model"] else "segmentation"
