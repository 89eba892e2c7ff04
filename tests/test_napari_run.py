"""The napari plugin's real runs: one pipeline run from the widget (the real Nextflow,
`-profile test`) shared by the tests that look at what it leaves, a run of two models, and a
failing run. Headless, as test_napari.py (its form) is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_helpers import BIG, engine, make_widget, qt, run_widget  # noqa: F401 (fixtures)
from napari.components import ViewerModel
from qtpy.QtWidgets import QMessageBox

from aiod import cache_tools, synthetic
from napari_aiod import command


@pytest.fixture(scope="module")
def finished_run(qt, tmp_path_factory):
    """From the widget: a 1100² TIFF picked by path and a 256² image layer, classical/nuclei,
    each split 2x2; `shown`: the live layers the widget showed while it ran."""
    tmp = tmp_path_factory.mktemp("napari_run")
    gt = synthetic.touching_nuclei(BIG, n=300, radius=(7.0, 12.0), seed=5)
    tifffile.imwrite(tmp / "big.tif", synthetic.render_nuclei(gt, seed=6), compression="zlib")
    small = synthetic.render_nuclei(synthetic.touching_nuclei((256, 256), n=40, radius=(7.0, 12.0), seed=7), seed=8)
    viewer = ViewerModel()
    layer = viewer.add_image(small, name="field")
    w = make_widget(tmp, viewer)
    w.num_substacks.setText("2")
    w.set_model("classical", "nuclei")
    w.add_image_paths([tmp / "big.tif"])
    w.add_layer(layer)
    shown = []
    w.substack_shown.connect(lambda name: shown.append((name, name in viewer.layers, w.run_handle.running())))
    code = run_widget(qt, w)
    return w, viewer, tmp, code, shown


@pytest.mark.pipeline
def test_run_ends_with_each_mask_open_lazily_over_its_image(finished_run):
    w, viewer, tmp, code, _shown = finished_run
    assert code == 0, w.run_handle.text()[-3000:]
    assert w.progress.value() == w.progress.maximum() >= 5  # RESOLVE_MODEL, CHECK_INPUT, PLAN, SEGMENT, FINALIZE, ...
    big = viewer.layers["big classical_nuclei"]
    record = command.published_records(tmp / "results", ["big"])[0]
    assert big.multiscale and len(big.data) == record["labels"]["levels"] == 2
    assert all(isinstance(level, zarr.Array) for level in big.data)  # read chunk by chunk, never whole
    assert big.data[0].shape == BIG and big.data[1].shape == (550, 550)
    assert len(np.unique(big.data[0][...])) - 1 == record["n_objects"] > 250
    assert "big classical_nuclei image" in viewer.layers  # its image, opened from the TIFF
    field = viewer.layers["field classical_nuclei"]  # the image layer, saved to OME-Zarr for the run
    assert field.data.shape == (256, 256) and "field classical_nuclei image" not in viewer.layers
    assert w.scores.rowCount() == 1 and w.scores.item(0, 0).text() == "classical_nuclei"


@pytest.mark.pipeline
def test_each_substack_is_shown_as_its_task_finishes_and_the_merged_mask_replaces_them(finished_run):
    w, viewer, tmp, code, shown = finished_run
    assert code == 0
    names = sorted(name for name, _, _ in shown)
    assert names == sorted(f"{i} classical_nuclei substack {k}/4" for i in ("big", "field") for k in (1, 2, 3, 4))
    assert all(in_viewer for _, in_viewer, _ in shown)  # each was a layer of the viewer when shown
    assert any(running for _, _, running in shown)  # while Nextflow still ran (MERGE, FINALIZE were to come)
    assert not any(name in viewer.layers for name, _, _ in shown)  # the run ended: the merged masks replace them
    record = command.published_records(tmp / "results", ["big"])[0]
    merged = level0(viewer.layers["big classical_nuclei"])[...]
    # a live layer is the substack's labels where its task wrote them, over its image: where the core
    # lies, it holds an object exactly where the merged mask does
    seen = set()
    found = command.finished_substacks(next((tmp / "results" / "pipeline_info").glob("execution_trace_*.txt")), seen)
    cores = {s.substack: s for s in found if s.id == "big"}
    assert len(cores) == 4 and not any(s.is_result for s in cores.values()) and len(seen) >= 1
    for sub in cores.values():
        core = tuple(slice(a, b) for a, b in sub.core)
        live = zarr.open_array(store=str(sub.path), mode="r")
        assert live.shape == tuple(b for _, b in sub.box)  # image coordinates, up to its box's end
        assert np.array_equal(live[core] > 0, merged[core] > 0)
    assert record["n_objects"] > 250


@pytest.mark.pipeline
def test_a_published_mask_of_an_ome_zarr_input_opens_with_its_image_in_ome_zarr_py(finished_run, caplog):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    _w, _viewer, tmp, _code, _shown = finished_run
    record = command.published_records(tmp / "results", ["field"])[0]  # the layer, saved as OME-Zarr for the run
    label = Path(record["published"][".ome.zarr"]) / "labels" / record["labels"]["name"]
    with caplog.at_level("WARNING"):
        nodes = list(Reader(parse_url(str(label)))())
    assert [r.getMessage() for r in caplog.records if r.name.startswith("ome_zarr")] == []
    assert [n.zarr.path for n in nodes] == [str(Path(record["image"])), str(label)]
    assert nodes[0].data[0].shape == nodes[1].data[0].shape == (256, 256)


@pytest.mark.pipeline
def test_a_second_request_of_the_same_images_opens_the_runs_masks_from_the_cache_with_no_run(qt, finished_run, monkeypatch):
    w, viewer, tmp, _code, _shown = finished_run
    from napari_aiod import runner
    started = []
    monkeypatch.setattr(runner.PipelineRun, "start", lambda self: started.append(self.argv))
    second = ViewerModel()
    layer = second.add_image(viewer.layers["field"].data, name="field")
    again = make_widget(tmp, second)
    again.num_substacks.setText("2")
    again.set_model("classical", "nuclei")
    again.add_image_paths([tmp / "big.tif"])
    again.add_layer(layer)
    assert run_widget(qt, again) == 0 and started == [] and again.run_handle is None
    for name in ("big classical_nuclei", "field classical_nuclei"):
        first, cached = viewer.layers[name], second.layers[name]
        assert cached.multiscale == first.multiscale
        assert np.array_equal(level0(cached)[...], level0(first)[...])


def level0(layer):
    return layer.data[0] if layer.multiscale else layer.data


@pytest.mark.pipeline
def test_a_screenshot_of_napari_with_the_widget_a_mask_and_its_plan_is_not_blank(finished_run, tmp_path):
    """napari's own window under Xvfb (tests/napari_screenshot.py, a process of its own)."""
    import imageio.v3 as iio
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is None:
        pytest.skip("xvfb-run is not installed (`make xvfb` installs it and the X libraries PyQt5 needs)")
    _w, _viewer, tmp, _code, _shown = finished_run
    out = tmp_path / "napari.png"
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    done = subprocess.run([xvfb_run, "-a", "-s", "-screen 0 1600x1000x24", sys.executable,
                           str(Path(__file__).parent / "napari_screenshot.py"), str(tmp / "results" / "big.ome.zarr"),
                           str(tmp / "big.tif"), str(tmp / "root"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    window = iio.imread(out)[..., :3]
    canvas = iio.imread(tmp_path / "napari-canvas.png")[..., :3]
    assert window.shape[0] >= 700 and window.shape[1] >= 1200  # the window with the dock widget beside the canvas
    assert len(np.unique(canvas.reshape(-1, 3), axis=0)) > 1000  # the image, the mask's colours and the plan drawn


@pytest.mark.pipeline
def test_cache_panel_lists_the_results_and_deletes_the_chosen_one_after_confirming(finished_run, monkeypatch):
    w, _viewer, tmp, _code, _shown = finished_run
    w.cache_panel.refresh()
    keys = {r["key"]: r for r in w.cache_panel.entries}
    record = command.published_records(tmp / "results", ["big"])[0]
    assert len(keys) == 2 and keys[record["key"]]["objects"] == record["n_objects"]
    row = [r["key"] for r in w.cache_panel.entries].index(record["key"])
    w.cache_panel.table.selectRow(row)
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.Yes)
    w.cache_panel.delete_button.click()
    assert len(asked) == 1
    left = [e.key for e in cache_tools.all_entries(tmp / "root")]
    assert record["key"] not in left and len(left) == 1
    assert [r["key"] for r in w.cache_panel.entries] == left


@pytest.mark.pipeline
def test_several_models_run_together_each_in_its_folder_scored_in_one_table_and_then_from_the_cache(qt, tmp_path, monkeypatch):
    field = synthetic.render_nuclei(synthetic.touching_nuclei((256, 256), n=40, radius=(7.0, 12.0), seed=11), seed=12)
    tifffile.imwrite(tmp_path / "field.tif", field)
    viewer = ViewerModel()
    w = make_widget(tmp_path, viewer)
    w.set_model("classical", "nuclei")
    assert w.add_current_model()
    assert not w.add_current_model() and "same model with the same task and parameters" in w.last_error
    w.params.set_values({"sigma": 2.5})
    assert w.add_current_model() and w.models_list.count() == 2
    assert w.models_list.item(1).text() == "classical:nuclei:nuclei:{sigma: 2.5}"
    w.add_image_paths([tmp_path / "field.tif"])
    assert run_widget(qt, w) == 0, w.run_handle.text()[-3000:]
    argv = w.run_handle.argv
    assert "--models" in argv and "--model" not in argv  # the models file a person would write
    labels = w.current.labels
    assert len(set(labels)) == 2 and all(label.startswith("classical_nuclei-") for label in labels)
    masks = []
    for label in labels:
        assert (tmp_path / "results" / label / "field.ome.zarr").is_dir()  # each model's own folder
        masks.append(level0(viewer.layers[f"field {label}"])[...])
    assert not np.array_equal(masks[0], masks[1])  # two models, two masks
    assert w.scores.rowCount() == 2 and {w.scores.item(i, 0).text().lstrip("* ") for i in range(2)} == set(labels)

    project = w.save_project("two_models")
    from napari_aiod import runner
    started = []
    monkeypatch.setattr(runner.PipelineRun, "start", lambda self: started.append(self.argv))
    second = ViewerModel()
    again = make_widget(tmp_path, second)
    assert again.load_project(project) and again.models == w.models and again.models_list.count() == 2
    assert run_widget(qt, again) == 0 and started == [] and again.run_handle is None  # both from the cache
    for label, mask in zip(labels, masks):
        assert np.array_equal(level0(second.layers[f"field {label}"])[...], mask)


@pytest.mark.pipeline
def test_a_pipeline_error_shows_its_aiod_error_line_in_the_widget(qt, tmp_path):
    w = make_widget(tmp_path)
    w.set_model("classical", "nuclei")
    (tmp_path / "empty.tif").write_bytes(b"")
    w.add_image_paths([tmp_path / "empty.tif"])
    assert run_widget(qt, w) != 0
    assert w.last_error.startswith("AIOD ERROR: ") and "empty.tif" in w.last_error
    assert w.status.text() == w.last_error
