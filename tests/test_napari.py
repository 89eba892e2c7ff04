"""The napari plugin (napari-aiod/) as a person uses it: its dock widget's form, headless.

The widget runs under Qt's offscreen platform. napari's canvas needs OpenGL, which that platform
does not have, so the widget is given napari's viewer model (`ViewerModel`: the layer list and
`add_image`/`add_labels` a viewer has, without its window); everything the widget does goes
through it. The tests of real pipeline runs from the widget are in test_napari_run.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import tifffile
import yaml

from napari_helpers import engine, make_widget, qt  # noqa: F401 (fixtures)
from napari.components import ViewerModel
from qtpy.QtWidgets import QDoubleSpinBox, QSpinBox

from aiod import ngff, synthetic
from aiod.models import visible
from aiod.registry import load_registry
from napari_aiod import command
from napari_aiod.params_form import ValueField


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
    w.publish_image.setChecked(True)
    saved = w.settings()
    path = w.save_project("lab-run")
    assert path == tmp_path / "root" / "project_configs" / "lab-run.yaml"
    assert yaml.safe_load(path.read_text())["params"]["threshold"] == 120.0
    other = make_widget(tmp_path)
    assert other.load_project(path)
    assert other.settings() == saved and other.request().substack_memory == "12 GB" and other.request().fingerprint == "sample"
    assert other.request().publish_image and "--publish_image" in command.command_line(
        other.request(), {"input": tmp_path / "s.csv"}, "nextflow", tmp_path / "main.nf", "s1")


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
