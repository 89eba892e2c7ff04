"""One table of a run's models (`aiod compare`, and the pipeline's COMPARE step).

One row per model: what it is (family, version, task, parameters and their digest), how many
images it segmented (computed now or found in the cache), the objects it found, its pooled
scores against the ground truth (F1 at IoU 0.5, AP over 0.5:0.95, panoptic quality, foreground
Dice: aiod.evaluate), and what segmenting cost: SEGMENT seconds per megapixel and the largest
task's peak memory, from the timings that each result's manifest keeps of its substacks (for a
result from the cache, those of the run that computed it), and where it ran (CPU or GPU).

Rows are sorted by `rank_by` (default F1 at 0.5), best first, and the best is marked; without
ground truth they keep the run's order and no model is marked. Written as comparison.json and
comparison.csv, beside evaluation.json/.csv (per image and pooled scores) and the HTML report.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from . import evaluate
from .errors import InputError

RANK_BY = ("f1", "ap_50_95", "panoptic_quality", "dice")
COLUMNS = ("label", "family", "version", "task", "params_digest", "images", "computed", "cached", "objects",
           "mean_object_voxels", "f1", "ap_50_95", "panoptic_quality", "dice", "segment_seconds", "megapixels",
           "seconds_per_megapixel", "device", "peak_memory_bytes", "best")


def _manifest(record: dict) -> dict:
    try:
        return json.loads((Path(record["cache_entry"]) / "manifest.json").read_text())
    except (OSError, ValueError, KeyError):
        return {}


def _cost(manifests: list[dict]) -> dict:
    """Segmentation time, megapixels, devices and peak memory over some results' manifests."""
    seconds, voxels, peak, devices = 0.0, 0, None, []
    for m in manifests:
        substacks = ((m.get("timings") or {}).get("substacks") or {}).values()
        seconds += sum((t or {}).get("segment_seconds") or 0.0 for t in substacks)
        image = m.get("image") or {}
        axes, shape = image.get("axes") or "", image.get("shape") or []
        voxels += math.prod(n for a, n in zip(axes, shape) if a in "ZYX")
        for t in substacks:
            if (t or {}).get("peak_memory_bytes"):
                peak = max(peak or 0, t["peak_memory_bytes"])
            if (t or {}).get("device") and t["device"] not in devices:
                devices.append(t["device"])
    megapixels = voxels / 1e6
    return {"segment_seconds": round(seconds, 3), "megapixels": round(megapixels, 6),
            "seconds_per_megapixel": round(seconds / megapixels, 3) if megapixels and seconds else None,
            "device": ", ".join(devices) or None, "peak_memory_bytes": peak}


def params_digest(params: dict) -> str:
    from .model_list import params_digest as digest
    return digest({"params": params})


def compare(records: list[dict], scores: dict[tuple[str, str], dict], rank_by: str = "f1") -> dict:
    """The comparison of the models of `records` (a run's records); `scores`: (label, id) ->
    aiod.evaluate.score of each image with ground truth."""
    if rank_by not in RANK_BY:
        raise InputError(f"--rank_by '{rank_by}': expected one of {', '.join(RANK_BY)}")
    by_label: dict[str, list[dict]] = {}
    for r in records:
        by_label.setdefault(r.get("model_label") or f"{r['model']['family']}_{r['model']['version']}", []).append(r)
    rows, evaluation_rows, pooled_rows = [], [], []
    for label, recs in by_label.items():
        model = recs[0]["model"]
        row = {"label": label, "family": model["family"], "version": model["version"], "task": model["task"],
               "params": model["params"], "params_digest": params_digest(model["params"]), "images": len(recs),
               "computed": sum(not r["cache_hit"] for r in recs), "cached": sum(bool(r["cache_hit"]) for r in recs),
               "objects": sum(r.get("n_objects") or 0 for r in recs), "mean_object_voxels": None,
               **{k: None for k in RANK_BY}, **_cost([_manifest(r) for r in recs]), "best": False}
        mine = [(r["id"], scores[(label, r["id"])]) for r in sorted(recs, key=lambda r: r["id"]) if (label, r["id"]) in scores]
        if mine:
            evaluation_rows += [evaluate.row(sample_id, label, s) for sample_id, s in mine]
            pooled = evaluate.row(evaluate.POOLED, label, evaluate.pooled_scores([s for _, s in mine]))
            pooled_rows.append(pooled)
            row.update({k: pooled[k] for k in RANK_BY})
            fg = sum(s["pixel"]["fg_pred"] for _, s in mine)
            row["mean_object_voxels"] = round(fg / pooled["n_pred"], 1) if pooled["n_pred"] else None
        rows.append(row)
    ground_truth = bool(pooled_rows)
    if ground_truth:
        rows.sort(key=lambda r: -(r[rank_by] if r[rank_by] is not None else -1))
        rows[0]["best"] = len(rows) > 1  # one model is not a comparison
        rank = {r["label"]: k for k, r in enumerate(rows)}
        evaluation_rows.sort(key=lambda r: rank[r["model"]])
        pooled_rows.sort(key=lambda r: rank[r["model"]])
    return {"format": "aiod-comparison/1", "rank_by": rank_by, "ground_truth": ground_truth, "models": rows,
            "evaluation": {"images": evaluation_rows, "pooled": pooled_rows}}


