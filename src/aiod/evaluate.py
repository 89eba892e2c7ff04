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


def _row(sample_id: str, matches: list[metrics.Match], pixel: dict, split: int, fused: int) -> dict:
    at_half = next(m for m in matches if m.thresh == 0.5)
    return {
        "id": sample_id, **{k: v for k, v in at_half.to_dict().items() if k not in ("thresh", "sum_matched_score")},
        "ap_50_95": sum(m.accuracy for m in matches) / len(matches),
        "dice": pixel["dice"], "pixel_iou": pixel["iou"], "split": split, "fused": fused,
        "by_iou": {f"{m.thresh:.2f}": {"f1": m.f1, "accuracy": m.accuracy, "tp": m.tp, "fp": m.fp, "fn": m.fn}
                   for m in matches},
    }


def evaluate(results: Path, sheet: Path) -> tuple[list[dict], dict | None]:
    """(a row per image with ground truth, the pooled row or None)."""
    rows, per_image = [], []
    for sample in samplesheet.read_samplesheet(sheet):
        if sample.ground_truth is None:
            continue
        mask_path = Path(results) / f"{sample.id}.ome.zarr"
        if not mask_path.exists():
            raise InputError(f"{mask_path}: no published mask for '{sample.id}' (run the pipeline with --outdir {results} first)")
        with imageio.open_image(sample.ground_truth) as gt:
            table = metrics.contingency(_Blocks(gt), ngff.open_labels(mask_path))
        matches = metrics.match_thresholds(None, None, metrics.THRESHOLDS, table=table)
        pixel = metrics.pixel_scores(None, None, table=table)
        split, fused = metrics.split_fused(None, None, table=table)
        per_image.append((matches, pixel, split, fused))
        rows.append(_row(sample.id, matches, pixel, split, fused))
    if not rows:
        return rows, None
    pooled = [metrics.pool([m[k] for m, *_ in per_image]) for k in range(len(metrics.THRESHOLDS))]
    pixel = metrics.pixel_dice(*(sum(p[k] for _, p, *_ in per_image) for k in ("fg_true", "fg_pred", "fg_both")))
    return rows, _row(POOLED, pooled, pixel, sum(s for *_, s, _ in per_image), sum(f for *_, f in per_image))


def report(results: Path, sheet: Path) -> None:
    rows, pooled = evaluate(results, sheet)
    if not rows:
        print("[aiod] no ground truth in the samplesheet: nothing to evaluate")
        return
    print(f"\n  {'image':<20} {'true':>6} {'found':>6} {'F1@0.5':>7} {'prec':>6} {'recall':>6} {'AP50:95':>7} {'PQ':>6} "
          f"{'Dice':>6} {'mean IoU':>8} {'split':>5} {'fused':>5}")
    for r in rows + [pooled]:
        print(f"  {r['id']:<20} {r['n_true']:>6} {r['n_pred']:>6} {r['f1']:>7.3f} {r['precision']:>6.3f} {r['recall']:>6.3f} "
              f"{r['ap_50_95']:>7.3f} {r['panoptic_quality']:>6.3f} {r['dice']:>6.3f} {r['mean_matched_score']:>8.3f} "
              f"{r['split']:>5} {r['fused']:>5}")
    out = Path(results) / "evaluation.json"
    out.write_text(json.dumps({"thresholds": list(metrics.THRESHOLDS), "images": rows, "pooled": pooled}, indent=2))
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS + tuple(f"f1@{t:.2f}" for t in metrics.THRESHOLDS))
        for r in rows + [pooled]:
            writer.writerow([r[c] for c in COLUMNS] + [r["by_iou"][f"{t:.2f}"]["f1"] for t in metrics.THRESHOLDS])
    print(f"\n  scores written to {out} and {out.with_suffix('.csv')}")
