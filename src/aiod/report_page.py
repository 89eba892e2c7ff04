"""Everything the report page shows, gathered into one dict for its template (docs/report.md)."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from . import imageio
from . import report_data as data
from . import report_figures as figures
from .errors import AiodError, InputError

METRIC_NAMES = {"f1": "F1 at IoU 0.5", "ap_50_95": "AP 0.5:0.95", "panoptic_quality": "panoptic quality",
                "dice": "Dice"}
SCORE_KEYS = ("n_true", "n_pred", "f1", "ap_50_95", "panoptic_quality", "dice", "split", "fused")
# Images drawn (overlays) and task bars charted on one page: a run of a thousand fields gives a
# page a person can read (and COMPARE writes in seconds); every image's scores are in the tables.
MAX_DRAWN = 24
MAX_BARS = 30


def _open(path, axes=None, what="image"):
    """An ImageSource, or (None, a note) when the file cannot be read."""
    try:
        return imageio.open_image(path, axes=axes), None
    except (AiodError, OSError) as exc:
        return None, f"{what} {path} cannot be read: {exc}"


def _masks(results: list[data.Result], notes: list[str]) -> list[tuple[data.Result, figures.Mask]]:
    masks = []
    for r in results:
        notes += [f"{r.label}: {n}" for n in r.notes]
        if r.mask is None:
            continue
        mask, problem = figures.open_mask(r.mask, (r.record.get("labels") or {}).get("name"))
        if problem:
            notes.append(f"{r.label}: {problem}")
        elif masks and mask.shape != masks[0][1].shape:
            notes.append(f"{r.label}: mask shape {mask.shape} differs from {masks[0][1].shape}; not shown")
        else:
            masks.append((r, mask))
    return masks


def _same_shape(source, shape, what: str, notes: list[str]):
    if source is not None and tuple(source.spatial_shape) != tuple(shape):
        notes.append(f"{what} {source.path} has shape {tuple(source.spatial_shape)}, the mask {tuple(shape)}: not drawn")
        source.close()
        return None
    return source


def image_section(sample_id: str, results: list[data.Result], truth_path: Path | None, scores: dict,
                  draw: bool = True) -> dict:
    """One image: its overlay views (2D: the image; 3D: middle plane and maximum projection;
    none unless `draw`), each model's scores on it, and its objects' sizes per model (for the
    histogram)."""
    notes: list[str] = []
    section = {"id": sample_id, "views": [], "notes": notes, "sizes": {}, "voxels": {}, "truth_sizes": None,
               "scores": [{"label": r.label, **{k: ((scores.get(r.label) or {}).get("images") or {}).get(sample_id, {}).get(k)
                                                for k in SCORE_KEYS}} for r in results]}
    section["has_scores"] = any(row["f1"] is not None for row in section["scores"])
    if not draw:  # sizes only: from the object tables, masks opened only where a table is missing
        _sizes(section, results, None, truth_path)
        return section
    masks = _masks(results, notes)
    if not masks:
        return section
    shape = masks[0][1].shape
    s = figures.stride_for(shape[-2:])
    level = {r.label: m.level_for(s) for r, m in masks}
    info = results[0].image
    image, problem = _open(info["path"], info.get("declared_axes")) if info.get("path") else (None, "image path unknown")
    notes += [problem] if problem else []
    image = _same_shape(image, shape, "image", notes)
    truth, problem = _open(truth_path, what="ground truth") if truth_path else (None, None)
    notes += [problem] if problem else []
    truth = _same_shape(truth, shape, "ground truth", notes)
    channel = info.get("channel")
    section.update(shape=list(shape), stride=s, levels=level, has_truth=truth is not None)
    try:
        if len(shape) == 2:
            img = image_plane(image, channel, s, None)
            gt = figures.image_plane(truth, None, s, None) if truth is not None else None
            section["views"].append(_view("image", img, [(r.label, m.plane(s, None, level[r.label])) for r, m in masks], gt))
        else:
            fz = max(m.factors[level[r.label]][0] for r, m in masks)
            z0 = shape[0] // 2 // fz * fz
            img = image_plane(image, channel, s, z0)
            gt = figures.image_plane(truth, None, s, z0) if truth is not None else None
            section["views"].append(_view(f"middle plane z = {z0}", img,
                                          [(r.label, m.plane(s, z0, level[r.label])) for r, m in masks], gt))
            planes = list(range(0, shape[0], fz))
            if len(planes) > figures.MAX_PLANES:
                planes = [planes[i] for i in np.linspace(0, len(planes) - 1, figures.MAX_PLANES).round().astype(int)]
            img = _max(image_plane(image, channel, s, z) for z in planes) if image is not None else None
            preds = [(r.label, _max(m.plane(s, z, level[r.label]) for z in planes)) for r, m in masks]
            section["views"].append(_view(f"maximum projection over {len(planes)} planes", img, preds, None))
        _sizes(section, results, dict((r.label, m) for r, m in masks), truth)
    finally:
        for source in (image, truth):
            if source is not None:
                source.close()
    return section


def _sizes(section: dict, results: list[data.Result], masks: dict | None, truth) -> None:
    """Each model's object sizes on this image (for the histogram and the mean size): from its
    object table, exact and without reading the mask; else counted on the mask's pyramid.
    masks: label -> the opened Mask (None: open where needed); truth: the ground truth, open or
    its path."""
    ndim = None
    for r in results:
        counts, voxel, mask = data.object_voxels(r), 1.0, (masks or {}).get(r.label)
        if counts is None and mask is None and masks is None and r.mask is not None:
            mask, _ = figures.open_mask(r.mask, (r.record.get("labels") or {}).get("name"))
        if counts is None and mask is None:
            continue
        if counts is None:
            counts, voxel = mask.counts()
        ndim = ndim or (len(mask.shape) if mask is not None else _ndim(r))
        section["sizes"][r.label] = figures.diameters(counts, voxel, ndim)
        section["voxels"][r.label] = counts * voxel
    if truth is None:
        return
    opened = truth if not isinstance(truth, (str, Path)) else _open(truth, what="ground truth")[0]
    if opened is None:
        return
    try:
        counts, voxel = figures.truth_counts(opened)
        section["truth_sizes"] = figures.diameters(counts, voxel, len(opened.spatial_shape))
    finally:
        if opened is not truth:
            opened.close()


def _ndim(result: data.Result) -> int:
    """Spatial dimensions of a result's image, from its cache manifest (2 when unknown)."""
    axes = result.image.get("axes") or ""
    return sum(a in "ZYX" for a in axes) or 2


