"""Running the real Nextflow engine on the pipeline from the tests, and reading what it left."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from aiod.splitcheck import same_objects

ROOT = Path(__file__).resolve().parents[1]
NEXTFLOW = os.environ.get("AIOD_NEXTFLOW") or shutil.which("nextflow") or str(ROOT / "engine" / "nextflow")


def nextflow(args: list[str], cwd: Path, timeout: int = 900, project: Path = ROOT) -> subprocess.CompletedProcess:
    """Run `nextflow <args>` (offline) in `cwd`, with `main.nf` of `project`."""
    env = {**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true", "NXF_ANSI_LOG": "false"}
    args = [str(project / "main.nf") if a == "main.nf" else a for a in args]
    return subprocess.run([NEXTFLOW, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_pipeline(cwd: Path, *params: str, profile: str = "test", resume: bool = False, stub: bool = False,
                 project: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    args = ["run", "main.nf", "-profile", profile, "-ansi-log", "false", *params]
    if resume:
        args.append("-resume")
    if stub:
        args.append("-stub-run")
    proc = nextflow(args, cwd, project=project)
    if check and proc.returncode != 0:
        raise AssertionError(f"nextflow failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    return proc


def trace_rows(outdir: Path, suffix: str) -> list[dict]:
    """Rows of the execution trace written by the run whose trace_report_suffix is `suffix`."""
    path = outdir / "pipeline_info" / f"execution_trace_{suffix}.txt"
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def processes(rows: list[dict], name: str, status: str | None = None) -> list[dict]:
    return [r for r in rows if r["process"].split(":")[-1] == name and (status is None or r["status"] == status)]


def tree_digest(path: Path) -> str:
    """sha256 over every file (relative name + bytes) below `path`: equal iff byte-identical."""
    digest = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def cache_entries(root_dir: Path) -> list[Path]:
    """Finished or unfinished result folders under the cache."""
    cache = root_dir / "aiod_cache"
    return sorted(p for p in cache.glob("*/*_masks/*")) if cache.exists() else []


def read_mask(outdir: Path, sample_id: str) -> np.ndarray:
    from aiod import ngff
    return np.asarray(ngff.open_labels(outdir / f"{sample_id}.ome.zarr")[...])


def same_partition(a, b) -> bool:
    """Same objects up to renaming: the label pairs are a bijection, background to background."""
    return same_objects(a, b)