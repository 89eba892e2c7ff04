"""The object table, accumulated block by block, equals skimage's regionprops on the whole image."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.measure import regionprops_table
from skimage.segmentation import relabel_sequential

from aiod import block_pass, cli, measure, ngff
from aiod.errors import InputError

PROPS = ("label", "area", "centroid", "bbox", "intensity_mean", "intensity_min", "intensity_max")


def blobs(shape, seed=0, level=0.53):
    """Random blobs of every shape and size, many wider than a block."""
    rng = np.random.default_rng(seed)
    labels, _ = ndimage.label(ndimage.gaussian_filter(rng.random(shape), 2) > level)
    return labels.astype(np.uint32)


def channels(shape, n, seed=1):
    return np.random.default_rng(seed).integers(0, 4000, size=(n, *shape)).astype(np.uint16)


def in_blocks(labels, image, block, order_seed=None):
    """(labels block, image block, offset) over a grid of `block`, in C order or shuffled."""
    corners = list(itertools.product(*(range(0, n, b) for n, b in zip(labels.shape, block))))
    if order_seed is not None:
        np.random.default_rng(order_seed).shuffle(corners)
    for corner in corners:
        sl = tuple(slice(c, c + b) for c, b in zip(corner, block))
        yield labels[sl], None if image is None else image[(slice(None), *sl)], corner


def chunked(labels, image, block, axes, **kw):
    stats = measure.ObjectStats(axes, n_channels=0 if image is None else len(image), **kw)
    for lab, img, offset in in_blocks(labels, image, block, order_seed=3):
        stats.add(lab, img, offset)
    return stats.finish()


def assert_equals_regionprops(table, labels, image, ids=None, scale=None):
    """Every column against skimage (on ids renumbered 1..n: regionprops reads labels densely)."""
    ref = regionprops_table(labels, None if image is None else np.moveaxis(image, 0, -1),
                            properties=PROPS if image is not None else PROPS[:4])
    c, axes, d = table.columns, "zyx"[-labels.ndim:], labels.ndim
    scale = np.ones(d) if scale is None else np.asarray(scale)
    np.testing.assert_array_equal(c["id"], ref["label"] if ids is None else ids[ref["label"]])
    np.testing.assert_array_equal(c["voxels"], ref["area"])
    np.testing.assert_allclose(c[measure.size_column(d)], ref["area"] * scale.prod())
    for k, a in enumerate(axes):
        np.testing.assert_allclose(c[f"centroid_{a}"], ref[f"centroid-{k}"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(c[f"centroid_{a}_um"], ref[f"centroid-{k}"] * scale[k], rtol=1e-12)
        np.testing.assert_array_equal(c[f"bbox_min_{a}"], ref[f"bbox-{k}"])
        np.testing.assert_array_equal(c[f"bbox_max_{a}"], ref[f"bbox-{k + d}"])
    n_channels = 0 if image is None else len(image)
    for ch in range(n_channels):
        suffix = f"-{ch}"  # the image is given to skimage with a channel axis, even of one
        np.testing.assert_allclose(c[f"mean_intensity_c{ch}"], ref[f"intensity_mean{suffix}"], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(c[f"min_intensity_c{ch}"], ref[f"intensity_min{suffix}"])
        np.testing.assert_array_equal(c[f"max_intensity_c{ch}"], ref[f"intensity_max{suffix}"])
    assert not any(k.endswith(f"_c{n_channels}") for k in c)


@pytest.mark.parametrize("n_channels", [0, 1, 2])
def test_3d_table_in_blocks_equals_regionprops_of_the_whole_volume(n_channels):
    labels = blobs((30, 37, 41))
    image = channels(labels.shape, n_channels) if n_channels else None
    table = chunked(labels, image, (8, 9, 16), "ZYX", scale=(2.0, 0.5, 0.5))
    assert len(table) == labels.max() > 20
    assert_equals_regionprops(table, labels, image, scale=(2.0, 0.5, 0.5))


@pytest.mark.parametrize("n_channels", [0, 3])
def test_2d_table_in_blocks_equals_regionprops(n_channels):
    labels = blobs((90, 70), seed=4, level=0.52)
    image = channels(labels.shape, n_channels) if n_channels else None
    table = chunked(labels, image, (16, 20), "YX", scale=(0.3, 0.3))
    assert "area_um2" in table.columns and "volume_um3" not in table.columns
    assert_equals_regionprops(table, labels, image, scale=(0.3, 0.3))


def test_float_image_of_one_channel_without_a_channel_axis():
    labels = blobs((20, 30, 30), seed=5)
    image = np.random.default_rng(2).normal(size=labels.shape).astype(np.float32)
    stats = measure.ObjectStats("ZYX", n_channels=1)
    for lab, img, offset in in_blocks(labels, image[None], (7, 11, 13)):
        stats.add(lab, img[0], offset)
    # skimage averages float32 in float32; ours sums in float64, as skimage does for a float64 image
    assert_equals_regionprops(stats.finish(), labels, image[None].astype(np.float64))


@pytest.mark.parametrize("dtype,base", [(np.uint32, 4_000_000), (np.uint64, 1 << 40), (np.uint64, (1 << 64) - (1 << 22))])
def test_sparse_ids_far_apart_give_the_same_rows(dtype, base):
    labels = blobs((24, 30, 36), seed=6)
    ids = np.concatenate([[0], dtype(base) + dtype(7919) * np.arange(1, labels.max() + 1, dtype=dtype)]).astype(dtype)
    image = channels(labels.shape, 1)
    table = chunked(ids[labels], image, (8, 8, 8), "ZYX")
    assert table.columns["id"].dtype == (np.uint64 if dtype == np.uint64 else np.int64)
    assert_equals_regionprops(table, labels, image, ids=ids)


@pytest.mark.parametrize("first,table_grows", [(1, False), (70_000, True), (10_000_000, False)])
def test_ids_in_reach_of_the_threads_slot_table_or_beyond_it_give_the_same_rows(monkeypatch, first, table_grows):
    """Ids 1..n use the thread's slot table as it is; ids past it but within its reach (2 per
    voxel of a 32³ block, + 65536) make it grow; ids beyond its reach get a table per block."""
    import threading

    monkeypatch.setattr(block_pass, "_local", threading.local())
    labels = blobs((32, 64, 64), seed=8)
    ids = np.concatenate([[0], np.arange(first, first + labels.max(), dtype=np.uint32)])
    image = channels(labels.shape, 1)
    table = chunked(ids[labels], image, (32, 32, 32), "ZYX")
    assert_equals_regionprops(table, labels, image, ids=ids)
    assert (len(block_pass._local.slot) > block_pass.SLOTS) == table_grows
    assert np.all(block_pass._local.slot == -1)  # every entry a block used is reset


@pytest.mark.parametrize("label_dtype,image_dtype", [(">u4", ">u2"), ("<i4", "float16"), ("u2", ">f8"), ("u1", "bool")])
def test_labels_and_images_of_any_byte_order_and_float_width_give_the_table_of_native_ones(label_dtype, image_dtype):
    labels = blobs((12, 20, 24), seed=9)
    labels = (labels % 250).astype(label_dtype)  # the blobs renumbered under 250 for uint8 (some merge: fine)
    image = (channels(labels.shape, 1) % 2048).astype(image_dtype)  # exact in float16
    native = chunked(labels.astype(labels.dtype.newbyteorder("=")), image.astype(np.float64), (6, 10, 12), "ZYX").columns
    table = chunked(labels, image, (6, 10, 12), "ZYX").columns
    assert list(table) == list(native) and len(table["id"]) >= 5
    for k in native:
        np.testing.assert_array_equal(table[k], native[k])


def test_ids_that_turn_sparse_half_way_keep_the_rows_seen_before():
    labels = blobs((24, 30, 36), seed=7)
    n = int(labels.max())
    ids = np.arange(n + 1, dtype=np.uint32)
    ids[n // 2 + 1:] += 50_000_000  # the second half far beyond the first
    table = chunked(ids[labels], None, (8, 10, 12), "ZYX")
    assert_equals_regionprops(table, labels, None, ids=ids)


def test_ids_met_out_of_order_go_to_sorted_tables_and_back_to_arrays_with_the_same_rows(monkeypatch):
    monkeypatch.setattr(measure, "DENSE_SLACK", 0)  # no slack: the first blocks' ids look sparse
    switches = []
    for name in ("_to_sparse", "_to_dense"):
        original = getattr(measure.ObjectStats, name)
        monkeypatch.setattr(measure.ObjectStats, name, lambda self, *a, _f=original, _n=name: (switches.append(_n), _f(self, *a)))
    z, y, x = np.indices((24, 30, 36)) // 3  # 960 boxes of 3x3x3 voxels numbered in raster order
    labels = ((z * 10 + y) * 12 + x + 1).astype(np.uint32)
    labels[(z + y + x) % 5 == 0] = 0
    labels, _, _ = relabel_sequential(labels)
    table = chunked(labels, channels(labels.shape, 1), (6, 6, 6), "ZYX")
    assert "_to_sparse" in switches and "_to_dense" in switches
    assert_equals_regionprops(table, labels, channels(labels.shape, 1))


def test_blocks_added_from_several_threads_give_the_same_table():
    labels = blobs((32, 32, 32), seed=8)
    image = channels(labels.shape, 2)
    stats = measure.ObjectStats("ZYX", n_channels=2, n_objects=int(labels.max()))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: stats.add(*b), in_blocks(labels, image, (8, 8, 8), order_seed=1)))
    assert_equals_regionprops(stats.finish(), labels, image)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_cut_into_blocks_gives_the_table_of_one_block(data):
    shape = data.draw(st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)))
    values = data.draw(st.lists(st.integers(0, 5), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    labels = np.array(values, np.uint8).reshape(shape)
    block = data.draw(st.tuples(*(st.integers(1, n) for n in shape)))
    image = (labels * 3 + np.arange(labels.size).reshape(shape) % 7).astype(np.int16)[None]
    whole = chunked(labels, image, shape, "ZYX").columns
    cut = chunked(labels, image, block, "ZYX").columns
    assert list(whole) == list(cut)
    for k in whole:
        np.testing.assert_allclose(cut[k], whole[k], rtol=1e-12)


def test_an_empty_mask_gives_an_empty_table_with_every_column(tmp_path):
    table = chunked(np.zeros((4, 5, 6), np.uint32), channels((4, 5, 6), 1), (2, 2, 2), "ZYX")
    assert len(table) == 0 and "mean_intensity_c0" in table.columns
    parquet, csv = measure.write_tables(table, tmp_path / "objects")
    assert pq.read_table(parquet).num_rows == 0 and csv.read_text().startswith('"id","voxels"')


def write_mask(root, labels, scale, chunks):
    arr = ngff.create_labels(root, "seg", labels.shape, "ZYX"[-labels.ndim:], labels.dtype, chunks=chunks, scale=scale)
    arr[...] = labels
    ngff.finish_labels(root, "seg")


def test_measure_result_reads_an_ome_zarr_mask_and_its_image_chunk_by_chunk(tmp_path):
    labels = blobs((26, 34, 40), seed=9)
    image = channels(labels.shape, 2)
    write_mask(tmp_path / "m.ome.zarr", labels, (2.0, 0.5, 0.5), (8, 8, 8))
    ngff.write_image(tmp_path / "img.ome.zarr", image, "CZYX", chunks=(1, 8, 8, 8), scale=(2.0, 0.5, 0.5))
    table = measure.measure_result(tmp_path / "m.ome.zarr", tmp_path / "img.ome.zarr", block_voxels=512)
    assert table.meta == {"format": measure.FORMAT, "axes": "ZYX", "shape": [26, 34, 40], "scale": [2.0, 0.5, 0.5],
                          "n_channels": 2, "mask": str(tmp_path / "m.ome.zarr"), "image": str(tmp_path / "img.ome.zarr")}
    assert_equals_regionprops(table, labels, image, scale=(2.0, 0.5, 0.5))


def test_aiod_measure_writes_parquet_and_csv_with_the_same_rows(tmp_path, capsys):
    labels = blobs((20, 24, 28), seed=10)
    write_mask(tmp_path / "m.ome.zarr", labels, (1.0, 1.0, 1.0), (8, 8, 8))
    assert cli.main(["measure", "--mask", str(tmp_path / "m.ome.zarr"), "--out", str(tmp_path / "out" / "objects")]) == 0
    back = measure.read_table(tmp_path / "out" / "objects.parquet")
    assert back.meta["format"] == measure.FORMAT and back.meta["image"] is None
    assert_equals_regionprops(back, labels, None)
    lines = (tmp_path / "out" / "objects.csv").read_text().splitlines()
    assert len(lines) == 1 + labels.max() and lines[0].split(",")[:3] == ['"id"', '"voxels"', '"volume_um3"']
    assert f"{labels.max()} objects" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["objects.csv", "objects.parquet"]


def refused(tmp_path, capsys, argv, message):
    assert cli.main(argv) == 65
    err = capsys.readouterr().err.strip()
    assert err.startswith("AIOD ERROR: ") and message in err and "\n" not in err
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".*partial*"))


def test_a_missing_mask_is_refused(tmp_path, capsys):
    refused(tmp_path, capsys, ["measure", "--mask", str(tmp_path / "nope.ome.zarr"), "--out", str(tmp_path / "out")],
            f"{tmp_path / 'nope.ome.zarr'}: file not found")


def test_an_image_of_another_shape_is_refused(tmp_path, capsys):
    write_mask(tmp_path / "m.ome.zarr", blobs((10, 12, 14)), None, (8, 8, 8))
    ngff.write_image(tmp_path / "img.ome.zarr", channels((10, 12, 15), 1)[0], "ZYX")
    refused(tmp_path, capsys, ["measure", "--mask", str(tmp_path / "m.ome.zarr"), "--image", str(tmp_path / "img.ome.zarr"),
                               "--out", str(tmp_path / "out")], "spatial axes ZYX of shape (10, 12, 15) differ from the mask's")


def test_negative_ids_are_refused_and_nothing_is_written(tmp_path, capsys):
    labels = blobs((10, 12, 14)).astype(np.int32)
    labels[9, 11, 13] = -4
    write_mask(tmp_path / "m.ome.zarr", labels, None, (4, 4, 4))
    refused(tmp_path, capsys, ["measure", "--mask", str(tmp_path / "m.ome.zarr"), "--out", str(tmp_path / "out")],
            "negative label -4 in the block at (0, 0, 0); labels must be >= 0")


def test_a_float_mask_is_refused(tmp_path, capsys):
    ngff.write_image(tmp_path / "f.ome.zarr", np.zeros((6, 6, 6), np.float32), "ZYX")
    refused(tmp_path, capsys, ["measure", "--mask", str(tmp_path / "f.ome.zarr"), "--out", str(tmp_path / "out")],
            "not a label image (float32")


def test_an_output_that_would_overwrite_an_input_is_refused(tmp_path, capsys):
    write_mask(tmp_path / "m.ome.zarr", blobs((10, 12, 14)), None, (8, 8, 8))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    refused(tmp_path, capsys, ["measure", "--mask", str(tmp_path / "m.ome.zarr"), "--out", str(tmp_path / "m.ome.zarr" / "t")],
            "would overwrite the input")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_image_blocks_of_the_wrong_shape_are_refused():
    stats = measure.ObjectStats("YX", n_channels=2)
    with pytest.raises(InputError, match=r"image block of shape \(4, 4\) for labels of shape \(4, 4\) \(2 channel"):
        stats.add(np.ones((4, 4), np.uint8), np.ones((4, 4)))


COMPILE_TWICE = """
import json
import numpy as np
from aiod import block_pass, measure
stats = measure.ObjectStats("YX", n_channels=1)
stats.add(np.arange(12, dtype=np.uint32).reshape(3, 4), np.ones((3, 4), np.uint16))
assert len(stats.finish()) == 11
print(json.dumps({"cache": block_pass.os.environ["NUMBA_CACHE_DIR"],
                  "hits": [sum(f.stats.cache_hits.values()) for f in block_pass._compiled()],
                  "misses": [sum(f.stats.cache_misses.values()) for f in block_pass._compiled()]}))
