"""The napari plugin (napari-aiod/) as a person uses it: its dock widget, headless.

The widget runs under Qt's offscreen platform. napari's canvas needs OpenGL, which that platform
does not have, so the widget is given napari's viewer model (`ViewerModel`: the layer list and
`add_image`/`add_labels` a viewer has, without its window); everything the widget does goes
through it. One real pipeline run (the real Nextflow, `-profile test`) and one failing run are
shared by the tests that look at what a run leaves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari")
pytest.importorskip("napari_aiod")

from napari.components import ViewerModel  # noqa: E402
from qtpy.QtWidgets import QDoubleSpinBox, QMessageBox, QSpinBox  # noqa: E402

from aiod import cache_tools, ngff, synthetic  # noqa: E402
from aiod.models import visible  # noqa: E402
from aiod.registry import load_registry  # noqa: E402
from napari_aiod import command  # noqa: E402
from napari_aiod.params_form import ValueField  # noqa: E402
from napari_aiod.widget import AiodWidget  # noqa: E402
from pipeline_helpers import NEXTFLOW  # noqa: E402

BIG = (1100, 1100)  # larger than one 1024² chunk: the published mask has a pyramid of 2 levels


@pytest.fixture(scope="module", autouse=True)
def engine():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIOD_NEXTFLOW", NEXTFLOW)
        mp.setenv("NXF_OFFLINE", "true")
        yield


@pytest.fixture(scope="module")
def qt(qapp):
    return qapp


def make_widget(tmp, viewer=None) -> AiodWidget:
    w = AiodWidget(viewer or ViewerModel())
    w.root_dir.setText(str(tmp / "root"))
    w.outdir.setText(str(tmp / "results"))
    w.profile.setCurrentText("test")
    w.num_substacks.setText("1")
    return w


def wait(qapp, done, timeout=600):
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"not done after {timeout} s")
        qapp.processEvents()
        time.sleep(0.05)


def run_widget(qapp, w: AiodWidget) -> int:
    codes = []
    w.run_finished.connect(codes.append)
    w.run_button.click()
    wait(qapp, lambda: codes)
    return codes[0]


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


# ---- the form ---------------------------------------------------------------------------------

def test_parameter_widgets_follow_the_classical_manifest(qt, tmp_path):
    w = make_widget(tmp_path)
    w.set_model("classical", "nuclei")
    f = w.params.fields
    assert isinstance(f["sigma"], QDoubleSpinBox) and (f["sigma"].minimum(), f["sigma"].maximum(), f["sigma"].value()) == (0, 20, 1.0)
    assert isinstance(f["min_size"], QSpinBox) and (f["min_size"].minimum(), f["min_size"].value()) == (0, 30)
    assert (f["max_diameter"].minimum(), f["max_diameter"].maximum(), f["max_diameter"].value()) == (1, 2000, 40)
    assert isinstance(f["threshold"], ValueField) and f["threshold"].currentText() == "otsu"
    assert f["h"].toolTip() == "h-maxima height of the weighted distance (pixels): larger merges more"
    w.version.setCurrentText("cells")
    assert (w.task.currentText(), w.params.fields["sigma"].value(), w.params.fields["min_size"].value()) == ("cyto", 2.0, 100)


def test_every_family_gets_a_widget_of_its_parameters_type_and_range(qt, tmp_path):
    w = make_widget(tmp_path)
    for family, versions in visible(load_registry()).items():
        w.set_model(family, next(iter(versions)))
        for name, spec in load_registry()[family].parameters.items():
            field = w.params.fields[name]
            if isinstance(field, (QSpinBox, QDoubleSpinBox)):
                assert isinstance(field, QSpinBox) == (spec.type == "int"), (family, name)
                assert spec.min is None or field.minimum() == spec.min, (family, name)
                assert spec.max is None or field.maximum() == spec.max, (family, name)
            elif spec.choices:
                assert [field.itemText(i) for i in range(field.count())] == spec.choices, (family, name)
        assert w.params.values() == load_registry()[family].parameters_of(w.version.currentText())


def test_only_the_versions_this_user_can_read_are_offered(qt, tmp_path):
    w = make_widget(tmp_path)
    w.set_model("stardist")
    offered = [w.version.itemText(i) for i in range(w.version.count())]
    assert offered == list(visible(load_registry())["stardist"])


def test_a_bad_parameter_is_refused_with_the_registrys_one_line_error(qt, tmp_path):
    w = make_widget(tmp_path)
    w.set_model("classical", "nuclei")
    w.add_image_paths([tmp_path / "x.tif"])
    w.params.fields["threshold"].setEditText("bright")
    assert w.params.fields["threshold"].problem() == "expected a number or 'otsu', got 'bright'"
    w.run_button.click()
    assert w.last_error == ("AIOD ERROR: napari: parameter 'threshold' of classical/nuclei: "
                            "expected a number or 'otsu', got 'bright'")
    assert w.run_handle is None


def test_project_file_round_trips_the_settings(qt, tmp_path):
    w = make_widget(tmp_path)
    w.set_model("classical", "cells")
    w.add_image_paths([tmp_path / "a.tif", tmp_path / "b.ome.zarr"])
    w.params.fields["sigma"].setValue(3.5)
    w.params.fields["threshold"].setEditText("120")
    w.overlap.setText("16")
    w.substack_memory.setText("12 GB")
    w.fingerprint.setCurrentText("sample")
    saved = w.settings()
    path = w.save_project("lab-run")
    assert path == tmp_path / "root" / "project_configs" / "lab-run.yaml"
    assert yaml.safe_load(path.read_text())["params"]["threshold"] == 120.0
    other = make_widget(tmp_path)
    assert other.load_project(path)
    assert other.settings() == saved and other.request().substack_memory == "12 GB" and other.request().fingerprint == "sample"


# ---- before a run: the substack plan and the cache --------------------------------------------------

def pipeline_plan(tmp, image_path, params=None, num_substacks="2,3", overlap="8", sample_id="img", substack_memory="6 GB"):
    """What the pipeline's own PLAN step (aiod plan, in-process) makes of the image."""
    from aiod import cli
    from aiod.steps import plan as plan_step
    model = tmp / f"model-{sample_id}.json"
    args = ["resolve-model", "--model", "classical", "--version", "nuclei", "--out", str(model)]
    if params:
        (tmp / "params.yaml").write_text(yaml.safe_dump(params))
        args += ["--params", str(tmp / "params.yaml")]
    assert cli.main(args) == 0
    job = plan_step.plan(image_path=image_path, sample_id=sample_id, axes=None, channel=None, model_json=model,
                         num_substacks=num_substacks, overlap=overlap, substack_memory=substack_memory, root_dir=tmp / "root",
                         fingerprint_mode="full", out=tmp / f"{sample_id}.plan.json")
    return job


