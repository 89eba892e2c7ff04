"""Damaged and unusable images stop the real pipeline with one line naming the file (and the
chunk), leave nothing in the cache or outdir, and are not modified. One row per case; the unit
tests of each check are in test_imagecheck.py."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from pipeline_helpers import cache_entries, run_pipeline, tree_digest

pytestmark = pytest.mark.pipeline


def cut_tiff(folder):
    tifffile.imwrite(folder / "img.tif", np.full((64, 64), 7, np.uint16))
    (folder / "img.tif").write_bytes((folder / "img.tif").read_bytes()[:5000])
    return "img.tif", "truncated TIFF: the image data ends at byte 8448 but the file has 5000 bytes"


def cut_compressed_tiff(folder):
    tifffile.imwrite(folder / "img.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), compression="zlib",
                     rowsperstrip=16)
    with tifffile.TiffFile(folder / "img.tif") as tf:
        offset, count = tf.pages[0].dataoffsets[3], tf.pages[0].databytecounts[3]
    (folder / "img.tif").write_bytes((folder / "img.tif").read_bytes()[:offset + 1])
    return "img.tif", f"truncated TIFF: strip 4 of 4 ends at byte {offset + count} but the file has {offset + 1} bytes"


def corrupt_zarr_chunk(folder):
    array = zarr.create_array(folder / "img.zarr", shape=(64, 64), dtype="uint16", chunks=(32, 32))
    array[:] = 100
    (folder / "img.zarr" / "c" / "1" / "0").write_bytes(b"not a chunk")
    return "img.zarr", "chunk 'c/1/0' cannot be decoded ("


def empty_axis(folder):
    zarr.create_array(folder / "img.zarr", shape=(4, 0, 32), dtype="uint8", chunks=(4, 16, 16))
    return "img.zarr", "axis Y has length 0 (shape 4x0x32); expected at least one pixel along every axis"


def complex_pixels(folder):
    tifffile.imwrite(folder / "img.tif", np.ones((32, 32), np.complex64))
    return "img.tif", "complex-valued pixels (complex64) cannot be segmented"


def nan_pixels(folder):
    data = np.zeros((48, 48), np.float32)
    data[10:20, 10:20] = 1.0
    data[30, 30:34] = np.nan
    tifffile.imwrite(folder / "img.tif", data)
    return "img.tif", "4 voxel(s) in box Y 0:48, X 0:48 are not finite (4 NaN, 0 +-inf)"


@pytest.mark.parametrize("make", [cut_tiff, cut_compressed_tiff, corrupt_zarr_chunk, empty_axis, complex_pixels,
                                  nan_pixels], ids=lambda f: f.__name__)
def test_bad_image_stops_the_run_with_one_line_and_changes_nothing(tmp_path, make):
    name, fragment = make(tmp_path)
    before = tree_digest(tmp_path / name) if (tmp_path / name).is_dir() else (tmp_path / name).read_bytes()
    (tmp_path / "images.csv").write_text(f"id,image\nimg,{name}\n")
    proc = run_pipeline(tmp_path, "--input", str(tmp_path / "images.csv"), "--outdir", str(tmp_path / "results"),
                        "--root_dir", str(tmp_path / "root"), check=False)
    output = proc.stdout + proc.stderr
    errors = sorted({line.split("AIOD ERROR: ", 1)[1] for line in output.splitlines() if "AIOD ERROR: " in line})
    assert proc.returncode != 0
    assert len(errors) == 1 and f"{tmp_path / name}: {fragment}" in errors[0], output[-3000:]
    assert "Traceback" not in output
    assert cache_entries(tmp_path / "root") == []
    assert sorted(p.name for p in (tmp_path / "results").glob("*") if p.name != "pipeline_info") == []
    after = tree_digest(tmp_path / name) if (tmp_path / name).is_dir() else (tmp_path / name).read_bytes()
    assert after == before
