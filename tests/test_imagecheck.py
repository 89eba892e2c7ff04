"""Images that cannot give a true result are refused with one line naming the file: from the
header when opened (cut TIFFs, empty axes, complex pixels), while a box is read (undecodable
chunks, NaN and +-inf pixels)."""

import numpy as np
import pytest
import tifffile
import zarr

from aiod.errors import InputError
from aiod.imageio import open_image

ALL = slice(None)


def cut(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_cut_uncompressed_tiff_is_refused_when_opened(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.ones((64, 64), np.uint16))
    size = (tmp_path / "a.tif").stat().st_size
    cut(tmp_path / "a.tif", 4000)
    with pytest.raises(InputError) as err:
        open_image(tmp_path / "a.tif")
    assert str(err.value) == (f"{tmp_path / 'a.tif'}: truncated TIFF: the image data ends at byte {size} "
                              "but the file has 4000 bytes")


def test_compressed_tiff_with_cut_strips_names_the_first_cut_strip(tmp_path):
    data = np.random.default_rng(0).integers(0, 60000, (64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "z.tif", data, compression="zlib", rowsperstrip=8)
    with tifffile.TiffFile(tmp_path / "z.tif") as tf:
        offsets, counts = tf.pages[0].dataoffsets, tf.pages[0].databytecounts
    cut(tmp_path / "z.tif", offsets[6] + 10)
    with pytest.raises(InputError) as err:
        open_image(tmp_path / "z.tif")
    assert str(err.value) == (f"{tmp_path / 'z.tif'}: truncated TIFF: strip 7 of 8 ends at byte "
                              f"{offsets[6] + counts[6]} but the file has {offsets[6] + 10} bytes")


def test_cut_tile_of_a_multi_page_tiff_names_page_and_tile(tmp_path):
    with tifffile.TiffWriter(tmp_path / "t.tif") as w:
        for value in (1, 2):
            w.write(np.full((64, 64), value, np.uint8), tile=(32, 32), compression="zlib", contiguous=False)
    with tifffile.TiffFile(tmp_path / "t.tif") as tf:
        end = tf.pages[1].dataoffsets[3] + tf.pages[1].databytecounts[3]
    cut(tmp_path / "t.tif", end - 1)
    with pytest.raises(InputError) as err:
        open_image(tmp_path / "t.tif")
    assert str(err.value) == (f"{tmp_path / 't.tif'}: truncated TIFF: page 2 of 2, tile 4 of 4 ends at byte "
                              f"{end} but the file has {end - 1} bytes")


def test_compressed_tiff_strip_that_does_not_decode_names_the_box(tmp_path):
    tifffile.imwrite(tmp_path / "z.tif", np.ones((64, 64), np.uint16), compression="zlib", rowsperstrip=8)
    with tifffile.TiffFile(tmp_path / "z.tif") as tf:
        offset, count = tf.pages[0].dataoffsets[2], tf.pages[0].databytecounts[2]
    raw = bytearray((tmp_path / "z.tif").read_bytes())
    raw[offset:offset + count] = b"\xff" * count
    (tmp_path / "z.tif").write_bytes(bytes(raw))
    with open_image(tmp_path / "z.tif") as img:
        np.testing.assert_array_equal(img.read((slice(0, 16), ALL)), 1)
        with pytest.raises(InputError) as err:
            img.read((slice(10, 30), slice(0, 64)))
    assert str(err.value).startswith(f"{tmp_path / 'z.tif'}: the pixels of box Y 10:30, X 0:64 cannot be decoded (")


def corrupt_zarr(path, chunk_file, **kw):
    array = zarr.create_array(path, shape=(16, 24), dtype="uint16", chunks=(8, 8), **kw)
    array[:] = 7
    (path / chunk_file).write_bytes(b"not a chunk" * 3)


def test_zarr_v3_chunk_that_does_not_decode_is_named(tmp_path):
    corrupt_zarr(tmp_path / "c.zarr", "c/0/1")
    with open_image(tmp_path / "c.zarr") as img:
        np.testing.assert_array_equal(img.read((ALL, slice(0, 8))), 7)
        with pytest.raises(InputError) as err:
            img.read((slice(2, 12), slice(4, 20)))
    assert str(err.value).startswith(f"{tmp_path / 'c.zarr'}: chunk 'c/0/1' cannot be decoded (")


def test_zarr_v2_chunk_that_does_not_decode_is_named_with_its_key(tmp_path):
    corrupt_zarr(tmp_path / "c2.zarr", "1.2", zarr_format=2)
    with open_image(tmp_path / "c2.zarr") as img, pytest.raises(InputError) as err:
        img.read((ALL, ALL))
    assert str(err.value).startswith(f"{tmp_path / 'c2.zarr'}: chunk '1.2' cannot be decoded (")


def test_ome_zarr_chunk_is_named_from_the_image_folder(tmp_path):
    group = zarr.open_group(tmp_path / "img.ome.zarr", mode="w")
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": "y"}, {"name": "x"}],
                                                             "datasets": [{"path": "0"}]}]}
    group.create_array("0", shape=(16, 16), dtype="uint8", chunks=(8, 8))[:] = 1
    (tmp_path / "img.ome.zarr" / "0" / "c" / "1" / "0").write_bytes(b"garbage!")
    with open_image(tmp_path / "img.ome.zarr") as img, pytest.raises(InputError) as err:
        img.read((ALL, ALL))
    assert str(err.value).startswith(f"{tmp_path / 'img.ome.zarr'}: chunk '0/c/1/0' cannot be decoded (")


