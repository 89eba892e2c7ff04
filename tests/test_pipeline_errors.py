"""Bad input stops the run with one specific message and leaves nothing in the cache or outdir."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from pipeline_helpers import cache_entries, run_pipeline

pytestmark = pytest.mark.pipeline


@pytest.fixture
def folder(tmp_path):
    good = np.zeros((64, 64), dtype=np.uint16)
    good[20:40, 20:40] = 1000
    tifffile.imwrite(tmp_path / "good.tif", good)
    return tmp_path


def run_bad(folder, sheet_text, *params):
    (folder / "images.csv").write_text(sheet_text)
    proc = run_pipeline(folder, "--input", str(folder / "images.csv"), "--outdir", str(folder / "results"),
                        "--root_dir", str(folder / "root"), *params, check=False)
    assert proc.returncode != 0
    assert cache_entries(folder / "root") == []
    assert list(folder.glob("results/*.ome.zarr")) == []
    return proc.stdout + proc.stderr


def last_error(output):
    lines = [line for line in output.splitlines() if "AIOD ERROR:" in line]
    assert lines, output[-3000:]
    return lines[-1]


def test_missing_image_is_named(folder):
    out = run_bad(folder, "id,image\na,good.tif\nb,nothere.tif\n")
    assert f"{folder / 'nothere.tif'}: file not found" in last_error(out)


def test_corrupt_tiff_is_named(folder):
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x13" * 200)
    out = run_bad(folder, "id,image\nbroken,broken.tif\n")
    assert f"{folder / 'broken.tif'}: cannot be read as TIFF" in last_error(out)


def test_misspelled_samplesheet_column_is_named(folder):
    out = run_bad(folder, "id,imge\na,good.tif\n")
    assert f"{folder / 'images.csv'}: line 1: unknown column 'imge' (did you mean 'image'?)" in last_error(out)


def test_unknown_model_lists_the_available_ones(folder):
    out = run_bad(folder, "id,image\na,good.tif\n", "--model", "celpose")
    assert "unknown model 'celpose' (did you mean 'cellpose'?); models: " in last_error(out) and "classical" in last_error(out)


def test_unknown_task_and_out_of_range_parameter_are_refused_before_any_image(folder):
    out = run_bad(folder, "id,image\na,good.tif\n", "--model_version", "cells", "--task", "nuclei")
    assert "unknown task 'nuclei' of classical/cells; tasks: cyto" in last_error(out)
    (folder / "p.yaml").write_text("sigma: 50\n")
    out = run_bad(folder, "id,image\na,good.tif\n", "--model_params", str(folder / "p.yaml"))
    assert f"{folder / 'p.yaml'}: parameter 'sigma' of classical/nuclei: 50 is above the maximum 20" in last_error(out)


def test_4d_image_without_axes_asks_for_them(folder):
    tifffile.imwrite(folder / "four.tif", np.zeros((2, 3, 16, 16), dtype=np.uint8), photometric="minisblack")
    out = run_bad(folder, "id,image\nfour,four.tif\n")
    error = last_error(out)
    assert f"{folder / 'four.tif'}: image has 4 dimensions" in error and "axes" in error


def test_missing_samplesheet_and_parameter_file_are_named(folder):
    out = run_bad(folder, "id,image\na,good.tif\n", "--model_params", str(folder / "nope.yaml"))
    assert f"--model_params {folder / 'nope.yaml'}: file not found" in last_error(out)
    proc = run_pipeline(folder, "--input", str(folder / "absent.csv"), "--root_dir", str(folder / "root"), check=False)
    assert proc.returncode != 0 and f"--input {folder / 'absent.csv'}: file not found" in last_error(proc.stdout + proc.stderr)


@pytest.mark.parametrize("models, message", [
    ("classical, cellpose:nuclei:{diamter: 17}", "--models entry 'cellpose:nuclei': unknown parameter 'diamter' for cellpose/nuclei (did you mean 'diameter'?)"),
    ("classical, classical:nuclei", "--models: entries 'classical' and 'classical:nuclei' are the same model with the same task and parameters"),
    ("models.yaml", "--models models.yaml: file not found"),
])
def test_bad_models_list_is_refused_naming_the_entry_before_any_image(folder, models, message):
    out = run_bad(folder, "id,image\na,good.tif\n", "--models", models)
    assert message in last_error(out)
    assert not (folder / "results").exists() or list((folder / "results").rglob("*.json")) == []


def test_a_report_of_ones_own_in_the_outdir_is_never_overwritten(folder):
    (folder / "results").mkdir()
    (folder / "results" / "report.html").write_text("<html>the lab's own notes</html>")
    out = run_bad(folder, "id,image\na,good.tif\n")
    assert f"'{folder / 'results' / 'report.html'}' already exists and is not a file AIoD wrote" in last_error(out)
    assert (folder / "results" / "report.html").read_text() == "<html>the lab's own notes</html>"