def table_text(comparison: dict) -> str:
    """The comparison as the terminal shows it."""
    gt = comparison["ground_truth"]
    head = f"  {'':1} {'model':<30} {'images':>6} {'cached':>6} {'objects':>8}"
    head += f" {'F1@0.5':>7} {'AP50:95':>7} {'PQ':>6} {'Dice':>6}" if gt else ""
    head += f" {'s/Mpx':>7} {'peak mem':>9}  device"
    lines = [head]
    for r in comparison["models"]:
        line = f"  {'*' if r['best'] else ' '} {r['label']:<30} {r['images']:>6} {r['cached']:>6} {r['objects']:>8}"
        if gt:
            line += "".join(f" {_num(r[k], 3):>{w}}" for k, w in (("f1", 7), ("ap_50_95", 7), ("panoptic_quality", 6), ("dice", 6)))
        mem = f"{r['peak_memory_bytes'] / 2**20:.0f} MiB" if r["peak_memory_bytes"] else "-"
        line += f" {_num(r['seconds_per_megapixel'], 2):>7} {mem:>9}  {r['device'] or '-'}"
        lines.append(line)
    if gt:
        lines.append(f"  * best by {comparison['rank_by']} (pooled over the images with ground truth)")
    return "\n".join(lines)


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write(out_dir: Path, comparison: dict) -> list[Path]:
    """comparison.json/.csv (and evaluation.json/.csv with ground truth) in `out_dir`."""
    out_dir = Path(out_dir)
    written = []
    body = {k: v for k, v in comparison.items() if k != "evaluation"}
    evaluate._replace(out_dir / "comparison.json", json.dumps(body, indent=2))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS + ("params",))
    for r in comparison["models"]:
        writer.writerow([r[c] for c in COLUMNS] + [json.dumps(r["params"], sort_keys=True)])
    evaluate._replace(out_dir / "comparison.csv", buffer.getvalue())
    written += [out_dir / "comparison.json", out_dir / "comparison.csv"]
    if comparison["ground_truth"]:
        written += evaluate.write(out_dir, comparison["evaluation"]["images"], comparison["evaluation"]["pooled"])
    return written


def compare_results(results: Path, sheet: Path | None, rank_by: str = "f1") -> dict:
    """`aiod compare` over a published outdir: its records, scored against the samplesheet's
    ground truth (the same functions the pipeline's EVALUATE and COMPARE steps run)."""
    truth = {} if sheet is None else {s.id: s.ground_truth for s in evaluate.samplesheet.read_samplesheet(sheet)
                                        if s.ground_truth is not None}
    records, scores = [], {}
    for label, folder in evaluate.published_masks(Path(results)).items():
        for r in (evaluate._record(p) for p in sorted(folder.glob("*.json"))):
            if r:
                r.setdefault("model_label", label)
                records.append(r)
                if r["id"] in truth:
                    scores[(r["model_label"], r["id"])] = evaluate.score(truth[r["id"]], folder / f"{r['id']}.ome.zarr")
    if not records:
        raise InputError(f"{results}: no published results (records <id>.json) here")
    return compare(records, scores, rank_by)
