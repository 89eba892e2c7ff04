"""`aiod report`: one self-contained HTML page per run.

The results folder is made here without Nextflow but with the pipeline's own pieces: the
classical family's real adapter segments generated images with two parameter sets (two model
labels, the multi-model layout `results/<label>/<id>.*`), aiod.ngff writes the masks with their
pyramids, aiod.metrics scores them against the ground truth (evaluation.json's rows), and records
and cache manifests
follow the documented formats. Images: a small 2D field, a 2D field big enough for a pyramid
(600 x 600, chunks of 128) and a 3D volume.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import re
import shutil
import subprocess
import sys
import time
import types
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from aiod import imageio, metrics, ngff, registry, report, synthetic
from aiod import report_figures as figures
from aiod.models import get_adapter, resolve
from pipeline_helpers import ROOT

MODELS = {"classical_nuclei": {}, "classical_nuclei_h2": {"h": 2.0}}
IMAGES = {"field_small": ((256, 256), 60), "field_big": ((600, 600), 320), "volume": ((40, 128, 128), 70)}
CHUNKS = {2: (128, 128), 3: (32, 64, 64)}
RUN = {"command": "nextflow run main.nf --input sheet.csv --models classical,classical::{h: 2.0}",
       "nextflow_version": "24.10.0", "pipeline_version": "0.1.0", "profile": "local"}


def _write_inputs(data: Path) -> Path:
    rows = []
    for k, (sample_id, (shape, n)) in enumerate(IMAGES.items()):
        gt = synthetic.touching_nuclei(shape, n=n, radius=(6.0, 10.0), seed=k + 1)
        image = synthetic.render_nuclei(gt, seed=50 + k)
        if len(shape) == 3:
            ngff.write_image(data / f"{sample_id}.ome.zarr", image, axes="ZYX")
            path = f"{sample_id}.ome.zarr"
        else:
            path = f"{sample_id}.tif"
            tifffile.imwrite(data / path, image)
        tifffile.imwrite(data / f"{sample_id}_gt.tif", gt, compression="zlib")
        rows.append({"id": sample_id, "image": path, "ground_truth": f"{sample_id}_gt.tif"})
    sheet = data / "samplesheet.csv"
    with open(sheet, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "ground_truth"])
        writer.writeheader()
        writer.writerows(rows)
    return sheet


def _publish(results: Path, cache: Path, label: str, spec: dict, sample_id: str, image_path: Path) -> dict:
    """Segment one image with the classical adapter; publish its mask and record, write its manifest."""
    adapter = get_adapter(spec["adapter"])
    params = types.SimpleNamespace(**spec["params"])
    with imageio.open_image(image_path) as image:
        t0 = time.perf_counter()
        array = image.read(tuple(slice(None) for _ in image.spatial_shape))
        t1 = time.perf_counter()
        labels, _ = adapter.segment(None, array, params, adapter.prepare(image, None, params))
        t2 = time.perf_counter()
        facts = {"path": str(image_path), "axes": image.axes, "shape": list(image.shape), "dtype": str(image.dtype),
                 "channel": None, "declared_axes": None, "scale": None}
    name = f"{spec['family']}_{spec['version']}"
    mask = results / label / f"{sample_id}.ome.zarr"
    ngff.create_labels(mask, name, labels.shape, "YX" if labels.ndim == 2 else "ZYX", "uint32",
                       chunks=CHUNKS[labels.ndim])[...] = labels
    levels = ngff.finish_labels(mask, name)
    entry = cache / label / sample_id
    entry.mkdir(parents=True)
    key = hashlib.sha256(f"{label}/{sample_id}".encode()).hexdigest()
    (entry / "manifest.json").write_text(json.dumps({
        "format": "aiod-result/1", "id": sample_id, "key": key, "image": facts, "model": spec,
        "labels": {"name": name, "levels": levels},
        "timings": {"substacks": {"0": {"read_seconds": t1 - t0, "segment_seconds": t2 - t1, "device": "cpu"}},
                    "merge_seconds": 0.0}}))
    record = {"format": "aiod-record/1", "id": sample_id, "image": str(image_path), "model": spec, "model_label": label,
              "key": key, "cache_hit": False, "cache_entry": str(entry), "n_objects": int(len(np.unique(labels)) - 1),
              "labels": {"path": f"labels.ome.zarr/labels/{name}", "name": name, "dtype": "uint32", "levels": levels},
              "aiod_version": "0.1.0", "published": {".ome.zarr": str(mask)}}
    (results / label / f"{sample_id}.json").write_text(json.dumps(record, indent=2))
    return {"seconds": t2 - t1, "voxels": labels.size, "counts": np.bincount(labels.ravel())[1:]}


def _scores(sample_id: str, label: str, matches: list, pixel: dict, split: int, fused: int) -> dict:
    """A row of evaluation.json (as aiod.evaluate writes it) from aiod.metrics' results."""
    half = matches[0]
    return {"id": sample_id, "model": label, **{k: v for k, v in half.to_dict().items() if k not in ("thresh", "sum_matched_score")},
            "ap_50_95": sum(m.accuracy for m in matches) / len(matches), "dice": pixel["dice"], "pixel_iou": pixel["iou"],
            "split": split, "fused": fused}


