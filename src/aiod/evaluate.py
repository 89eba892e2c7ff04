"""Scores of published masks against the samplesheet's ground truth (`aiod evaluate`).

Both images are read block by block (metrics.contingency), never whole. Per image and pooled over
all images (summed counts, as `stardist.matching.matching_dataset(by_image=False)`):

- at IoU 0.5: tp, fp, fn, precision, recall, F1, accuracy, panoptic quality, mean matched IoU;
- over IoU 0.5, 0.55, ..., 0.95: F1 and accuracy at each, and their mean `ap_50_95`, the mean
  of tp / (tp + fp + fn), the "average precision" of the StarDist and Cellpose papers;
- foreground Dice and IoU, and split and fused objects (metrics.split_fused).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from . import imageio, metrics, ngff, samplesheet
from .errors import InputError

POOLED = "(all images)"
COLUMNS = ("id", "n_true", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1", "accuracy", "panoptic_quality",
           "mean_matched_score", "ap_50_95", "dice", "pixel_iou", "split", "fused")


class _Blocks:
    """An ImageSource seen as an array of its spatial axes, for block-wise reading."""

    def __init__(self, image):
        self.image = image
        self.shape = image.spatial_shape

    def __getitem__(self, box):
        block = self.image.read(box, None)
        if block.dtype.kind == "i" and block.size and block.min() < 0:
            raise InputError(f"{self.image.path}: ground truth has negative labels ({int(block.min())}); expected a "
                             "label image of integers (0 for background, one id per object)")
        return block


def score(gt_path: Path, mask_path: Path) -> dict:
    """One image's scores, with what pooling needs: every threshold's match (its summed IoU
    included), the foreground voxel counts, split and fused objects."""
    with imageio.open_image(gt_path) as gt:
        table = metrics.contingency(_Blocks(gt), ngff.open_labels(mask_path))
    split, fused = metrics.split_fused(None, None, table=table)
    return {"matches": [m.to_dict() for m in metrics.match_thresholds(None, None, metrics.THRESHOLDS, table=table)],
            "pixel": metrics.pixel_scores(None, None, table=table), "split": split, "fused": fused}


def row(sample_id: str, model: str, scores: dict) -> dict:
    """The row of one image (or of the pool): IoU 0.5's counts and scores, AP over 0.5:0.95,
    foreground Dice/IoU, split/fused, and F1/accuracy at every threshold."""
    matches = [metrics.Match(**m) for m in scores["matches"]]
    at_half = next(m for m in matches if m.thresh == 0.5)
    pixel = scores["pixel"]
    return {
        "id": sample_id, "model": model,
        **{k: v for k, v in at_half.to_dict().items() if k not in ("thresh", "sum_matched_score")},
        "ap_50_95": sum(m.accuracy for m in matches) / len(matches),
        "dice": pixel["dice"], "pixel_iou": pixel["iou"], "split": scores["split"], "fused": scores["fused"],
        "by_iou": {f"{m.thresh:.2f}": {"f1": m.f1, "accuracy": m.accuracy, "tp": m.tp, "fp": m.fp, "fn": m.fn}
                   for m in matches},
    }


def pooled_scores(all_scores: list[dict]) -> dict:
    """Several images' scores as one (summed counts, as matching_dataset(by_image=False))."""
    matches = [metrics.pool([metrics.Match(**s["matches"][k]) for s in all_scores]).to_dict()
               for k in range(len(metrics.THRESHOLDS))]
    pixel = metrics.pixel_dice(*(sum(s["pixel"][k] for s in all_scores) for k in ("fg_true", "fg_pred", "fg_both")))
    return {"matches": matches, "pixel": pixel, "split": sum(s["split"] for s in all_scores),
            "fused": sum(s["fused"] for s in all_scores)}


