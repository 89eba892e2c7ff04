"""aiod.imageio: lazy reading of TIFF and zarr images, axes resolution (fingerprints: test_fingerprint.py)."""


import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from aiod.errors import InputError
from aiod.imageio import open_image

ALL = slice(None)


def ramp(shape, dtype="uint16"):
    return (np.arange(int(np.prod(shape))) % 65521).astype(dtype).reshape(shape)


# --------------------------------------------------------------------------- TIFF


def test_uncompressed_tiff_is_memory_mapped_and_reads_a_box(tmp_path):
    data = ramp((100, 120))
    tifffile.imwrite(tmp_path / "a.tif", data)
    with open_image(tmp_path / "a.tif") as img:
        assert isinstance(img._array, np.memmap)
        assert (img.axes, img.shape, img.dtype) == ("YX", (100, 120), np.dtype("uint16"))
        assert (img.spatial_axes, img.spatial_shape, img.n_channels) == ("YX", (100, 120), 1)
        assert img.scale is None
        np.testing.assert_array_equal(img.read((slice(10, 20), slice(5, 50))), data[10:20, 5:50])


def test_compressed_tiled_tiff_reads_a_box_through_zarr(tmp_path):
    data = ramp((6, 96, 80))
    tifffile.imwrite(tmp_path / "b.tif", data, tile=(32, 32), compression="zlib")
    with open_image(tmp_path / "b.tif") as img:
        assert isinstance(img._array, zarr.Array)
        assert (img.axes, img.shape) == ("ZYX", (6, 96, 80))
        box = (slice(1, 4), slice(30, 70), slice(0, 33))
        np.testing.assert_array_equal(img.read(box), data[1:4, 30:70, 0:33])


def test_big_endian_tiff_reads_as_native_values(tmp_path):
    data = ramp((40, 50))
    tifffile.imwrite(tmp_path / "be.tif", data, byteorder=">")
    with open_image(tmp_path / "be.tif") as img:
        out = img.read((ALL, ALL))
        assert out.dtype.isnative
        np.testing.assert_array_equal(out, data)


def test_rgb_samples_become_channels_first(tmp_path):
    data = ramp((30, 40, 3), "uint8")
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    with open_image(tmp_path / "rgb.tif") as img:
        assert (img.axes, img.shape, img.n_channels) == ("CYX", (3, 30, 40), 3)
        np.testing.assert_array_equal(img.read((slice(2, 9), ALL), channel=1), data[2:9, :, 1])
        np.testing.assert_array_equal(img.read((ALL, ALL)), np.moveaxis(data, -1, 0))


def test_imagej_hyperstack_axes_and_size_one_time_dropped(tmp_path):
    data = ramp((1, 5, 2, 20, 24))
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, metadata={"axes": "TZCYX"})
    with open_image(tmp_path / "ij.tif") as img:
        assert (img.axes, img.shape) == ("CZYX", (2, 5, 20, 24))
        np.testing.assert_array_equal(img.read((ALL, slice(3, 9), ALL)),
                                      np.moveaxis(data[0], 1, 0)[:, :, 3:9, :])


def test_ome_tiff_gives_physical_scale(tmp_path):
    data = ramp((4, 16, 16))
    tifffile.imwrite(tmp_path / "s.ome.tif", data, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.25, "PhysicalSizeX": 0.5})
    with open_image(tmp_path / "s.ome.tif") as img:
        assert img.axes == "ZYX"
        assert img.scale == (2.0, 0.25, 0.5)


def test_declared_axes_win_and_the_box_is_transposed_to_canonical(tmp_path):
    data = ramp((7, 3, 20, 22))  # stored Z, C, Y, X
    tifffile.imwrite(tmp_path / "zc.tif", data, photometric="minisblack")
    with open_image(tmp_path / "zc.tif", axes="zcyx") as img:
        assert (img.axes, img.shape, img.source_axes) == ("CZYX", (3, 7, 20, 22), "ZCYX")
        box = (slice(2, 5), slice(4, 10), slice(0, 3))
        np.testing.assert_array_equal(img.read(box), np.moveaxis(data, 1, 0)[:, 2:5, 4:10, 0:3])
        np.testing.assert_array_equal(img.read(box, channel=2), data[2:5, 2, 4:10, 0:3])


