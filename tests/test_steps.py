"""The pipeline's steps run in-process, in the order the pipeline runs them, and the CLI's
error contract (one line, exit 65, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from aiod import cli, metrics, ngff, planner, substack_labels, synthetic
from aiod.steps import finalize as finalize_step, merge as merge_step, plan as plan_step, segment as segment_step
from aiod.models import classical
from aiod.errors import EXIT_CODE, PlanError


@pytest.fixture
def image(tmp_path):
    gt = synthetic.touching_nuclei((200, 240), n=50, radius=(7.0, 11.0), seed=11)
    tifffile.imwrite(tmp_path / "img.tif", synthetic.render_nuclei(gt, seed=12))
    return tmp_path / "img.tif", gt


@pytest.fixture
def model_json(tmp_path):
    assert cli.main(["resolve-model", "--model", "classical", "--version", "nuclei", "--out", str(tmp_path / "model.json")]) == 0
    return tmp_path / "model.json"


def plan(tmp_path, image_path, model_json, name="plan.json", **kw):
    args = dict(image_path=image_path, sample_id="img", axes=None, channel=None, model_json=model_json,
                num_substacks="2", overlap="24", substack_memory="2 GB", root_dir=tmp_path / "root",
                fingerprint_mode="full", out=tmp_path / name)
    return plan_step.plan(**{**args, **kw})


def test_steps_from_plan_to_cache_and_back(tmp_path, image, model_json, monkeypatch):
    image_path, gt = image
    job = plan(tmp_path, image_path, model_json)
    assert not job["cache_hit"] and len(job["plan"]["substacks"]) == 4
    assert job["plan"]["grid"] == [2, 2] and min(job["plan"]["overlap"]) >= 24
    subs = []
    for i in range(4):
        segment_step.segment(job_json=tmp_path / "plan.json", image_path=image_path, index=i, out=tmp_path / f"s{i}.zarr")
        subs.append(tmp_path / f"s{i}.zarr")
    manifest = merge_step.merge_result(job_json=tmp_path / "plan.json", substacks=subs, out=tmp_path / "result")
    assert manifest["n_objects"] == len(np.unique(gt)) - 1
    # the object table, made from the blocks as they were written, is the merged mask's own
    from aiod import measure, tables
    table = tables.read_table(tmp_path / "result" / "objects.parquet")
    alone = measure.measure_result(tmp_path / "result" / "labels.ome.zarr", image_path)
    assert manifest["objects"]["rows"] == len(table) == manifest["n_objects"]
    assert table.columns.keys() == alone.columns.keys()
    for name, column in alone.columns.items():
        np.testing.assert_allclose(np.asarray(table.columns[name], float), np.asarray(column, float), err_msg=name)
    (tmp_path / "task").mkdir()
    monkeypatch.chdir(tmp_path / "task")
    record = finalize_step.finalize(job_json=tmp_path / "plan.json", result=tmp_path / "result", sample_id="img",
                            root_dir=tmp_path / "root", tiff=True, outdir=tmp_path / "publish")
    assert record["cache_hit"] is False and record["format"] == "aiod-record/1"
    assert json.loads((tmp_path / "task" / "img.json").read_text()) == record
    assert (tmp_path / "publish" / "img.objects.csv").read_bytes() == (Path(record["cache_entry"]) / "objects.csv").read_bytes()
    assert set(record["published"]) == {".ome.zarr", ".tif", ".objects.parquet", ".objects.csv"}
    mask = np.asarray(ngff.open_labels(tmp_path / "publish" / "img.ome.zarr")[...])
    assert metrics.match_labels(gt, mask).f1 >= 0.95
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "publish" / "img.tif"), mask)

    again = plan(tmp_path, image_path, model_json, name="again.json")
    assert again["cache_hit"] and again["key"] == job["key"]
    hit = finalize_step.finalize(job_json=tmp_path / "again.json", result=None, sample_id="img", root_dir=tmp_path / "root", tiff=False)
    assert hit["cache_hit"] is True and hit["cache_entry"] == record["cache_entry"]

    # a batch's PLAN publishes its cache hits itself (no FINALIZE task for them), not its misses
    tifffile.imwrite(tmp_path / "other.tif", synthetic.render_nuclei(gt, seed=13))
    (tmp_path / "rows.tsv").write_text(f"img\t{image_path}\t\t\nother\t{tmp_path / 'other.tif'}\t\t\n")
    assert cli.main(["plan", "--rows", str(tmp_path / "rows.tsv"), "--out-dir", str(tmp_path / "jobs"), "--model", str(model_json),
                     "--num-substacks", "2", "--overlap", "24", "--root-dir", str(tmp_path / "root"),
                     "--records", str(tmp_path / "records"), "--outdir", str(tmp_path / "batch_out"), "--tiff"]) == 0
    assert json.loads((tmp_path / "batches.json").read_text())["hits"] == ["img"]
    assert sorted(p.name for p in (tmp_path / "records").glob("*.json")) == ["img.json"]
    published = json.loads((tmp_path / "batch_out" / "img.json").read_text())
    assert published == json.loads((tmp_path / "records" / "img.json").read_text())
    assert published["cache_hit"] is True and published["cache_entry"] == record["cache_entry"]
    assert set(published["published"]) == {".ome.zarr", ".tif", ".objects.parquet", ".objects.csv"}
    np.testing.assert_array_equal(np.asarray(ngff.open_labels(tmp_path / "batch_out" / "img.ome.zarr")[...]), mask)
    assert sorted(p.name for p in (tmp_path / "batch_out").iterdir() if p.name.startswith("other")) == []


def test_an_image_in_one_substack_is_written_by_segment_as_merge_would(tmp_path, image, model_json):
    """SEGMENT writes a one-substack image's result itself; it is the result MERGE makes from
    that substack's label file: labels, pyramid, object table and manifest (bar timings)."""
    import pyarrow.parquet as pq
    import zarr

    image_path, gt = image
    job = plan(tmp_path, image_path, model_json, num_substacks="1")
    segment_step.segment(job_json=tmp_path / "plan.json", image_path=image_path, index=0, out=tmp_path / "direct")
    direct = json.loads((tmp_path / "direct" / "manifest.json").read_text())
    assert direct["n_objects"] == len(np.unique(gt)) - 1 and sorted(direct["timings"]["substacks"]) == ["0"]
    # labels as a model may give them: ids with gaps, out of order, a large one
    odd = np.where(gt > 0, (gt * 7919) % 100_003 + 3, 0).astype(np.int64)
    odd[gt == gt.max()] = 2**40
    merge_step.write_whole(job, odd, tmp_path / "whole", {})
    substack_labels.write_substack_labels(tmp_path / "s0.zarr", odd, 0, plan=planner.Plan.from_dict(job["plan"]))
    merge_step.write_result(job, [tmp_path / "s0.zarr"], tmp_path / "merged")
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("whole", "merged"))
    for m in (a, b):
        del m["created"], m["timings"]
    assert a == b and a["n_objects"] == len(np.unique(gt)) - 1 and a["labels"]["dtype"] == "uint32"
    for level in range(a["labels"]["levels"]):
        x, y = (zarr.open_array(str(tmp_path / d / a["labels"]["path"] / str(level)), mode="r") for d in ("whole", "merged"))
        assert x.chunks == y.chunks
        np.testing.assert_array_equal(x[...], y[...])
    assert pq.read_table(tmp_path / "whole" / "objects.parquet").equals(pq.read_table(tmp_path / "merged" / "objects.parquet"))