def image_plane(image, channel, s, z):
    return figures.image_plane(image, channel, s, z) if image is not None else None


def _max(planes):
    out = None
    for p in planes:
        out = p if out is None else np.maximum(out, p)
    return out


def _view(title: str, img, preds: list[tuple[str, np.ndarray]], truth) -> dict:
    base = figures.normalise(img, preds[0][1].shape)
    return {"title": title, "matched": truth is not None,
            "panels": [{"label": label, **figures.overlay(base, pred, truth)} for label, pred in preds]}


def _timing(found: list[data.Result], trace: Path | None) -> dict:
    if trace is not None:
        t = data.trace(trace)
        chart = figures.time_chart(t["processes"], "process", (("seconds", "run time, all tasks"),), "rss")
        return {"source": "trace", "path": t["path"], "processes": t["processes"], "tasks": t["tasks"], "chart": chart}
    rows = data.timings(found)
    for row in rows:
        row["name"] = f"{row['id']} · {row['label']}"
    slowest = sorted(rows, key=lambda r: -sum(r.get(k) or 0.0 for k in ("read", "segment", "merge")))[:MAX_BARS]
    chart = figures.time_chart([r for r in rows if r in slowest], "name",
                               (("read", "read"), ("segment", "segment"), ("merge", "merge")),
                               "peak_bytes" if any(r["peak_bytes"] for r in rows) else None)
    return {"source": "manifests", "rows": rows, "chart": chart, "charted": len(slowest)}


def drawn_ids(ids: list[str], found: list[data.Result], scores: dict) -> list[str]:
    """The images drawn: all, up to MAX_DRAWN; of more, those where a model scores worst (F1 at
    IoU 0.5 against the ground truth), then the others in order."""
    if len(ids) <= MAX_DRAWN:
        return ids

    def worst(i):
        f1 = [((scores.get(label) or {}).get("images") or {}).get(i, {}).get("f1") for label in {r.label for r in found}]
        f1 = [v for v in f1 if v is not None]
        return (min(f1) if f1 else 2.0, ids.index(i))
    return sorted(sorted(ids, key=worst)[:MAX_DRAWN], key=ids.index)


def context(results: Path, samplesheet: Path | None, run: dict | None, trace: Path | None) -> dict:
    results = Path(results)
    if not results.is_dir():
        raise InputError(f"{results}: no such results folder")
    found = data.find_results(results)
    if not found:
        raise InputError(f"{results}: no AIoD records here (<id>.json or <model>/<id>.json with format "
                         f"'{data.RECORD_FORMAT}'); run the pipeline with --outdir {results} first")
    truth = data.ground_truth(samplesheet)
    scores = data.evaluation(results, sorted({r.label for r in found}))
    table = data.comparison(results, found, scores)
    ids = sorted({r.id for r in found})
    drawn = set(drawn_ids(ids, found, scores))
    sections = [image_section(i, [r for r in found if r.id == i], truth.get(i), scores, draw=i in drawn) for i in ids]
    sizes = {label: np.concatenate([s["sizes"][label] for s in sections if label in s["sizes"]])
             for label in sorted({label for s in sections for label in s["sizes"]})}
    truth_sizes = [s["truth_sizes"] for s in sections if s["truth_sizes"] is not None]
    for row in table["rows"]:  # a table made from the records: the mean size from the counts
        voxels = [s["voxels"][row["label"]] for s in sections if row["label"] in s["voxels"]]
        if row.get("mean_object_voxels") is None and voxels and sum(map(len, voxels)):
            row["mean_object_voxels"] = float(np.concatenate(voxels).mean())
    best = next((row for row in table["rows"] if row.get("best")), None)
    return {
        "results": str(results), "generated": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "run": data.run_facts(run, found), "table": table, "best": best,
        "n_images": len(ids), "n_models": len({r.label for r in found}),
        "notes": [f"{r.id} · {r.label}: {n}" for r in found for n in r.notes],
        "images": [s for s in sections if s["id"] in drawn], "not_drawn": len(ids) - len(drawn),
        "max_drawn": MAX_DRAWN, "any_scores": any(s["has_scores"] for s in sections), "inputs": data.inputs(found, truth), "cards": data.model_cards(found, table),
        "histogram": figures.size_histogram(sizes, np.concatenate(truth_sizes) if truth_sizes else None),
        "regions": [{**t, "chart": figures.region_bars(t["regions"], t["unit"])} for t in data.region_tables(found)],
        "timing": _timing(found, trace), "thumb_target": figures.TARGET, "max_planes": figures.MAX_PLANES,
        "count_budget": figures.COUNT_BUDGET, "metric_names": METRIC_NAMES,
    }
