"""Scores of a model on held-out images, as the pipeline would segment them, and the fine-tuning
run's outputs (docs/finetune.md).

`score_model` runs the family's adapter (load, prepare, segment) on each test image box by box
with the pipeline's planner (halo: the adapter's min_halo, box starts on its align) and merge,
into a label array on disk, and scores it against the ground truth with aiod.metrics block by
block (aiod.evaluate's scores): no image or label volume is held whole. Boxes are at most
BOX pixels a side.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path

import zarr

from . import evaluate, imageio, merge, metrics, planner, substack_labels
from .models import get_adapter, halo_floor

BOX = 1024  # largest side of a box (pixels; 3D: BOX_3D)
BOX_3D = 192


def _segment_to_disk(adapter, model, image, channel, params, halo, align, folder: Path):
    """The image's labels, segmented box by box and merged, as a zarr array in `folder`; `halo`
    per spatial axis."""
    shape = image.spatial_shape
    side = BOX if len(shape) == 2 else BOX_3D
    plan = planner.plan_substacks(shape, image.spatial_axes, tuple(max(1, math.ceil(n / side)) for n in shape),
                                  halo, bytes_per_voxel=1, memory_budget=None, align=align)
    prepared = adapter.prepare(image, channel, params)
    spacing = image.scale or (1.0,) * len(shape)
    paths = []
    for sub in plan.substacks:
        labels, _ = adapter.segment(model, image.read(sub.box_slices, channel), params, prepared, spacing,
                                    origin=tuple(a for a, _ in sub.box))
        paths.append(folder / f"substack_{sub.index}.zarr")
        substack_labels.write_substack_labels(paths[-1], labels, sub.index, plan=plan)
    holder = {}

    def create(dtype):
        holder["out"] = zarr.create_array(store=str(folder / "labels.zarr"), shape=shape, dtype=dtype,
                                          chunks=tuple(min(n, 512 if len(shape) == 2 else 64) for n in shape))
        return holder["out"]

    merge.merge_substacks(plan, paths, create)
    return holder["out"]


def score_model(adapter_name: str, artifact, config: dict, params, items, folder: Path) -> dict:
    """{"images": [evaluate.row per test image], "pooled": the pooled row} of one model."""
    adapter = get_adapter(adapter_name)
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    model = adapter.load(artifact, config, params)
    align = adapter.align(artifact, config, params)
    rows, all_scores = [], []
    for item in items:
        (folder / item.id).mkdir(parents=True)
        with imageio.open_image(item.image, item.axes) as image:
            halo = halo_floor(adapter, artifact, config, params, image.spatial_axes)
            labels = _segment_to_disk(adapter, model, image, item.channel, params, halo, align, folder / item.id)
        with imageio.open_image(item.ground_truth) as gt:
            table = metrics.contingency(evaluate._Blocks(gt), labels)
        split, fused = metrics.split_fused(None, None, table=table)
        scores = {"matches": [m.to_dict() for m in metrics.match_thresholds(None, None, metrics.THRESHOLDS, table=table)],
                  "pixel": metrics.pixel_scores(None, None, table=table), "split": split, "fused": fused}
        all_scores.append(scores)
        rows.append(_plain(evaluate.row(item.id, "", scores)))
    shutil.rmtree(folder, ignore_errors=True)  # the labels were only for scoring
    return {"images": rows, "pooled": _plain(evaluate.row(evaluate.POOLED, "", evaluate.pooled_scores(all_scores)))}


def _plain(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("model", "by_iou")}


SHOWN = ("n_true", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1", "ap_50_95", "panoptic_quality")


def write_outputs(out: Path, record: dict) -> list[Path]:
    """finetune.json (the whole record) and finetune.html (before/after table, loss curves)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "finetune.html").write_text(page(record))
    return [out / "finetune.json", out / "finetune.html"]


def _curve_svg(curves: dict, width: int = 480, height: int = 200) -> str:
    series = [(name, colour, curves[name]) for name, colour in (("train_loss", "#1f77b4"), ("valid_loss", "#d62728"))
              if curves.get(name)]
    values = [v for _, _, ys in series for v in ys]
    if not values:
        return "<p>no epochs</p>"
    lo, hi, n = min(values), max(values), max(len(ys) for _, _, ys in series)
    span = (hi - lo) or 1.0

    def point(k, v):
        return f"{40 + (width - 50) * (k / max(1, n - 1)):.1f},{10 + (height - 30) * (1 - (v - lo) / span):.1f}"

    lines = [f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{" ".join(point(k, v) for k, v in enumerate(ys))}"/>'
             f'<text x="{width - 120}" y="{20 + 14 * i}" fill="{c}" font-size="12">{name}</text>'
             for i, (name, c, ys) in enumerate(series)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<text x="2" y="14" font-size="11">{hi:.3g}</text><text x="2" y="{height - 20}" font-size="11">{lo:.3g}</text>'
            f'<text x="{width // 2}" y="{height - 4}" font-size="11">epoch 1..{n}</text>{"".join(lines)}</svg>')


def page(record: dict) -> str:
    """One self-contained HTML page of a fine-tuning run."""
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(label)}</th>" + "".join(f"<td>{_cell(record['metrics'][key]['pooled'][c])}</td>" for c in SHOWN)
                   + "</tr>" for label, key in ((record["parent"], "before"), (record["name"], "after")))
    verdict = "registered" if record["registered"] else "not registered"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Fine-tuning {esc(record['family'])}/{esc(record['name'])}"
            "</title><style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style></head><body>"
            f"<h1>{esc(record['family'])}/{esc(record['name'])} from {esc(record['parent'])}: {verdict}</h1>"
            f"<p>{record['epochs_done']} epochs in {record['seconds']:.0f} s; split ({esc(record['split_from'])}): "
            + ", ".join(f"{k} {len(v)}" for k, v in record["split"].items()) + "</p>"
            "<h2>Test images, pooled</h2><table><tr><th>model</th>" + "".join(f"<th>{c}</th>" for c in SHOWN) + f"</tr>{rows}</table>"
            f"<h2>Losses</h2>{_curve_svg(record['curves'])}</body></html>\n")


def _cell(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