def test_a_copy_of_the_image_elsewhere_has_the_same_key(tmp_path, image, model_json):
    image_path, _ = image
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "renamed.tif"
    copy.write_bytes(image_path.read_bytes())
    assert plan(tmp_path, image_path, model_json)["key"] == plan(tmp_path, copy, model_json, name="b.json")["key"]


@pytest.mark.parametrize("change", [{"num_substacks": "3"}, {"overlap": "40"}, {"channel": None, "fingerprint_mode": "sample"}])
def test_settings_that_can_change_the_result_change_the_key(tmp_path, image, model_json, change):
    image_path, _ = image
    base = plan(tmp_path, image_path, model_json)["key"]
    assert plan(tmp_path, image_path, model_json, name="b.json", **change)["key"] != base


def test_model_parameters_change_the_key(tmp_path, image, model_json):
    image_path, _ = image
    (tmp_path / "p.yaml").write_text("min_size: 10\n")
    cli.main(["resolve-model", "--model", "classical", "--version", "nuclei", "--params", str(tmp_path / "p.yaml"),
              "--out", str(tmp_path / "m2.json")])
    assert plan(tmp_path, image_path, model_json)["key"] != plan(tmp_path, image_path, tmp_path / "m2.json", name="b.json")["key"]


def test_auto_splits_to_fit_the_memory_budget(tmp_path, image, model_json):
    image_path, _ = image
    budget = int(classical.RUNTIME_BYTES) + 2**20  # 1 MB for the box
    job = plan(tmp_path, image_path, model_json, num_substacks="auto", substack_memory=str(budget))
    biggest = max(np.prod([b - a for a, b in s["box"]]) for s in job["plan"]["substacks"])
    assert len(job["plan"]["substacks"]) > 1
    assert classical.RUNTIME_BYTES + biggest * (classical.BYTES_PER_VOXEL + 2) <= budget  # uint16 input


