"""A run from the widget as files and a command line, and what its output says (no Qt here).

`write_inputs` writes the same samplesheet and `--model_params` (or, for several models,
`--models`) file a person would write for the command line; `command_line` is the `nextflow run main.nf ...` that runs them. `Progress`
reads Nextflow's `-ansi-log false` lines (a task submitted or taken from -resume's cache) and
the run's trace file (a line per finished task) to count finished tasks; `finished_substacks`
finds, from the same trace, the labels each finished SEGMENT task wrote in its work folder;
`error_line` finds the pipeline's one-line `AIOD ERROR:` message.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

IMAGE_SUFFIXES = (".ome.zarr", ".ome.tiff", ".ome.tif", ".zarr", ".tiff", ".tif")
SUBMITTED = re.compile(r"^\[[0-9a-f]{2}/[0-9a-f]{6}\] (Submitted|Cached) process > (\S+)")
FINISHED = {"COMPLETED", "FAILED", "CACHED", "ABORTED"}


@dataclass
class RunRequest:
    """What the widget's fields say. `images`: (id, path) pairs; `params`: the parameters that
    differ from the version's defaults."""
    images: list[tuple[str, str]]
    model: str
    version: str
    task: str
    params: dict = field(default_factory=dict)
    num_substacks: str = "auto"
    overlap: str = "32"
    substack_memory: str = "6 GB"  # the pipeline's defaults (nextflow_schema.json)
    fingerprint: str = "full"
    profile: str = "local"
    outdir: str = "results"
    root_dir: str = "~/.nextflow/aiod"
    save_tiff: bool = False
    publish_image: bool = False  # the image written into each result: napari-ome-zarr opens both
    # several models, compared (`--models`): {model, version, task, params} entries; empty: the one above
    models: list = field(default_factory=list)
    labels: list = field(default_factory=list)  # each model's label (aiod.model_list), as the run names its results

    def entries(self) -> list[dict]:
        """The run's models as `--models` entries: the list, or the one model."""
        return [dict(e) for e in self.models] or [
            {"model": self.model, "version": self.version, "task": self.task, "params": dict(self.params)}]

    def result_folder(self, label: str) -> Path:
        """Where the run publishes a model's results: <outdir>/<label>/ for several models, else <outdir>/."""
        out = Path(self.outdir).expanduser()
        return out / label if self.models else out


def image_id(path: str | Path, taken=()) -> str:
    """A samplesheet id from a file name: its stem without image suffixes, other characters
    than letters, digits, '.', '_', '-' replaced by '_', and a number added when taken."""
    name = Path(str(path).rstrip("/")).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    base = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "image"
    out, n = base, 1
    while out in taken:
        n += 1
        out = f"{base}_{n}"
    return out


def write_inputs(request: RunRequest, folder: Path) -> dict[str, Path]:
    """samplesheet.csv (and model_params.yaml when a parameter is set) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"input": folder / "samplesheet.csv"}
    with open(files["input"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image"])
        for sample_id, path in request.images:
            writer.writerow([sample_id, str(Path(path).expanduser().resolve())])
    if request.models:
        files["models"] = folder / "models.yaml"
        files["models"].write_text(yaml.safe_dump(request.entries(), sort_keys=False))
    elif request.params:
        files["model_params"] = folder / "model_params.yaml"
        files["model_params"].write_text(yaml.safe_dump(dict(request.params), sort_keys=False))
    return files


def command_line(request: RunRequest, files: dict[str, Path], nextflow: str, main_nf: Path,
                 suffix: str) -> list[str]:
    """The `nextflow run` command for the request; `suffix` names its trace file."""
    args = [nextflow, "run", str(main_nf), "-profile", request.profile, "-ansi-log", "false",
            "--input", str(files["input"]),
            "--outdir", str(Path(request.outdir).expanduser().resolve()),
            "--root_dir", str(Path(request.root_dir).expanduser().resolve())]
    if "models" in files:
        args += ["--models", str(files["models"])]
    else:
        args += ["--model", request.model, "--model_version", request.version, "--task", request.task]
    args += ["--num_substacks", str(request.num_substacks), "--overlap", str(request.overlap),
             "--substack_memory", str(request.substack_memory), "--fingerprint", str(request.fingerprint),
             "--trace_report_suffix", suffix]
    if "model_params" in files:
        args += ["--model_params", str(files["model_params"])]
    if request.save_tiff:
        args.append("--save_tiff")
    if request.publish_image:
        args.append("--publish_image")
    return args


def trace_file(outdir: str | Path, suffix: str) -> Path:
    """Where nextflow.config puts the run's trace."""
    return Path(outdir).expanduser().resolve() / "pipeline_info" / f"execution_trace_{suffix}.txt"


