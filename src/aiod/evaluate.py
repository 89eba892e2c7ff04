"""Scores of published masks against the samplesheet's ground truth (`aiod evaluate`).

Both images are read block by block (metrics.contingency), never whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import imageio, metrics, ngff, samplesheet
from .errors import InputError


class _Blocks:
    """An ImageSource seen as an array of its spatial axes, for block-wise reading."""

    def __init__(self, image):
        self.image = image
        self.shape = image.spatial_shape

    def __getitem__(self, box):
        return self.image.read(box, None)


def evaluate(results: Path, sheet: Path, thresh: float = 0.5) -> list[dict]:
    rows = []
    for sample in samplesheet.read_samplesheet(sheet):
        if sample.ground_truth is None:
            continue
        mask_path = Path(results) / f"{sample.id}.ome.zarr"
        if not mask_path.exists():
            raise InputError(f"{mask_path}: no published mask for '{sample.id}' (run the pipeline with --outdir {results} first)")
        with imageio.open_image(sample.ground_truth) as gt:
            table = metrics.contingency(_Blocks(gt), ngff.open_labels(mask_path))
        score = metrics.match_labels(None, None, thresh, table=table)
        split, fused = metrics.split_fused(None, None, table=table)
        rows.append({"id": sample.id, **score.to_dict(), "split": split, "fused": fused})
    return rows


def report(results: Path, sheet: Path) -> None:
    rows = evaluate(results, sheet)
    if not rows:
        print("[aiod] no ground truth in the samplesheet: nothing to evaluate")
        return
    print(f"\n  {'image':<20} {'true':>6} {'found':>6} {'F1@0.5':>7} {'prec':>6} {'recall':>6} {'mean IoU':>8} {'split':>5} {'fused':>5}")
    for r in rows:
        print(f"  {r['id']:<20} {r['n_true']:>6} {r['n_pred']:>6} {r['f1']:>7.3f} {r['precision']:>6.3f} {r['recall']:>6.3f} "
              f"{r['mean_matched_score']:>8.3f} {r['split']:>5} {r['fused']:>5}")
    out = Path(results) / "evaluation.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"\n  scores written to {out}")