def _evaluate(results: Path, label: str, data: Path) -> tuple[list[dict], dict]:
    rows, per_image = [], []
    for sample_id in IMAGES:
        truth = tifffile.imread(data / f"{sample_id}_gt.tif")
        table = metrics.contingency(truth, ngff.open_labels(results / label / f"{sample_id}.ome.zarr"))
        found = (metrics.match_thresholds(None, None, metrics.THRESHOLDS, table=table),
                 metrics.pixel_scores(None, None, table=table), *metrics.split_fused(None, None, table=table))
        per_image.append(found)
        rows.append(_scores(sample_id, label, *found))
    pooled = [metrics.pool([f[0][k] for f in per_image]) for k in range(len(metrics.THRESHOLDS))]
    pixel = metrics.pixel_dice(*(sum(f[1][k] for f in per_image) for k in ("fg_true", "fg_pred", "fg_both")))
    return rows, _scores("(all images)", label, pooled, pixel, sum(f[2] for f in per_image), sum(f[3] for f in per_image))


def _comparison(spec: dict, label: str, made: list[dict], pooled: dict) -> dict:
    counts = np.concatenate([m["counts"] for m in made])
    counts = counts[counts > 0]
    seconds, mpx = sum(m["seconds"] for m in made), sum(m["voxels"] for m in made) / 1e6
    return {"label": label, "family": spec["family"], "version": spec["version"], "task": spec["task"],
            "params": spec["params"], "params_digest": hashlib.sha256(json.dumps(spec["params"], sort_keys=True).encode()).hexdigest()[:12],
            "images": len(made), "computed": len(made), "cached": 0, "objects": int(len(counts)),
            "mean_object_voxels": float(counts.mean()), **{k: pooled[k] for k in ("f1", "ap_50_95", "panoptic_quality", "dice")},
            "segment_seconds": seconds, "megapixels": mpx, "seconds_per_megapixel": seconds / mpx, "device": "cpu",
            "peak_memory_bytes": None, "best": False}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> types.SimpleNamespace:
    base = tmp_path_factory.mktemp("report")
    data, results, cache = base / "data", base / "results", base / "cache"
    data.mkdir()
    sheet = _write_inputs(data)
    rows, pooled, table = [], [], []
    for label, overrides in MODELS.items():
        spec = resolve("classical", "nuclei", None, overrides)
        made = [_publish(results, cache, label, spec, i, data / (f"{i}.ome.zarr" if len(s) == 3 else f"{i}.tif"))
                for i, (s, _) in IMAGES.items()]
        images, total = _evaluate(results, label, data)
        rows += images
        pooled.append(total)
        table.append(_comparison(spec, label, made, total))
    (results / "evaluation.json").write_text(json.dumps({"thresholds": list(metrics.THRESHOLDS), "images": rows, "pooled": pooled}))
    table.sort(key=lambda r: -r["f1"])
    table[0]["best"] = True
    (results / "comparison.json").write_text(json.dumps({"format": "aiod-comparison/1", "rank_by": "f1",
                                                         "ground_truth": True, "models": table}))
    trace = base / "execution_trace.txt"
    trace.write_text("task_id\tprocess\tname\tstatus\trealtime\tpeak_rss\t%cpu\n"
                     "1\tAIOD:SEGMENT\tSEGMENT (p0.1)\tCOMPLETED\t1m 2s\t1.5 GB\t98.0%\n"
                     "2\tAIOD:MERGE\tMERGE (volume)\tCOMPLETED\t850ms\t93.2 MB\t45.1%\n")
    page = report.write_report(results, samplesheet=sheet, run=RUN, trace=trace)
    return types.SimpleNamespace(base=base, data=data, results=results, sheet=sheet, trace=trace, page=page,
                                 html=page.read_text(), table=table)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def _png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    raw = base64.b64decode(uri.split(",", 1)[1])
    picture = Image.open(io.BytesIO(raw))
    assert picture.format == "PNG"
    return picture


def test_report_is_written_into_the_results_folder_by_default(run_dir):
    assert run_dir.page == run_dir.results / "report.html"


def test_comparison_table_comes_first_with_every_model_and_the_best_marked(run_dir):
    text = run_dir.html
    table = text[text.index('id="comparison"'):text.index('id="images"')]
    for row in run_dir.table:
        assert f"{row['label']}</td>" in table
        assert f"{row['f1']:.3f}" in table
    best = run_dir.table[0]["label"]
    assert re.search(r'<tr class="best">\s*<td><span class="star" title="best">&#9733;</span> ' + best, table)
    assert text.index('id="comparison"') < text.index('id="images"') < text.index('id="models"')