def with_artifact(model_json, artifact, out):
    """model_json's model, as if its version had an artifact of `artifact`'s size."""
    model = json.loads(model_json.read_text())
    model["artifact"] = {"path": str(artifact), "sha256": "0" * 64, "location": str(artifact), "config": {}}
    out.write_text(json.dumps(model))
    return out


def test_the_artifact_s_size_is_memory_every_task_holds(tmp_path, image, model_json):
    image_path, _ = image
    weights = tmp_path / "weights.bin"
    with open(weights, "wb") as fh:
        fh.truncate(4 * 2**20)  # a sparse file: the size is what counts, as for loaded weights
    budget = str(int(classical.RUNTIME_BYTES) + 8 * 2**20)
    bare = plan(tmp_path, image_path, model_json, num_substacks="auto", substack_memory=budget)
    loaded = plan(tmp_path, image_path, with_artifact(model_json, weights, tmp_path / "m.json"), name="b.json",
                  num_substacks="auto", substack_memory=budget)
    assert len(bare["plan"]["substacks"]) == 1 and len(loaded["plan"]["substacks"]) > 1


def test_a_budget_the_model_alone_fills_is_refused_before_any_work(tmp_path, image, model_json):
    image_path, _ = image
    with pytest.raises(PlanError, match=r"^substack_memory 100.0 MB leaves nothing for the image: the model and its"):
        plan(tmp_path, image_path, model_json, substack_memory="100 MB")
    assert not (tmp_path / "plan.json").exists()


def test_small_overlap_is_raised_to_the_models_minimum(tmp_path, image, model_json, capsys):
    image_path, _ = image
    job = plan(tmp_path, image_path, model_json, overlap="2")
    assert min(job["plan"]["overlap"]) == 24  # 4 * sigma + max_diameter / 2 for classical/nuclei
    assert "overlap raised to 24 px" in capsys.readouterr().out