class Progress:
    """Tasks started (from the log lines) and finished (from the trace)."""

    def __init__(self):
        self.started = 0
        self.finished = 0

    def feed_line(self, line: str) -> None:
        if SUBMITTED.match(line):
            self.started += 1

    def read_trace(self, path: Path) -> None:
        rows = _trace_rows(path)
        if rows:
            self.finished = sum(1 for r in rows if r.get("status") in FINISHED)
            self.started = max(self.started, self.finished)


def _trace_rows(path: Path) -> list[dict]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, ln.split("\t"))) for ln in lines[1:] if ln.count("\t") + 1 == len(header)]


@dataclass(frozen=True)
class Substack:
    """The labels one SEGMENT task wrote for one substack: `path` is the substack's `labels` array
    (aiod-substack/2: indexed in image coordinates, so it lies over its image as it is), or, for an
    image of one substack, the finished result (an OME-Zarr folder)."""
    id: str
    label: str
    substack: int  # 0-based
    n: int
    path: Path
    is_result: bool
    scale: tuple | None = None  # the image's voxel size per spatial axis (None: unknown)
    core: tuple = ()  # the substack's core and box: (start, stop) per spatial axis, as PLAN planned them
    box: tuple = ()

    @property
    def name(self) -> str:
        return f"{self.id} {self.label} substack {self.substack + 1}/{self.n}"


def finished_substacks(trace: Path, seen: set) -> list[Substack]:
    """The substacks of the SEGMENT tasks the trace lists as finished (or taken from -resume's
    cache) whose work folder is not in `seen` yet; adds their folders to `seen`. Each task's
    items.tsv says which job (the image's plan, PLAN's output), substack and output folder each
    of its items is."""
    found = []
    for row in _trace_rows(trace):
        if row.get("process", "").split(":")[-1] != "SEGMENT" or row.get("status") not in ("COMPLETED", "CACHED"):
            continue
        workdir = Path(row.get("workdir", ""))
        if not row.get("workdir") or workdir in seen:
            continue
        try:
            items = [ln.split("\t") for ln in (workdir / "items.tsv").read_text().splitlines() if ln.strip()]
        except OSError:
            continue
        seen.add(workdir)
        jobs: dict[str, dict] = {}
        for job_path, _image, substack, out in items:
            try:
                job = jobs.get(job_path) or jobs.setdefault(job_path, json.loads((workdir / job_path).read_text()))
            except (OSError, ValueError):
                continue
            n, out = len(job["plan"]["substacks"]), workdir / out
            result = out / "labels.ome.zarr"
            path, is_result = (result, True) if result.is_dir() else (out / "labels", False)
            if path.exists():
                scale, planned = (job.get("image") or {}).get("scale"), job["plan"]["substacks"][int(substack)]
                found.append(Substack(job["id"], job.get("label") or "", int(substack), n, path, is_result,
                                      tuple(scale) if scale else None, tuple(map(tuple, planned["core"])),
                                      tuple(map(tuple, planned["box"]))))
    return found


def error_line(output: str) -> str | None:
    """The pipeline's last `AIOD ERROR:` line (without Nextflow's `ERROR ~ ` in front)."""
    found = None
    for line in output.splitlines():
        at = line.find("AIOD ERROR:")
        if at >= 0:
            found = line[at:].strip()
    return found


def published_records(outdir: str | Path, ids) -> list[dict]:
    """The records (`<outdir>/<id>.json`, aiod-record/1) of the given ids that exist."""
    out = []
    for sample_id in ids:
        path = Path(outdir).expanduser() / f"{sample_id}.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("format", "").startswith("aiod-record/"):
            out.append(record)
    return out