def test_size_one_channel_axis_is_dropped(tmp_path):
    data = ramp((1, 5, 20, 22))
    tifffile.imwrite(tmp_path / "c1.tif", data, photometric="minisblack")
    with open_image(tmp_path / "c1.tif", axes="CZYX") as img:
        assert (img.axes, img.shape, img.source_axes) == ("ZYX", (5, 20, 22), "CZYX")
        np.testing.assert_array_equal(img.read((ALL, ALL, ALL)), data[0])
        np.testing.assert_array_equal(img.read((ALL, ALL, ALL), channel=0), data[0])


def test_three_dimensions_without_axes_default_to_zyx(tmp_path):
    tifffile.imwrite(tmp_path / "v.tif", ramp((3, 10, 10)), photometric="minisblack")
    with open_image(tmp_path / "v.tif") as img:
        assert img.axes == "ZYX"


def test_four_dimensions_without_axes_is_an_error(tmp_path):
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, ramp((2, 10, 64, 64)))
    with pytest.raises(InputError) as e:
        open_image(path)
    assert str(e.value) == (f"{path}: image has 4 dimensions (shape 2x10x64x64) but no axes; "
                            "add an 'axes' column to the samplesheet, e.g. CZYX")


def test_declared_axes_of_the_wrong_length_are_an_error(tmp_path):
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, ramp((2, 10, 64, 64)))
    with pytest.raises(InputError) as e:
        open_image(path, axes="ZYX")
    assert str(e.value) == (f"{path}: declared axes 'ZYX' have 3 letters but the image has 4 "
                            "dimensions (shape 2x10x64x64)")


def test_declared_axes_with_unknown_letters_are_an_error(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, ramp((10, 10)))
    with pytest.raises(InputError, match=r"a\.tif: declared axes 'YQ' contain unknown letter"):
        open_image(path, axes="YQ")


def test_time_series_are_refused(tmp_path):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, ramp((3, 10, 10)), photometric="minisblack")
    with pytest.raises(InputError) as e:
        open_image(path, axes="TYX")
    assert str(e.value).startswith(f"{path}: image has 3 timepoints")
    assert "time series are not supported yet: split timepoints into separate images" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as e:
        open_image(tmp_path / "nope.tif")
    assert str(e.value) == f"{tmp_path / 'nope.tif'}: file not found"


def test_not_a_tiff(tmp_path):
    path = tmp_path / "b.tif"
    path.write_bytes(b"this is not a tiff at all")
    with pytest.raises(InputError) as e:
        open_image(path)
    assert str(e.value).startswith(f"{path}: cannot be read as TIFF (")