def test_a_volume_needs_less_halo_along_z_where_its_model_sees_one_plane_at_a_time():
    from aiod.models import empanada, halo_floor, params_namespace, resolve, sam2

    stack = params_namespace(resolve("empanada", None, None, {}))
    ortho = params_namespace(resolve("empanada", None, None, {"mode": "orthoplane"}))
    assert halo_floor(empanada, None, {}, stack, "YX") == (388, 388)  # a 256-px tile and an object
    assert halo_floor(empanada, None, {}, stack, "ZYX") == (128 + stack.median_slices // 2, 388, 388)
    assert halo_floor(empanada, None, {}, ortho, "ZYX") == (388, 388, 388)  # XZ and YZ planes are tiled too
    everything = params_namespace(resolve("sam2", None, None, {}))
    assert halo_floor(sam2, None, {}, everything, "ZYX") == (128, 1280, 1280)
    assert halo_floor(classical, None, {}, params_namespace(resolve("classical", "nuclei", None, {})), "ZYX") == (24,) * 3


@pytest.mark.parametrize("text, expected", [("2 GB", 2 * 1024**3), ("512MB", 512 * 1024**2), ("1.5 GiB", int(1.5 * 1024**3)),
                                            ("4.GB", 4 * 1024**3), ("100", 100)])
def test_memory_sizes_are_read_as_nextflow_writes_them(text, expected):
    assert plan_step.parse_memory(text) == expected


def test_unreadable_memory_size_is_refused():
    with pytest.raises(PlanError, match="substack_memory: 'lots' is not a memory size"):
        plan_step.parse_memory("lots")


def test_finalize_of_a_vanished_cache_entry_says_what_to_do(tmp_path, image, model_json):
    image_path, _ = image
    plan(tmp_path, image_path, model_json)
    with pytest.raises(Exception, match="is gone or damaged since this run was planned; run again without -resume"):
        finalize_step.finalize(job_json=tmp_path / "plan.json", result=None, sample_id="img", root_dir=tmp_path / "root", tiff=False)


def test_cli_errors_are_one_line_and_exit_65_and_write_nothing(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("- not\n- a mapping\n")
    code = cli.main(["resolve-model", "--model", "classical", "--version", "nuclei", "--params", str(tmp_path / "p.yaml"),
                     "--out", str(tmp_path / "model.json")])
    err = capsys.readouterr().err
    assert code == EXIT_CODE == 65
    assert err == f"AIOD ERROR: {tmp_path / 'p.yaml'}: expected a mapping of parameter names to values, e.g. 'min_size: 50'\n"
    assert not (tmp_path / "model.json").exists()


def test_demo_data_is_a_valid_samplesheet_with_ground_truth(tmp_path):
    from aiod import demo, samplesheet
    sheet = demo.write_demo(tmp_path / "demo")
    checked = samplesheet.check_samples(samplesheet.read_samplesheet(sheet))
    assert [c.sample.id for c in checked] == ["field_1", "field_2", "field_3", "field_4", "volume"]
    assert all(c.ground_truth is not None for c in checked)
    assert json.dumps([str(c.image) for c in checked])


def test_results_that_would_replace_an_input_image_are_refused(tmp_path, image, capsys):
    image_path, _ = image
    (tmp_path / "images.csv").write_text("id,image\nimg,img.tif\n")
    before = image_path.read_bytes()
    code = cli.main(["check-input", "--samplesheet", str(tmp_path / "images.csv"), "--outdir", str(tmp_path),
                     "--out", str(tmp_path / "samples.csv")])
    assert code == EXIT_CODE
    assert (f"{tmp_path / 'images.csv'}: line 2: column 'id': the result '{image_path}' would replace the input "
            f"'{image_path}' ({tmp_path / 'images.csv'}: line 2: column 'id')") in capsys.readouterr().err
    assert image_path.read_bytes() == before and not (tmp_path / "samples.csv").exists()


def test_aiod_merge_works_on_a_bare_plan_outside_the_pipeline(tmp_path):
    from aiod import planner, substack_labels
    gt = synthetic.touching_nuclei((160, 160), n=30, radius=(7.0, 11.0), seed=2)
    the_plan = planner.plan_substacks((160, 160), "YX", (2, 2), (20.0, 20.0), bytes_per_voxel=1, memory_budget=None)
    the_plan.save(tmp_path / "plan.json")
    rng = np.random.default_rng(0)
    for sub in the_plan.substacks:
        substack_labels.write_substack_labels(tmp_path / f"s{sub.index}.zarr", synthetic.perfect_local_model(gt, sub.box_slices, rng), sub.index)
    code = cli.main(["merge", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "out"),
                     *[str(tmp_path / f"s{i}.zarr") for i in range(4)]])
    assert code == 0
    merged = np.asarray(ngff.open_labels(tmp_path / "out" / "labels.ome.zarr", "segmentation")[...])
    assert metrics.match_labels(gt, merged).f1 == 1.0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["n_objects"] == len(np.unique(gt)) - 1
    assert cli.main(["merge", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "out"), str(tmp_path / "s0.zarr")]) == EXIT_CODE