def test_every_overlay_is_an_embedded_png_of_the_thumbnail_size(run_dir):
    overlays = [a for tag, a in _tags(run_dir.html) if tag == "img" and "outlines of" in a.get("alt", "")]
    assert len(overlays) == len(MODELS) * (2 + 2)  # two 2D fields; the volume's plane and projection
    for a in overlays:
        sample_id = a["alt"].split(",")[0]
        yx = IMAGES[sample_id][0][-2:]
        s = figures.stride_for(yx)
        picture = _png(a["src"])
        assert picture.size == (-(-yx[1] // s), -(-yx[0] // s))
        assert len(base64.b64decode(a["src"].split(",", 1)[1])) <= figures.PNG_BUDGET
    assert figures.stride_for(IMAGES["field_big"][0]) == 2  # 300 x 300, from level 1


def test_3d_image_shows_its_middle_plane_and_a_maximum_projection(run_dir):
    part = run_dir.html[run_dir.html.index('id="image-volume"'):]
    assert "middle plane z = 20" in part
    assert "maximum projection over 32 planes" in part  # 40 planes, at most MAX_PLANES of them


def test_model_cards_cite_the_registry_and_list_the_resolved_parameters(run_dir):
    meta = registry.load_registry()["classical"].versions["nuclei"].metadata
    assert html.escape(meta.citation) in run_dir.html
    assert f'<a href="https://doi.org/{meta.doi}">' in run_dir.html
    assert "<td><code>h</code></td><td><code>2.0</code></td>" in run_dir.html


def test_page_loads_nothing(run_dir):
    for tag, attrs in _tags(run_dir.html):
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
        for name in ("src", "srcset", "data", "poster", "action") + (() if tag == "a" else ("href",)):
            value = attrs.get(name)
            assert value is None or value.startswith("data:"), (tag, name, value[:60])
    assert "url(" not in run_dir.html and "@import" not in run_dir.html
    assert "default-src 'none'; img-src data:" in run_dir.html


def test_run_facts_and_trace_are_shown(run_dir):
    assert html.escape(RUN["command"]) in run_dir.html
    assert "<th>Nextflow version</th><td>24.10.0</td>" in run_dir.html
    assert re.search(r"<td>SEGMENT</td><td class=\"n\">1</td><td class=\"n\">0</td><td class=\"n\">62.0</td>", run_dir.html)


def test_big_mask_thumbnail_reads_a_coarse_level_never_level_0_whole(run_dir, tmp_path, monkeypatch):
    reads = []
    open_labels = ngff.open_labels

    class Spy:
        def __init__(self, arr, root, level):
            self.arr, self.root, self.level = arr, Path(root), level
            self.shape, self.chunks, self.ndim, self.dtype = arr.shape, arr.chunks, arr.ndim, arr.dtype

        def __getitem__(self, box):
            block = self.arr[box]
            reads.append((self.root.name, self.level, block.size))
            return block

    monkeypatch.setattr(ngff, "open_labels", lambda root, name=None, level=0: Spy(open_labels(root, name, level), root, level))
    report.write_report(run_dir.results, tmp_path / "a.html", samplesheet=run_dir.sheet)
    big = [(level, size) for root, level, size in reads if root == "field_big.ome.zarr"]
    assert {level for level, _ in big} >= {1}
    chunk = math.prod(CHUNKS[2])
    assert all(size <= chunk for level, size in big if level == 0)  # object sizes: chunk by chunk
    # with a budget below level 0's voxels, object sizes are counted on level 1: level 0 is never read
    reads.clear()
    monkeypatch.setattr(figures, "COUNT_BUDGET", 600 * 600 - 1)
    report.write_report(run_dir.results, tmp_path / "b.html", samplesheet=run_dir.sheet)
    big = [(level, size) for root, level, size in reads if root == "field_big.ome.zarr"]
    assert big and 0 not in {level for level, _ in big}


def test_a_cache_entry_that_is_gone_and_an_unregistered_model_are_noted_not_fatal(run_dir, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    record = json.loads((run_dir.results / "classical_nuclei" / "field_small.json").read_text())
    record.update(cache_entry=str(tmp_path / "gone"), model_label="lab_model",
                  model={**record["model"], "family": "labnet", "version": "v1"})
    (results / "field_small.json").write_text(json.dumps(record))
    (results / "notes.json").write_text(json.dumps({"format": "something-else"}))
    text = report.write_report(results).read_text()
    assert f"cache entry {tmp_path / 'gone'} is gone" in text
    assert "Not in the built-in model registry" in text
    assert text.count("outlines of lab_model") == 1  # the mask is still drawn, over a black image


def test_cli_writes_the_report_and_imports_no_plotting_at_start(run_dir, tmp_path):
    info = tmp_path / "run.json"
    info.write_text(json.dumps(RUN))
    out = tmp_path / "page.html"
    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "aiod"), "report", "--results", str(run_dir.results),
                           "--samplesheet", str(run_dir.sheet), "--out", str(out), "--run-info", str(info)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"report written to {out}" in proc.stdout and "24.10.0" in out.read_text()
    code = "import sys, aiod.cli; print(sorted(m for m in ('matplotlib', 'jinja2', 'zarr') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "src", capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def _chromium(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: `make browser` installs it (the `test` target runs it first)")
    return subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run", "--disable-extensions",
                           "--disable-background-networking", "--disable-component-update", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_page_renders_offline_in_a_headless_browser(run_dir, tmp_path):
    url = run_dir.page.as_uri()
    dom = _chromium("--window-size=1280,2000", "--dump-dom", url).stdout
    body = dict(re.findall(r'data-([a-z-]+)="(\d+)"', re.search(r"<body[^>]*>", dom).group(0)))
    assert body and int(body["images"]) > 0 and body["images-shown"] == body["images"], body
    assert body["resources"] == "0" and body["csp-violations"] == "0", body
    assert 'id="comparison"' in dom and "classical_nuclei_h2</td>" in dom
    shot = tmp_path / "report.png"
    _chromium("--window-size=1280,2000", f"--screenshot={shot}", url)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1280) and pixels.std() > 20
    if (ROOT / "bench" / "out").is_dir():
        shutil.copy(shot, ROOT / "bench" / "out" / "report.png")


