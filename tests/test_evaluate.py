"""`aiod evaluate` (and the pipeline's EVALUATE): published masks scored against the
samplesheet's ground truth, one row per image and the pooled scores; bad ground truth and
missing masks named in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from aiod import evaluate, ngff, synthetic
from aiod.errors import InputError


def test_evaluate_scores_published_masks_against_ground_truth(tmp_path, capsys):
    gt = synthetic.touching_nuclei((96, 96), n=12, radius=(7.0, 10.0), seed=4)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "img.tif", synthetic.render_nuclei(gt, seed=5))
    wrong = gt.copy()
    wrong[wrong == 1] = 2  # two objects fused into one
    ngff.create_labels(tmp_path / "res" / "a.ome.zarr", "x", gt.shape, "YX", np.uint32)[...] = wrong
    (tmp_path / "s.csv").write_text("id,image,ground_truth\na,img.tif,gt.tif\n")
    ngff.create_labels(tmp_path / "res" / "b.ome.zarr", "x", gt.shape, "YX", np.uint32)[...] = gt
    (tmp_path / "s.csv").write_text("id,image,ground_truth\na,img.tif,gt.tif\nb,img.tif,gt.tif\nc,img.tif,\n")
    rows, [pooled] = evaluate.evaluate(tmp_path / "res", tmp_path / "s.csv")
    n = len(np.unique(gt)) - 1
    assert [r["id"] for r in rows] == ["a", "b"]  # c has no ground truth
    assert rows[0]["n_true"] == n and rows[0]["n_pred"] == n - 1 and rows[0]["fused"] == 1
    # the fused object still matches the larger of its two (IoU >= 0.5); the smaller is missed
    assert rows[0]["tp"] == n - 1 and rows[0]["fn"] == 1 and rows[0]["fp"] == 0
    assert rows[1]["f1"] == rows[1]["ap_50_95"] == rows[1]["dice"] == rows[1]["panoptic_quality"] == 1.0
    assert (pooled["tp"], pooled["fn"], pooled["fp"], pooled["fused"]) == (2 * n - 1, 1, 0, 1)
    assert pooled["f1"] == pytest.approx(2 * (2 * n - 1) / (2 * (2 * n - 1) + 1))
    evaluate.report(tmp_path / "res", tmp_path / "s.csv")
    out = capsys.readouterr().out
    assert "F1@0.5" in out and "AP50:95" in out and evaluate.POOLED in out
    saved = json.loads((tmp_path / "res" / "evaluation.json").read_text())
    assert saved["images"] == rows and saved["pooled"] == [pooled] and saved["thresholds"][-1] == 0.95
    table = (tmp_path / "res" / "evaluation.csv").read_text().splitlines()
    assert table[0].startswith("model,id,n_true,n_pred,tp,fp,fn") and table[0].endswith("f1@0.95") and len(table) == 4


def test_evaluate_refuses_negative_ground_truth_labels_naming_the_file(tmp_path):
    gt = np.zeros((16, 16), np.int16)
    gt[2:6, 2:6], gt[8:12, 8:12] = 1, -3
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((16, 16), np.uint8))
    ngff.create_labels(tmp_path / "res" / "a.ome.zarr", "x", gt.shape, "YX", np.uint32)[...] = 0
    (tmp_path / "s.csv").write_text("id,image,ground_truth\na,img.tif,gt.tif\n")
    with pytest.raises(InputError, match=r"gt.tif: ground truth has negative labels \(-3\)"):
        evaluate.evaluate(tmp_path / "res", tmp_path / "s.csv")
    assert not (tmp_path / "res" / "evaluation.json").exists()


def test_evaluate_without_a_published_mask_names_it(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "s.csv").write_text("id,image,ground_truth\na,img.tif,img.tif\n")
    with pytest.raises(InputError, match="a.ome.zarr: no published mask for 'a'"):
        evaluate.evaluate(tmp_path / "res", tmp_path / "s.csv")