def test_segment_names_the_image_and_the_chunk_that_planning_did_not_read(tmp_path, model_json, capsys):
    import zarr
    array = zarr.create_array(tmp_path / "img.zarr", shape=(64, 64), dtype="uint16", chunks=(32, 32))
    array[:] = 100
    plan(tmp_path, tmp_path / "img.zarr", model_json)
    (tmp_path / "img.zarr" / "c" / "1" / "1").write_bytes(b"damaged after planning")
    capsys.readouterr()
    code = cli.main(["segment", "--plan", str(tmp_path / "plan.json"), "--image", str(tmp_path / "img.zarr"),
                     "--index", "3", "--out", str(tmp_path / "s3.zarr")])
    lines = capsys.readouterr().err.splitlines()
    assert code == EXIT_CODE and len(lines) == 1
    assert lines[0].startswith(f"AIOD ERROR: {tmp_path / 'img.zarr'}: chunk 'c/1/1' cannot be decoded (")
    assert not (tmp_path / "s3.zarr").exists()


def fake_result(folder):
    (folder / "labels.ome.zarr").mkdir(parents=True)
    (folder / "labels.ome.zarr" / "chunk").write_bytes(b"labels")
    (folder / "manifest.json").write_text(json.dumps({"n_objects": 3, "labels": {"name": "x"}}))
    return folder


def test_plan_of_a_miss_claims_the_key_and_finalize_releases_it_after_commit(tmp_path, image, model_json, monkeypatch):
    job = plan(tmp_path, image[0], model_json)
    claim = tmp_path / "root" / "aiod_cache" / ".claims" / "classical" / "nuclei_masks" / job["key"]
    assert job["claim"]["path"] == str(claim) and json.loads(claim.read_text())["token"] == job["claim"]["token"]
    monkeypatch.chdir(tmp_path)
    finalize_step.finalize(job_json=tmp_path / "plan.json", result=fake_result(tmp_path / "r"), sample_id="img",
                           root_dir=tmp_path / "root", tiff=False)
    assert not claim.exists()


def test_plan_with_verify_cache_recomputes_an_entry_whose_bytes_changed(tmp_path, image, model_json, monkeypatch, capsys):
    job = plan(tmp_path, image[0], model_json)
    monkeypatch.chdir(tmp_path)
    finalize_step.finalize(job_json=tmp_path / "plan.json", result=fake_result(tmp_path / "r"), sample_id="img",
                           root_dir=tmp_path / "root", tiff=False)
    (tmp_path / "root" / "aiod_cache" / "classical" / "nuclei_masks" / job["key"] / "labels.ome.zarr" / "chunk").write_bytes(b"LABELS")
    assert plan(tmp_path, image[0], model_json, name="hit.json")["cache_hit"]
    assert not plan(tmp_path, image[0], model_json, name="verified.json", verify_cache=True)["cache_hit"]
    assert "labels.ome.zarr/chunk does not match its blake2b checksum" in capsys.readouterr().err