"""


def test_the_compiled_pass_is_compiled_once_and_loaded_from_the_cache_by_later_processes(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "PYTHONPATH": str(block_pass.Path(block_pass.__file__).parents[1])}
    runs = [subprocess.run([sys.executable, "-c", COMPILE_TWICE], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first["cache"] == str(tmp_path / "numba") and any((tmp_path / "numba").rglob("*.nbi"))
    assert sum(first["misses"]) >= 2 and sum(first["hits"]) == 0  # the id range and the pass, compiled and saved
    assert sum(second["misses"]) == 0 and second["hits"] == first["misses"]  # loaded


def test_the_compiled_code_goes_to_the_environment_else_a_private_temporary_folder(tmp_path, monkeypatch):
    env, tmp = tmp_path / "env", tmp_path / "tmp"
    env.mkdir(), tmp.mkdir()
    monkeypatch.setattr(block_pass.sys, "prefix", str(env))
    monkeypatch.setattr(block_pass.tempfile, "tempdir", str(tmp))
    assert block_pass.cache_dir() == env / "var" / "aiod" / "numba"
    monkeypatch.setattr(block_pass.sys, "prefix", str(tmp_path / "env.txt"))  # an environment that cannot be written
    (tmp_path / "env.txt").write_text("")
    ours = tmp / f"aiod-numba-{os.getuid()}"
    assert block_pass.cache_dir() == ours and ours.stat().st_mode & 0o777 == 0o700
    ours.chmod(0o777)  # a folder others could write into: its compiled code is not loaded
    assert block_pass.cache_dir() is None