def test_the_plan_preview_draws_one_rectangle_per_substack_of_plans_own_plan(qt, tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((300, 200), "uint8"))
    viewer = ViewerModel()
    w = make_widget(tmp_path, viewer)
    w.set_model("classical", "nuclei")
    w.add_image_paths([tmp_path / "img.tif"])
    w.num_substacks.setText("2,3")
    w.overlap.setText("8")
    [layer] = w.preview_plan()
    job = pipeline_plan(tmp_path, tmp_path / "img.tif")
    assert layer.name == "img substacks" and layer.shape_type == ["rectangle"] * 6 == ["rectangle"] * len(job["plan"]["substacks"])
    for corners, sub in zip(layer.data, job["plan"]["substacks"]):
        (y0, y1), (x0, x1) = sub["core"]
        assert corners.min(axis=0).tolist() == [y0 - 0.5, x0 - 0.5] and corners.max(axis=0).tolist() == [y1 - 0.5, x1 - 0.5]
    assert list(layer.features["box"]) == [" ".join(f"{a}{r[0]}:{r[1]}" for a, r in zip("YX", sub["box"]))
                                           for sub in job["plan"]["substacks"]]
    assert w.run_handle is None and w.status.text() == "img substacks: 6"
    w.num_substacks.setText("1")
    [again] = w.preview_plan()
    assert len(again.data) == 1 and [x.name for x in viewer.layers].count("img substacks") == 1  # replaced


def test_auto_substacks_follow_the_forms_task_memory_as_plan_sizes_them(qt, tmp_path):
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((3000, 3000), "uint8"))
    viewer = ViewerModel()
    w = make_widget(tmp_path, viewer)
    w.set_model("classical", "nuclei")
    w.add_image_paths([tmp_path / "big.tif"])
    w.num_substacks.setText("auto")
    counts = {}
    for memory in ("6 GB", "400 MB"):
        w.substack_memory.setText(memory)
        [layer] = w.preview_plan()
        job = pipeline_plan(tmp_path, tmp_path / "big.tif", num_substacks="auto", sample_id="big", substack_memory=memory)
        counts[memory] = len(layer.data)
        assert counts[memory] == len(job["plan"]["substacks"])
    assert counts["6 GB"] == 1 < counts["400 MB"]
    argv = command.command_line(w.request(), {"input": tmp_path / "s.csv"}, "nextflow", tmp_path / "main.nf", "s")
    assert argv[argv.index("--substack_memory") + 1] == "400 MB" and argv[argv.index("--fingerprint") + 1] == "full"


def test_the_plan_preview_of_a_3d_layer_has_a_rectangle_for_each_substack_in_z_too(qt, tmp_path):
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((40, 64, 64), "uint8"), name="stack", scale=(2.0, 0.5, 0.5))
    w = make_widget(tmp_path, viewer)
    w.set_model("classical", "nuclei")
    w.add_layer(layer)
    w.num_substacks.setText("2,2,1")
    [shapes] = w.preview_plan()
    assert len(shapes.data) == 4 and list(shapes.scale) == [0.5, 0.5]
    assert sorted(shapes.features["core"])[:2] == ["Z0:20 Y0:32 X0:64", "Z0:20 Y32:64 X0:64"]