def test_unknown_extension(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(b"x")
    with pytest.raises(InputError, match=r"img\.png: unknown image format; expected a \.tif"):
        open_image(path)


def test_channel_out_of_range(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", ramp((10, 10)))
    with open_image(tmp_path / "a.tif") as img:
        np.testing.assert_array_equal(img.read((ALL, ALL), channel=0), ramp((10, 10)))
        with pytest.raises(InputError, match=r"a\.tif: channel 1 is out of range; the image has 1"):
            img.read((ALL, ALL), channel=1)


# --------------------------------------------------------------------------- zarr


def test_plain_zarr_v3_array_with_dimension_names(tmp_path):
    data = ramp((2, 12, 14))
    arr = zarr.create_array(tmp_path / "p.zarr", shape=data.shape, chunks=(1, 5, 5),
                            dtype=data.dtype, dimension_names=["c", "y", "x"])
    arr[...] = data
    with open_image(tmp_path / "p.zarr") as img:
        assert (img.axes, img.shape, img.scale) == ("CYX", (2, 12, 14), None)
        np.testing.assert_array_equal(img.read((slice(3, 9), ALL), channel=1), data[1, 3:9])


def test_plain_zarr_v2_array_defaults_by_dimension_count(tmp_path):
    data = ramp((4, 12, 14))
    arr = zarr.create_array(tmp_path / "v2.zarr", shape=data.shape, chunks=(2, 5, 5),
                            dtype=data.dtype, zarr_format=2)
    arr[...] = data
    with open_image(tmp_path / "v2.zarr") as img:
        assert img.axes == "ZYX"
        np.testing.assert_array_equal(img.read((slice(1, 3), ALL, slice(4, 9))), data[1:3, :, 4:9])


def _ngff04(path, data):
    group = zarr.open_group(path, mode="w", zarr_format=2)
    arr = group.create_array("0", shape=data.shape, chunks=(1, 4, 8, 8), dtype=data.dtype)
    arr[...] = data
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "z", "type": "space"}, {"name": "c", "type": "channel"},
                 {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [3.0, 1.0, 0.5, 0.5]}]}],
    }]


def test_ome_zarr_04_group_gives_axes_and_scale_from_metadata(tmp_path):
    data = ramp((5, 2, 16, 16))
    _ngff04(tmp_path / "i.ome.zarr", data)
    with open_image(tmp_path / "i.ome.zarr") as img:
        assert (img.axes, img.shape, img.scale) == ("CZYX", (2, 5, 16, 16), (3.0, 0.5, 0.5))
        np.testing.assert_array_equal(img.read((slice(1, 4), ALL, ALL), channel=1), data[1:4, 1])


def test_array_inside_an_ome_zarr_group_uses_the_group_metadata(tmp_path):
    data = ramp((5, 2, 16, 16))
    _ngff04(tmp_path / "i.ome.zarr", data)
    with open_image(tmp_path / "i.ome.zarr" / "0") as img:
        assert (img.axes, img.scale) == ("CZYX", (3.0, 0.5, 0.5))


def test_zarr_group_without_multiscales_is_an_error(tmp_path):
    zarr.open_group(tmp_path / "g.zarr", mode="w")
    with pytest.raises(InputError) as e:
        open_image(tmp_path / "g.zarr")
    assert str(e.value).startswith(f"{tmp_path / 'g.zarr'}: zarr group has no OME-NGFF "
                                   "'multiscales' metadata")


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_any_box_equals_numpy_slicing_of_the_canonical_array(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("prop")
    stored = ramp((6, 3, 9, 11))  # Z C Y X
    path = folder / "p.zarr"
    arr = zarr.create_array(path, shape=stored.shape, chunks=(4, 2, 4, 5), dtype=stored.dtype)
    arr[...] = stored
    canonical = np.moveaxis(stored, 1, 0)
    box = []
    for n in (6, 9, 11):
        a = data.draw(st.integers(0, n - 1))
        b = data.draw(st.integers(a + 1, n))
        box.append(slice(a, b))
    channel = data.draw(st.none() | st.integers(0, 2))
    with open_image(path, axes="ZCYX") as img:
        got = img.read(tuple(box), channel=channel)
    want = canonical[(slice(None), *box)] if channel is None else canonical[(channel, *box)]
    np.testing.assert_array_equal(got, want)


def test_pyramidal_ome_tiff_reads_level_0(tmp_path):
    data = ramp((256, 256), "uint8")
    with tifffile.TiffWriter(tmp_path / "p.ome.tif") as tw:
        tw.write(data, subifds=1, tile=(64, 64), metadata={"axes": "YX"})
        tw.write(data[::2, ::2], subfiletype=1, tile=(64, 64))
    with open_image(tmp_path / "p.ome.tif") as img:
        assert img.shape == (256, 256)
        np.testing.assert_array_equal(img.read((slice(100, 200), ALL)), data[100:200])