def test_a_run_of_more_images_than_a_page_draws_those_where_a_model_scores_worst(run_dir, tmp_path, monkeypatch):
    from aiod import report_page
    monkeypatch.setattr(report_page, "MAX_DRAWN", 1)
    monkeypatch.setattr(report_page, "MAX_BARS", 2)
    page = report.write_report(run_dir.results, samplesheet=run_dir.sheet, run=RUN, out=tmp_path / "capped.html")
    text = page.read_text()
    scores = json.loads((run_dir.results / "evaluation.json").read_text())["images"]
    worst = min(IMAGES, key=lambda i: min(r["f1"] for r in scores if r["id"] == i))
    drawn = {a["alt"].split(",")[0] for tag, a in _tags(text) if tag == "img" and "outlines of" in a.get("alt", "")}
    assert drawn == {worst}
    assert "2 more images not drawn: a page shows 1 (those where a model scores worst)" in " ".join(text.split())
    for sample_id in IMAGES:  # every image's objects still count in the sizes and its scores in the tables
        assert f"<td>{sample_id}</td>" in text
    assert "The chart shows the 2 slowest of 6." in " ".join(text.split())


def test_object_sizes_come_from_the_object_tables_and_only_drawn_masks_are_opened(run_dir, tmp_path, monkeypatch):
    """With each result's object table beside its mask (as the pipeline publishes them), the sizes
    histogram has the same objects as counted on the masks, and the masks of images that are not
    drawn are never opened: a run of thousands of fields reads thousands of small tables instead."""
    from aiod import measure, report_page

    results = tmp_path / "results"
    shutil.copytree(run_dir.results, results)
    for path in results.glob("*/*.json"):
        record = json.loads(path.read_text())
        mask = Path(record["published"][".ome.zarr"])
        parquet, _ = measure.write_tables(measure.measure_result(mask), path.with_name(f"{record['id']}.objects"))
        record["published"][".objects.parquet"] = str(parquet)
        path.write_text(json.dumps(record))

    histograms = []
    monkeypatch.setattr(figures, "size_histogram", lambda sizes, truth: histograms.append(sizes) or None)
    report.write_report(run_dir.results, samplesheet=run_dir.sheet, out=tmp_path / "counted.html")
    opened = []
    open_mask = figures.open_mask
    monkeypatch.setattr(figures, "open_mask", lambda root, name: opened.append(Path(root).stem) or open_mask(root, name))
    monkeypatch.setattr(report_page, "MAX_DRAWN", 1)
    report.write_report(results, samplesheet=run_dir.sheet, out=tmp_path / "tables.html")
    counted, tabled = histograms
    assert set(counted) == set(tabled) == set(MODELS)
    for label in MODELS:
        assert len(counted[label]) > 200
        np.testing.assert_allclose(np.sort(tabled[label]), np.sort(counted[label]))
    drawn = {a["alt"].split(",")[0] for tag, a in _tags((tmp_path / "tables.html").read_text())
             if tag == "img" and "outlines of" in a.get("alt", "")}
    assert len(drawn) == 1 and sorted(opened) == sorted([f"{next(iter(drawn))}.ome"] * len(MODELS))