def test_a_request_already_in_the_cache_opens_from_it_without_starting_nextflow(qt, tmp_path, monkeypatch):
    """The cache entry is made by the pipeline's own steps (plan, segment, finalize); the
    widget's lookup must find it by the same key."""
    from aiod.steps import finalize as finalize_step, segment as segment_step
    from napari_aiod import runner
    gt = synthetic.touching_nuclei((120, 150), n=15, radius=(6.0, 9.0), seed=3)
    tifffile.imwrite(tmp_path / "cells.tif", synthetic.render_nuclei(gt, seed=4))
    past = time.time_ns() - 60_000_000_000  # PLAN remembers the fingerprint of a file that is not being written
    os.utime(tmp_path / "cells.tif", ns=(past, past))
    job = pipeline_plan(tmp_path, tmp_path / "cells.tif", num_substacks="1", overlap="32", sample_id="cells")
    segment_step.segment(job_json=tmp_path / "cells.plan.json", image_path=tmp_path / "cells.tif", index=0,
                         out=tmp_path / "result")
    monkeypatch.chdir(tmp_path)
    finalize_step.finalize(job_json=tmp_path / "cells.plan.json", result=tmp_path / "result", sample_id="cells",
                           root_dir=tmp_path / "root", tiff=False)
    started = []
    monkeypatch.setattr(runner.PipelineRun, "start", lambda self: started.append(self.argv))
    viewer = ViewerModel()
    w = make_widget(tmp_path, viewer)
    w.set_model("classical", "nuclei")
    w.add_image_paths([tmp_path / "cells.tif"])
    codes = []
    w.run_finished.connect(codes.append)
    w.run_button.click()
    assert codes == [0] and started == [] and w.run_handle is None
    labels = viewer.layers["cells classical_nuclei"]
    cached = ngff.open_labels(Path(job["cache_entry"]) / "labels.ome.zarr")
    assert np.array_equal(np.asarray(labels.data[...]), cached[...])
    assert "cells classical_nuclei image" in viewer.layers and w.status.text() == "from the cache: 1 image(s), no run"

    w.params.fields["sigma"].setValue(2.5)  # another parameter: another key, a run
    w.run_button.click()
    assert len(started) == 1 and w.run_handle is not None and codes == [0]


# ---- the command line and what Nextflow prints --------------------------------------------------

def test_the_run_is_the_command_line_a_person_would_type(tmp_path):
    req = command.RunRequest(images=[("field_1", str(tmp_path / "field_1.tif"))], model="classical", version="nuclei",
                             task="nuclei", params={"sigma": 2.0}, num_substacks="2", overlap="24", profile="local,demo",
                             outdir=str(tmp_path / "out"), root_dir=str(tmp_path / "root"))
    files = command.write_inputs(req, tmp_path / "run")
    argv = command.command_line(req, files, "nextflow", tmp_path / "main.nf", "s1")
    assert argv == ["nextflow", "run", str(tmp_path / "main.nf"), "-profile", "local,demo", "-ansi-log", "false",
                    "--input", str(tmp_path / "run" / "samplesheet.csv"), "--outdir", str(tmp_path / "out"),
                    "--root_dir", str(tmp_path / "root"), "--model", "classical", "--model_version", "nuclei",
                    "--task", "nuclei", "--num_substacks", "2", "--overlap", "24", "--substack_memory", "6 GB",
                    "--fingerprint", "full", "--trace_report_suffix", "s1",
                    "--model_params", str(tmp_path / "run" / "model_params.yaml")]
    assert files["input"].read_text().splitlines() == ["id,image", f"field_1,{tmp_path / 'field_1.tif'}"]
    assert yaml.safe_load(files["model_params"].read_text()) == {"sigma": 2.0}
    assert command.image_id("/d/embryo 1.ome.zarr/", taken=["embryo_1"]) == "embryo_1_2"


def test_progress_counts_finished_tasks_from_the_trace_and_the_error_is_the_aiod_line(tmp_path):
    p = command.Progress()
    for line in ["[85/6968bb] Submitted process > RESOLVE_MODEL (classical/default)",
                 "[55/93a8d8] Cached process > CHECK_INPUT (s.csv)", "N E X T F L O W  ~  version 24.10.0"]:
        p.feed_line(line)
    trace = tmp_path / "trace.txt"
    trace.write_text("task_id\thash\tprocess\tstatus\n1\t85/6968bb\tRESOLVE_MODEL\tCOMPLETED\n")
    p.read_trace(trace)
    assert (p.finished, p.started) == (1, 2)
    out = ("Command error:\n  AIOD ERROR: /t/bad.yaml entry 'classical': parameter 'sigma' of classical/nuclei: 99 is above"
           " the maximum 20\n\nERROR ~ AIOD ERROR: /t/bad.yaml entry 'classical': parameter 'sigma' of classical/nuclei:"
           " 99 is above the maximum 20\n\n -- Check '.nextflow.log' file for details")
    assert command.error_line(out) == ("AIOD ERROR: /t/bad.yaml entry 'classical': parameter 'sigma' of "
                                       "classical/nuclei: 99 is above the maximum 20")


# ---- a real run from the widget -----------------------------------------------------------------

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