def published_masks(results: Path) -> dict[str, Path]:
    """Model label -> the folder its masks are published in: `results/` for a run of one model
    (label from its records, '' without), `results/<label>/` for each model of a run of several."""
    results = Path(results)
    found = {}
    for folder in [results, *sorted(p for p in results.iterdir() if p.is_dir() and not p.name.endswith(".ome.zarr"))] if results.is_dir() else []:
        records = [r for r in (_record(p) for p in sorted(folder.glob("*.json"))) if r]
        if folder == results:
            if records or any(folder.glob("*.ome.zarr")):
                found[records[0].get("model_label", "") if records else ""] = folder
        elif records:
            found[folder.name] = folder
    return found


def _record(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == "aiod-record/1" else None


def evaluate(results: Path, sheet: Path) -> tuple[list[dict], list[dict]]:
    """(a row per image with ground truth and per model, a pooled row per model)."""
    samples = [s for s in samplesheet.read_samplesheet(sheet) if s.ground_truth is not None]
    folders = published_masks(results) or {"": Path(results)}
    rows, pooled = [], []
    for label, folder in folders.items():
        per_image = []
        for sample in samples:
            mask_path = folder / f"{sample.id}.ome.zarr"
            if not mask_path.exists():
                raise InputError(f"{mask_path}: no published mask for '{sample.id}' (run the pipeline with --outdir {results} first)")
            per_image.append(score(sample.ground_truth, mask_path))
            rows.append(row(sample.id, label, per_image[-1]))
        if per_image:
            pooled.append(row(POOLED, label, pooled_scores(per_image)))
    return rows, pooled


def write(out_dir: Path, rows: list[dict], pooled: list[dict]) -> list[Path]:
    """evaluation.json and evaluation.csv in `out_dir` (each written whole, then renamed)."""
    out = Path(out_dir) / "evaluation.json"
    _replace(out, json.dumps({"format": "aiod-evaluation/1", "thresholds": list(metrics.THRESHOLDS), "images": rows,
                              "pooled": pooled}, indent=2))
    lines = [("model",) + COLUMNS + tuple(f"f1@{t:.2f}" for t in metrics.THRESHOLDS)]
    lines += [[r["model"]] + [r[c] for c in COLUMNS] + [r["by_iou"][f"{t:.2f}"]["f1"] for t in metrics.THRESHOLDS]
              for r in rows + pooled]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    _replace(out.with_suffix(".csv"), buffer.getvalue())
    return [out, out.with_suffix(".csv")]


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".aiod-partial-{path.name}")
    tmp.write_text(text)
    tmp.replace(path)


def table_text(rows: list[dict]) -> str:
    several = len({r["model"] for r in rows}) > 1
    head = f"  {'model':<28} " if several else "  "
    lines = [head + f"{'image':<20} {'true':>6} {'found':>6} {'F1@0.5':>7} {'prec':>6} {'recall':>6} {'AP50:95':>7} {'PQ':>6} "
             f"{'Dice':>6} {'mean IoU':>8} {'split':>5} {'fused':>5}"]
    for r in rows:
        lines.append((f"  {r['model']:<28} " if several else "  ")
                     + f"{r['id']:<20} {r['n_true']:>6} {r['n_pred']:>6} {r['f1']:>7.3f} {r['precision']:>6.3f} {r['recall']:>6.3f} "
                     f"{r['ap_50_95']:>7.3f} {r['panoptic_quality']:>6.3f} {r['dice']:>6.3f} {r['mean_matched_score']:>8.3f} "
                     f"{r['split']:>5} {r['fused']:>5}")
    return "\n".join(lines)


def report(results: Path, sheet: Path) -> None:
    rows, pooled = evaluate(results, sheet)
    if not rows:
        print("[aiod] no ground truth in the samplesheet: nothing to evaluate")
        return
    by_model = [r for label in dict.fromkeys(r["model"] for r in rows)
                for r in [*(x for x in rows if x["model"] == label), *(x for x in pooled if x["model"] == label)]]
    print("\n" + table_text(by_model))
    written = write(Path(results), rows, pooled)
    print(f"\n  scores written to {written[0]} and {written[1]}")