def test_tiff_with_an_empty_axis_is_refused_when_opened(tmp_path):
    with pytest.warns(UserWarning):
        tifffile.imwrite(tmp_path / "e.tif", np.zeros((0, 64), np.uint8))
    with pytest.raises(InputError) as err:
        open_image(tmp_path / "e.tif")
    assert str(err.value) == (f"{tmp_path / 'e.tif'}: axis Y has length 0 (shape 0x64); expected at least one "
                              "pixel along every axis")


def test_zarr_with_an_empty_axis_is_refused_when_opened(tmp_path):
    zarr.create_array(tmp_path / "e.zarr", shape=(4, 0, 8), dtype="uint8", chunks=(4, 4, 4))
    with pytest.raises(InputError) as err:
        open_image(tmp_path / "e.zarr")
    assert str(err.value) == (f"{tmp_path / 'e.zarr'}: axis Y has length 0 (shape 4x0x8); expected at least one "
                              "pixel along every axis")


def test_empty_axis_is_named_before_missing_axes(tmp_path):
    zarr.create_array(tmp_path / "e.zarr", shape=(2, 0, 8, 8), dtype="uint8", chunks=(1, 4, 4, 4))
    with pytest.raises(InputError) as err:
        open_image(tmp_path / "e.zarr")
    assert str(err.value) == (f"{tmp_path / 'e.zarr'}: dimension 1 has length 0 (shape 2x0x8x8); expected at "
                              "least one pixel along every axis")


@pytest.mark.parametrize("kind", ["tiff", "zarr"])
def test_complex_pixels_are_refused_when_opened(tmp_path, kind):
    data = np.ones((8, 8), np.complex64)
    if kind == "tiff":
        path = tmp_path / "c.tif"
        tifffile.imwrite(path, data)
    else:
        path = tmp_path / "c.zarr"
        zarr.create_array(path, shape=data.shape, dtype=data.dtype, chunks=(8, 8))[:] = data
    with pytest.raises(InputError) as err:
        open_image(path)
    assert str(err.value) == (f"{path}: complex-valued pixels (complex64) cannot be segmented; save a "
                              "real-valued image (e.g. the magnitude) instead")


def test_nan_and_inf_pixels_in_a_box_are_refused_with_their_count(tmp_path):
    data = np.ones((32, 32), np.float32)
    data[20, 3:6] = np.nan
    data[25, 7] = -np.inf
    data[26, 7] = np.inf
    tifffile.imwrite(tmp_path / "f.tif", data)
    with open_image(tmp_path / "f.tif") as img:
        with pytest.raises(InputError) as err:
            img.read((slice(16, 32), ALL))
    assert str(err.value) == (f"{tmp_path / 'f.tif'}: 5 voxel(s) in box Y 16:32, X 0:32 are not finite "
                              "(3 NaN, 2 +-inf); replace them with a finite value (e.g. the background "
                              "intensity) before segmenting")


def test_box_of_a_float_image_without_nan_reads(tmp_path):
    data = np.ones((32, 32), np.float32)
    data[20, 3] = np.nan
    zarr.create_array(tmp_path / "f.zarr", shape=data.shape, dtype=data.dtype, chunks=(16, 16))[:] = data
    with open_image(tmp_path / "f.zarr") as img:
        np.testing.assert_array_equal(img.read((slice(0, 16), ALL)), 1.0)
