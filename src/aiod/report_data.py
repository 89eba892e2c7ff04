"""What `aiod report` reads from a results folder, as plain dicts for the page (docs/report.md).

Records are `results/*.json` and `results/*/*.json` with `"format": "aiod-record/1"` (one model:
`results/<id>.json`; several: `results/<model_label>/<id>.json`). Each names its cache entry,
whose `manifest.json` holds the image's shape and the timings; an entry that is gone is noted,
never fatal. `comparison.json` and `evaluation.json` are optional, as are the samplesheet (ground
truth), the run's facts and the Nextflow trace.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AiodError

RECORD_FORMAT = "aiod-record/1"
COMPARISON_FORMAT = "aiod-comparison/1"
RUN_FIELDS = (("pipeline_version", "Pipeline version"), ("nextflow_version", "Nextflow version"),
              ("command", "Command"), ("profile", "Profile"), ("started", "Started"), ("duration", "Duration"))
SIZE_WALK_LIMIT = 20_000  # directory entries walked to size a zarr image before giving up
METRIC_KEYS = ("f1", "ap_50_95", "panoptic_quality", "dice")


@dataclass
class Result:
    """One published mask: a record, its label, its cache manifest (None when gone)."""

    id: str
    label: str
    record: dict
    manifest: dict | None
    mask: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> dict:
        return self.record.get("model") or {}

    @property
    def image(self) -> dict:
        """The image as the manifest describes it (path, axes, shape, dtype, scale, channel)."""
        image = dict((self.manifest or {}).get("image") or {})
        image.setdefault("path", self.record.get("image"))
        return image


def model_label(record: dict) -> str:
    model = record.get("model") or {}
    return record.get("model_label") or f"{model.get('family')}_{model.get('version')}"


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_results(results: Path) -> list[Result]:
    """Every record under `results` (one level of model folders), sorted by id then label."""
    found = []
    for path in sorted([*results.glob("*.json"), *results.glob("*/*.json")]):
        record = _json(path)
        if not record or record.get("format") != RECORD_FORMAT:
            continue
        notes = []
        manifest = None
        entry = record.get("cache_entry")
        if entry and (Path(entry) / "manifest.json").is_file():
            manifest = _json(Path(entry) / "manifest.json")
        if manifest is None:
            notes.append(f"cache entry {entry} is gone or unreadable: image facts and timings are missing")
        mask = (record.get("published") or {}).get(".ome.zarr")
        mask = Path(mask) if mask else path.with_name(f"{record.get('id', path.stem)}.ome.zarr")
        if not mask.exists():
            notes.append(f"mask {mask} is missing")
            mask = None
        found.append(Result(str(record.get("id", path.stem)), model_label(record), record, manifest, mask, notes))
    return sorted(found, key=lambda r: (r.id, r.label))


def object_voxels(result: Result):
    """The voxel count of every object of a result, from its object table (published beside the
    mask, else in its cache entry); None when neither can be read (the mask is counted instead)."""
    from .tables import read_table

    published = (result.record.get("published") or {}).get(".objects.parquet")
    entry = result.record.get("cache_entry")
    for path in (published, Path(entry) / "objects.parquet" if entry else None):
        if path and Path(path).is_file():
            try:
                return read_table(path, ["voxels"]).columns["voxels"]
            except AiodError:
                continue
    return None


def ground_truth(samplesheet: Path | None) -> dict[str, Path]:
    if samplesheet is None:
        return {}
    from .samplesheet import read_samplesheet
    return {s.id: s.ground_truth for s in read_samplesheet(samplesheet) if s.ground_truth is not None}


def evaluation(results: Path, labels: list[str]) -> dict[str, dict]:
    """label -> {"pooled": row or None, "images": {id: row}} from evaluation.json. Rows without
    "model", and a `pooled` that is one dict, belong to the only model."""
    data = _json(results / "evaluation.json")
    if not data:
        return {}
    only = labels[0] if len(labels) == 1 else None
    out: dict[str, dict] = {}
    pooled = data.get("pooled")
    for row in [pooled] if isinstance(pooled, dict) else (pooled or []):
        label = row.get("model") or only
        if label:
            out.setdefault(label, {"pooled": None, "images": {}})["pooled"] = row
    for row in data.get("images") or []:
        label = row.get("model") or only
        if label:
            out.setdefault(label, {"pooled": None, "images": {}})["images"][row["id"]] = row
    return out


def _seconds(result: Result) -> float | None:
    timings = (result.manifest or {}).get("timings") or {}
    subs = (timings.get("substacks") or {}).values()
    return sum(float(s.get("segment_seconds") or 0) for s in subs) if subs else None


def _megapixels(result: Result) -> float | None:
    shape = [int(n) for a, n in zip(result.image.get("axes") or "", result.image.get("shape") or []) if a in "ZYX"]
    return _prod(shape) / 1e6 if shape else None


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def comparison(results: Path, found: list[Result], scores: dict[str, dict]) -> dict:
    """The comparison table: comparison.json when there is one, else made from the records
    (and evaluation.json's pooled rows), best F1 first."""
    data = _json(results / "comparison.json")
    if data and data.get("format") == COMPARISON_FORMAT:
        return {"source": "comparison.json", "rank_by": data.get("rank_by", "f1"),
                "ground_truth": bool(data.get("ground_truth")), "rows": list(data.get("models") or [])}
    rows = []
    for label in sorted({r.label for r in found}):
        mine = [r for r in found if r.label == label]
        model = mine[0].model
        seconds = [s for s in map(_seconds, mine) if s is not None]
        mpx = [m for m in map(_megapixels, mine) if m is not None]
        pooled = (scores.get(label) or {}).get("pooled") or {}
        row = {"label": label, "family": model.get("family"), "version": model.get("version"),
               "task": model.get("task"), "params": model.get("params") or {}, "images": len(mine),
               "computed": sum(not r.record.get("cache_hit") for r in mine),
               "cached": sum(bool(r.record.get("cache_hit")) for r in mine),
               "objects": sum(int(r.record.get("n_objects") or 0) for r in mine),
               "segment_seconds": sum(seconds) if seconds else None, "megapixels": sum(mpx) if mpx else None,
               **{k: pooled.get(k) for k in METRIC_KEYS}}
        subs = [s for r in mine for s in (((r.manifest or {}).get("timings") or {}).get("substacks") or {}).values()]
        row["device"] = ", ".join(sorted({str(s["device"]) for s in subs if s.get("device")})) or None
        row["peak_memory_bytes"] = max((s["peak_memory_bytes"] for s in subs if s.get("peak_memory_bytes")), default=None)
        row["seconds_per_megapixel"] = (row["segment_seconds"] / row["megapixels"]
                                        if row["segment_seconds"] is not None and row["megapixels"] else None)
        rows.append(row)
    with_gt = any(r["f1"] is not None for r in rows)
    if with_gt:
        rows.sort(key=lambda r: -(r["f1"] if r["f1"] is not None else -1))
        rows[0]["best"] = True
    return {"source": "records", "rank_by": "f1", "ground_truth": with_gt, "rows": rows}


def model_cards(found: list[Result], table: dict) -> list[dict]:
    """One card per model label: the registry's metadata (None for a model not in the built-in
    registry) and the resolved parameters."""
    from . import registry
    try:
        families = registry.load_registry()
    except AiodError:
        families = {}
    cards, seen = [], set()
    order = [r["label"] for r in table["rows"]] + sorted({r.label for r in found})
    by_label = {r.label: r for r in found}
    rows = {r["label"]: r for r in table["rows"]}
    for label in order:
        if label in seen:
            continue
        seen.add(label)
        model = by_label[label].model if label in by_label else rows[label]
        family, version = model.get("family"), model.get("version")
        manifest = families.get(family)
        meta = manifest.versions[version].metadata if manifest and version in manifest.versions else None
        cards.append({"label": label, "family": family, "version": version, "task": model.get("task"),
                      "params": model.get("params") or {}, "description": manifest.description if manifest else None,
                      "meta": meta.model_dump() if meta else None,
                      "doi_url": f"https://doi.org/{meta.doi}" if meta and meta.doi else None})
    return cards


def disk_size(path: Path) -> int | None:
    """Bytes on disk: a file's size; a folder's summed file sizes, or None past
    SIZE_WALK_LIMIT entries (too many to be cheap)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    total, seen = 0, 0
    for top, dirs, files in os.walk(path):
        seen += len(dirs) + len(files)
        if seen > SIZE_WALK_LIMIT:
            return None
        total += sum(os.path.getsize(os.path.join(top, f)) for f in files)
    return total


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def inputs(found: list[Result], truth: dict[str, Path]) -> list[dict]:
    rows = {}
    for r in found:
        row = rows.setdefault(r.id, {"id": r.id, "models": [], "ground_truth": truth.get(r.id)})
        row["models"].append(r.label)
        image = r.image
        if "shape" in image and "shape" not in row:
            path = Path(image["path"]) if image.get("path") else None
            row.update(path=path, axes=image.get("axes"), shape=image.get("shape"), dtype=image.get("dtype"),
                       scale=image.get("scale"), channel=image.get("channel"),
                       size=human_bytes(disk_size(path)) if path else "—")
        row.setdefault("path", Path(image["path"]) if image.get("path") else None)
    return list(rows.values())


def timings(found: list[Result]) -> list[dict]:
    """Per image and model, from the cache manifests: seconds reading, segmenting (summed over
    substacks), merging; peak memory and device when the manifest has them."""
    rows = []
    for r in found:
        t = (r.manifest or {}).get("timings")
        if not t:
            continue
        subs = list((t.get("substacks") or {}).values())
        peaks = [s["peak_memory_bytes"] for s in subs if s.get("peak_memory_bytes")]
        rows.append({"id": r.id, "label": r.label, "substacks": len(subs), "cached": bool(r.record.get("cache_hit")),
                     "read": sum(float(s.get("read_seconds") or 0) for s in subs),
                     "segment": sum(float(s.get("segment_seconds") or 0) for s in subs),
                     "merge": float(t.get("merge_seconds") or 0),
                     "peak": human_bytes(max(peaks)) if peaks else "—", "peak_bytes": max(peaks) if peaks else None,
                     "device": ", ".join(sorted({str(s["device"]) for s in subs if s.get("device")})) or "—"})
    return rows


_DURATION = re.compile(r"([\d.]+)\s*(ms|s|m|h|d)")
_UNITS = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
_MEMORY = re.compile(r"([\d.]+)\s*([KMGTP]?B)", re.I)


def duration_seconds(text: str) -> float | None:
    """Nextflow trace durations ("1m 2s", "710ms") or raw milliseconds; None for "-"."""
    text = (text or "").strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) / 1000
    parts = _DURATION.findall(text)
    return sum(float(v) * _UNITS[u] for v, u in parts) if parts else None


def memory_bytes(text: str) -> float | None:
    """Nextflow trace memory ("191.6 MB", 1024-based) or raw bytes; None for "-"."""
    text = (text or "").strip()
    if re.fullmatch(r"\d+", text):
        return float(text)
    m = _MEMORY.fullmatch(text)
    return float(m.group(1)) * 1024 ** "BKMGTP".index(m.group(2)[0].upper()) if m else None


def trace(path: Path) -> dict:
    """The trace's tasks and a summary per process (tasks, summed and longest run time, largest
    peak RSS)."""
    with open(path, newline="") as fh:
        tasks = list(csv.DictReader(fh, delimiter="\t"))
    per = {}
    for t in tasks:
        process = (t.get("process") or t.get("name", "").split(" (")[0]).split(":")[-1]
        t.update(process=process, seconds=duration_seconds(t.get("realtime", "")),
                 rss=memory_bytes(t.get("peak_rss", "")))
        p = per.setdefault(process, {"process": process, "tasks": 0, "seconds": 0.0, "longest": 0.0, "rss": 0.0,
                                     "failed": 0})
        p["tasks"] += 1
        p["failed"] += t.get("status") not in ("COMPLETED", "CACHED")
        p["seconds"] += t["seconds"] or 0
        p["longest"] = max(p["longest"], t["seconds"] or 0)
        p["rss"] = max(p["rss"], t["rss"] or 0)
    for p in per.values():
        p["peak"] = human_bytes(p["rss"] or None)
    return {"path": str(path), "tasks": tasks, "processes": list(per.values())}


def run_facts(run: dict | None, found: list[Result]) -> list[tuple[str, str]]:
    """(name, value) of the run facts given; the pipeline version from the records otherwise."""
    run = dict(run or {})
    if not run.get("pipeline_version"):
        versions = sorted({str(r.record["aiod_version"]) for r in found if r.record.get("aiod_version")})
        if versions:
            run["pipeline_version"] = ", ".join(versions) + " (aiod, from the records)"
    return [(name, str(run[key])) for key, name in RUN_FIELDS if run.get(key) not in (None, "")]


def region_tables(found: list[Result], limit: int = 8) -> list[dict]:
    """The region tables COUNT published beside the masks (<id>.regions.csv): per table, its
    regions with a density (the rows for objects outside the atlas or on 0 left out)."""
    import math

    out = []
    for r in found:
        published = (r.record.get("published") or {}).get(".ome.zarr")
        path = Path(published).parent / f"{r.id}.regions.csv" if published else None
        if path is None or not path.is_file() or len(out) >= limit:
            continue
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        column = next((c for c in (rows[0] if rows else {}) if c.startswith("density_per_")), None)
        if column is None:
            continue
        regions = [{"name": row["acronym"] or row["name"] or row["region_id"], "objects": int(row["objects"]),
                    "density": float(row[column])}
                   for row in rows if int(row["region_id"]) > 0 and row[column] not in ("", "nan")
                   and math.isfinite(float(row[column]))]
        out.append({"id": r.id, "label": r.label, "path": str(path), "regions": regions,
                    "unit": column.removeprefix("density_per_").replace("mm3", "mm³").replace("mm2", "mm²")})
    return out
