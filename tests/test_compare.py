"""Several models in one run: the --models list (aiod.model_list) and the comparison table
(aiod.compare), on real masks scored against ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from aiod import cli, compare, evaluate, metrics, model_list, ngff, synthetic
from aiod.errors import EXIT_CODE, ModelError


def test_models_string_entries_split_at_commas_outside_braces():
    assert model_list.split_entries("classical, stardist:2D_versatile_fluo, cellpose:nuclei:{diameter: 17, min_size: 5}") == [
        "classical", "stardist:2D_versatile_fluo", "cellpose:nuclei:{diameter: 17, min_size: 5}"]
    assert model_list.parse_entry("cellpose:nuclei:nuclei:{diameter: 17}", "x") == {
        "model": "cellpose", "version": "nuclei", "task": "nuclei", "params": {"diameter": 17}}
    assert model_list.parse_entry("stardist", "x") == {"model": "stardist", "version": None, "task": None, "params": {}}


def test_models_resolve_with_their_overrides_and_labels_that_tell_them_apart():
    specs = model_list.resolve_entries(model_list.read_entries(
        "classical, classical:nuclei:{min_size: 40}, stardist:2D_versatile_fluo, cellpose:nuclei:{diameter: 17}"))
    labels = [s["label"] for s in specs]
    assert labels[2:] == ["stardist_2D_versatile_fluo", "cellpose_nuclei"]
    assert labels[0].startswith("classical_nuclei-") and labels[1].startswith("classical_nuclei-") and labels[0] != labels[1]
    assert specs[1]["params"]["min_size"] == 40 and specs[3]["params"]["diameter"] == 17
    assert specs[0]["params"]["min_size"] != 40


def test_models_file_lists_entries_with_their_own_labels(tmp_path):
    (tmp_path / "models.yaml").write_text(
        "- {model: classical, label: otsu}\n"
        "- model: classical\n  params: {threshold: 500}\n  label: li\n"
        "- stardist:2D_versatile_fluo\n")
    specs = model_list.resolve_entries(model_list.read_entries(str(tmp_path / "models.yaml")))
    assert [s["label"] for s in specs] == ["otsu", "li", "stardist_2D_versatile_fluo"]
    assert specs[1]["params"]["threshold"] == 500


@pytest.mark.parametrize("models, message", [
    ("classical, stardst", "--models entry 'stardst': unknown model 'stardst' (did you mean 'stardist'?)"),
    ("classical:nuclei:{min_sise: 3}", "unknown parameter 'min_sise' for classical/nuclei (did you mean 'min_size'?)"),
    ("classical:nuclei:{min_size: -3}", "parameter 'min_size' of classical/nuclei"),
    ("classical, classical:nuclei", "entries 'classical' and 'classical:nuclei' are the same model with the same task and parameters"),
    ("classical,,stardist", "an empty entry"),
    ("classical:nuclei:{min_size: 3", "cannot read its parameters"),
    ("classical{min_size: 3}", "parameters come last, after a colon"),
    ("classical:a:b:c", "expected family[:version[:task]]"),
    ("cellpose:nosuch", "unknown version 'nosuch' of model 'cellpose'"),
])
def test_bad_models_entries_are_refused_naming_the_entry(tmp_path, models, message):
    with pytest.raises(ModelError, match=re_escape(message)):
        model_list.resolve_entries(model_list.read_entries(models))
    assert cli.main(["resolve-model", "--models", models, "--out-dir", str(tmp_path / "m")]) == EXIT_CODE
    assert not list((tmp_path / "m").glob("*.json")) if (tmp_path / "m").exists() else True


def re_escape(text: str) -> str:
    import re
    return re.escape(text)


@pytest.mark.parametrize("text, message", [
    ("- {model: classical, colour: red}\n", "entry 1: unknown key 'colour'"),
    ("- {model: classical, label: a}\n- {model: classical, params: {min_size: 9}, label: a}\n", "two entries are labelled 'a'"),
    ("- {model: classical, label: 'a/b'}\n", "label 'a/b': use letters, digits"),
    ("model: classical\n", "expected a list of entries"),
    ("- {model: classical, params: [1, 2]}\n", "'params' must be a mapping"),
])
def test_bad_models_files_are_refused_naming_the_file_and_entry(tmp_path, text, message):
    (tmp_path / "models.yaml").write_text(text)
    with pytest.raises(ModelError, match=re_escape(message)):
        model_list.resolve_entries(model_list.read_entries(str(tmp_path / "models.yaml")))


def test_models_file_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(ModelError, match=re_escape(f"--models {tmp_path / 'nope.yaml'}: file not found")):
        model_list.read_entries(str(tmp_path / "nope.yaml"))


def test_models_and_a_single_model_request_are_not_mixed(tmp_path, capsys):
    code = cli.main(["resolve-model", "--models", "classical", "--model", "stardist", "--out-dir", str(tmp_path / "m")])
    assert code == EXIT_CODE and "use it without --model" in capsys.readouterr().err


@pytest.fixture
def published(tmp_path):
    """A results folder of a two-model run (records, masks in the cache layout's place) with
    ground truth: 'good' finds every object, 'fused' merges pairs of objects."""
    gt = synthetic.touching_nuclei((96, 96), n=12, radius=(7.0, 10.0), seed=4)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "img.tif", synthetic.render_nuclei(gt, seed=5))
    fused = gt.copy()
    fused[fused == 1], fused[fused == 3] = 2, 4
    results = tmp_path / "results"
    for label, mask, seconds in (("good", gt, 2.0), ("fused", fused, 0.5)):
        entry = tmp_path / "cache" / label
        ngff.create_labels(entry / "labels.ome.zarr", "x", gt.shape, "YX", np.uint32)[...] = mask
        (entry / "manifest.json").write_text(json.dumps({
            "image": {"axes": "YX", "shape": list(gt.shape)},
            "timings": {"substacks": {"0": {"segment_seconds": seconds, "peak_memory_bytes": 3 << 20, "device": "CPU"},
                                      "1": {"segment_seconds": seconds, "peak_memory_bytes": 5 << 20, "device": "CPU"}}}}))
        (results / label).mkdir(parents=True)
        ngff.create_labels(results / label / "a.ome.zarr", "x", gt.shape, "YX", np.uint32)[...] = mask
        record = {"format": "aiod-record/1", "id": "a", "model_label": label, "cache_hit": label == "fused",
                  "cache_entry": str(entry), "n_objects": len(np.unique(mask)) - 1,
                  "model": {"family": "classical", "version": "nuclei", "task": "nuclei", "params": {"label": label}},
                  "published": {".ome.zarr": str(results / label / "a.ome.zarr")}}
        (results / label / "a.json").write_text(json.dumps(record))
    (tmp_path / "s.csv").write_text("id,image,ground_truth\na,img.tif,gt.tif\n")
    return tmp_path, gt, fused


def test_comparison_ranks_the_models_by_their_pooled_scores_with_their_cost(published):
    tmp_path, gt, fused = published
    table = compare.compare_results(tmp_path / "results", tmp_path / "s.csv")
    good, worse = table["models"]
    assert (good["label"], good["best"], worse["label"], worse["best"]) == ("good", True, "fused", False)
    assert good["f1"] == good["dice"] == 1.0 and worse["f1"] == pytest.approx(metrics.match_labels(gt, fused).f1)
    assert worse["ap_50_95"] == pytest.approx(np.mean([metrics.match_labels(gt, fused, t).accuracy for t in metrics.THRESHOLDS]))
    assert (good["computed"], good["cached"], worse["computed"], worse["cached"]) == (1, 0, 0, 1)
    assert good["segment_seconds"] == 4.0 and good["megapixels"] == pytest.approx(96 * 96 / 1e6)
    assert good["seconds_per_megapixel"] == pytest.approx(4.0 / (96 * 96 / 1e6), rel=1e-3)
    assert good["peak_memory_bytes"] == 5 << 20 and good["device"] == "CPU"
    assert good["objects"] == len(np.unique(gt)) - 1 and worse["objects"] == len(np.unique(fused)) - 1
    assert table["evaluation"]["pooled"][0]["model"] == "good"
    by_dice = compare.compare_results(tmp_path / "results", tmp_path / "s.csv", rank_by="dice")
    assert by_dice["rank_by"] == "dice"


def test_comparison_without_ground_truth_keeps_the_order_and_marks_no_model(published):
    tmp_path, *_ = published
    table = compare.compare_results(tmp_path / "results", None)
    assert not table["ground_truth"] and not any(r["best"] for r in table["models"])
    assert all(r["f1"] is None and r["objects"] > 0 for r in table["models"])
    text = compare.table_text(table)
    assert "F1@0.5" not in text and "good" in text and "s/Mpx" in text


def test_tables_written_whole_as_json_and_csv_beside_the_scores(published):
    tmp_path, *_ = published
    table = compare.compare_results(tmp_path / "results", tmp_path / "s.csv")
    written = compare.write(tmp_path / "results", table)
    assert [p.name for p in written] == ["comparison.json", "comparison.csv", "evaluation.json", "evaluation.csv"]
    saved = json.loads((tmp_path / "results" / "comparison.json").read_text())
    assert saved["format"] == "aiod-comparison/1" and [r["label"] for r in saved["models"]] == ["good", "fused"]
    lines = (tmp_path / "results" / "comparison.csv").read_text().splitlines()
    assert lines[0].startswith("label,family,version") and len(lines) == 3
    assert not list((tmp_path / "results").glob(".aiod-partial-*"))
    rows, pooled = evaluate.evaluate(tmp_path / "results", tmp_path / "s.csv")
    assert {r["model"] for r in rows} == {"good", "fused"} and len(pooled) == 2


def test_comparison_refuses_an_unknown_metric(published):
    tmp_path, *_ = published
    with pytest.raises(Exception, match="--rank_by 'speed': expected one of f1, ap_50_95, panoptic_quality, dice"):
        compare.compare_results(tmp_path / "results", tmp_path / "s.csv", rank_by="speed")


def test_evaluate_step_scores_each_record_from_its_cache_entry(published):
    tmp_path, gt, fused = published
    rows = [f"{label}\ta\t{tmp_path / 'gt.tif'}\t{tmp_path / 'results' / label / 'a.json'}" for label in ("good", "fused")]
    (tmp_path / "items.tsv").write_text("\n".join(rows) + "\n")
    assert cli.main(["score", "--items", str(tmp_path / "items.tsv"), "--out", str(tmp_path / "scores")]) == 0
    scores = [json.loads((tmp_path / "scores" / f"{k}.json").read_text()) for k in range(2)]
    assert [(s["label"], s["id"]) for s in scores] == [("good", "a"), ("fused", "a")]
    assert scores[0]["matches"][0]["f1"] == 1.0
    assert scores[1]["matches"][0]["f1"] == pytest.approx(metrics.match_labels(gt, fused).f1)


def test_run_files_replace_only_what_aiod_wrote(tmp_path):
    from aiod import publish
    from aiod.errors import AiodError
    out = tmp_path / "out"
    out.mkdir()
    publish.check_run_files(out, [])  # nothing there yet
    (out / "report.html").write_text('<html><head><meta name="generator" content="AIoD report"></head></html>')
    (out / "evaluation.json").write_text(json.dumps({"thresholds": [0.5], "images": [], "pooled": {}}))  # an older aiod evaluate
    (out / "evaluation.csv").write_text("id\n")
    (out / "comparison.json").write_text(json.dumps({"format": "aiod-comparison/1"}))
    publish.check_run_files(out, [])
    (out / "comparison.json").write_text('{"mine": 1}')
    with pytest.raises(AiodError, match="comparison.json' already exists and is not a file AIoD wrote"):
        publish.check_run_files(out, [])
    (out / "comparison.json").unlink()
    with pytest.raises(AiodError, match="comparison.csv' already exists and is not a file AIoD wrote"):
        (out / "comparison.csv").write_text("my notes\n")
        publish.check_run_files(out, [])
    (out / "comparison.csv").unlink()
    (out / "report.html").write_text("<html>my own page</html>")
    with pytest.raises(AiodError, match="report.html' already exists"):
        publish.check_run_files(out, [])
    with pytest.raises(AiodError, match="would replace the input"):
        publish.check_run_files(out, [("a", [out / "report.html"], "images.csv line 2")])