def test_a_second_run_planning_a_claimed_key_waits_and_then_takes_the_first_runs_result(tmp_path, image, model_json, monkeypatch):
    plan(tmp_path, image[0], model_json)  # this test's process is the first run: it holds the key
    log = tmp_path / "second.log"
    second = subprocess.Popen(
        [sys.executable, str(Path(cli.__file__).parents[2] / "bin" / "aiod"), "plan", "--id", "img", "--image", str(image[0]),
         "--model", str(model_json), "--num-substacks", "2", "--overlap", "24", "--root-dir", str(tmp_path / "root"),
         "--claim-poll-seconds", "0.1", "--out", str(tmp_path / "second.json")], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while "waiting for the result" not in log.read_text() and second.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert second.poll() is None, log.read_text()
    monkeypatch.chdir(tmp_path)
    finalize_step.finalize(job_json=tmp_path / "plan.json", result=fake_result(tmp_path / "r"), sample_id="img",
                           root_dir=tmp_path / "root", tiff=False)
    assert second.wait(timeout=120) == 0
    assert (tmp_path / "second.status").read_text() == "hit 4\n"
    assert json.loads((tmp_path / "second.json").read_text())["claim"] is None


def test_results_that_would_hold_or_sit_inside_an_input_are_refused_among_many_rows(tmp_path):
    from aiod.errors import AiodError
    from aiod.publish import check_targets
    out = tmp_path / "results"
    (tmp_path / "data").mkdir()
    rows = [(f"f{i}", [tmp_path / "data" / f"f{i}.tif"], f"line {i + 2}") for i in range(2000)]
    check_targets(rows, out, tmp_path / "root")  # 2000 rows, none touching: fine (and quick: linear)
    (out / "b.ome.zarr").mkdir(parents=True)
    held = rows + [("b", [out / "b.ome.zarr" / "img.tif"], "line 9000")]
    with pytest.raises(AiodError, match=r"line 9000: the result '.*/b.ome.zarr' would replace a folder holding the input "):
        check_targets(held, out)
    (tmp_path / "data" / "vol.zarr" / "0").mkdir(parents=True)
    (out / "c.ome.zarr").symlink_to(tmp_path / "data" / "vol.zarr" / "0")
    inside = rows + [("c", [tmp_path / "data" / "vol.zarr"], "line 9001")]
    with pytest.raises(AiodError, match=r"line 9001: the result '.*/c.ome.zarr' would be written inside the input "):
        check_targets(inside, out)


@pytest.mark.parametrize("mode", ["copy", "link", "symlink"])
def test_an_identical_rerun_keeps_the_published_mask_and_an_edited_one_is_published_again(tmp_path, mode):
    """Publishing the same cache entry again leaves `<id>.ome.zarr` as it is (files, inodes and
    times: nothing copied) and rewrites only the record; a file the user changed in between, or
    another publish mode, makes it publish the mask again."""
    from aiod import publish

    entry = tmp_path / "cache" / "entry"
    labels = entry / "labels.ome.zarr"
    (labels / "0").mkdir(parents=True)
    (labels / "zarr.json").write_text('{"node_type": "group"}')
    (labels / "0" / "c").write_bytes(b"\x01" * 64)
    record = {"id": "a", "key": "k", "cache_entry": str(entry), "aiod_version": "test", "cache_hit": False}
    out = tmp_path / "out"

    def state():
        return {str(p.relative_to(out)): (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in sorted(out.rglob("*"))
                if "ome.zarr" in p.name or ".ome.zarr/" in str(p.relative_to(out))}

    publish.publish(outdir=out, sample_id="a", labels=labels, record=record, mode=mode)
    first = state()
    publish.publish(outdir=out, sample_id="a", labels=labels, record={**record, "cache_hit": True}, mode=mode)
    assert state() == first  # kept, not copied again
    saved = json.loads((out / "a.json").read_text())
    assert saved["cache_hit"] is True and saved["published"] == {".ome.zarr": str(out / "a.ome.zarr")}
    assert not [p for p in out.iterdir() if p.name.startswith(publish.TMP_PREFIX)]

    if mode == "copy":
        chunk = out / "a.ome.zarr" / "0" / "c"
        chunk.write_bytes(b"\x02" * 64)  # the user edits the published mask: same size, new time
        publish.publish(outdir=out, sample_id="a", labels=labels, record=record, mode=mode)
        assert chunk.read_bytes() == b"\x01" * 64 and state() != first
        publish.publish(outdir=out, sample_id="a", labels=labels, record=record, mode="link")
        assert chunk.stat().st_ino == (labels / "0" / "c").stat().st_ino  # another mode: published again
