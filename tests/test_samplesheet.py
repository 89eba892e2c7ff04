"""aiod.samplesheet: reading the user's CSV, checking its images, the normalized CSV."""

import csv

import numpy as np
import pytest
import tifffile

from aiod.errors import InputError, SamplesheetError
from aiod.samplesheet import check_samples, read_samplesheet, write_checked

EXPECTED = "expected columns: id, image, axes, channel, ground_truth, atlas, atlas_scale, voxel_size, atlas_offset, split"


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.tif", np.zeros((32, 48), "uint16"))
    tifffile.imwrite(tmp_path / "img" / "vol.tif", np.zeros((4, 2, 32, 48), "uint8"),
                     photometric="minisblack")
    tifffile.imwrite(tmp_path / "img" / "gt.tif", np.zeros((32, 48), "uint32"))
    tifffile.imwrite(tmp_path / "img" / "gt_small.tif", np.zeros((30, 48), "uint32"))
    return tmp_path


def sheet(folder, text, name="images.csv"):
    path = folder / name
    path.write_text(text)
    return path


def error_of(path, exc=SamplesheetError):
    with pytest.raises(exc) as e:
        check_samples(read_samplesheet(path))
    return str(e.value)


# --------------------------------------------------------------------------- happy path


def test_happy_path_reads_resolves_and_writes_the_normalized_csv(folder):
    path = sheet(folder, "id,image,axes,channel,ground_truth\n"
                         "a,img/a.tif,,,img/gt.tif\n"
                         "\n"
                         "vol-1.b,img/vol.tif,ZCYX,1,\n")
    samples = read_samplesheet(path)
    assert [s.id for s in samples] == ["a", "vol-1.b"]
    a, vol = samples
    assert a.image == folder / "img" / "a.tif" and a.image.is_absolute()
    assert (a.axes, a.channel, a.ground_truth) == (None, None, folder / "img" / "gt.tif")
    assert (vol.axes, vol.channel, vol.ground_truth) == ("ZCYX", 1, None)
    assert (a.line, vol.line) == (2, 4)

    checked = check_samples(samples)
    assert [(c.axes, c.spatial_shape, c.n_channels) for c in checked] == [
        ("YX", (32, 48), 1), ("CZYX", (4, 32, 48), 2)]

    write_checked(checked, folder / "samples.csv")
    with open(folder / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "image", "axes", "channel", "ground_truth", "spatial_shape",
                             "canonical_axes", "plan_batch", "atlas", "atlas_scale", "voxel_size", "atlas_offset"]
    assert rows[0] == {"id": "a", "image": str(folder / "img" / "a.tif"), "axes": "YX",
                       "channel": "", "ground_truth": str(folder / "img" / "gt.tif"),
                       "spatial_shape": "32x48", "canonical_axes": "YX", "plan_batch": "0",
                       "atlas": "", "atlas_scale": "", "voxel_size": "", "atlas_offset": ""}
    assert rows[1] == {"id": "vol-1.b", "image": str(folder / "img" / "vol.tif"),
                       "axes": "ZCYX", "channel": "1", "ground_truth": "",
                       "spatial_shape": "4x32x48", "canonical_axes": "CZYX", "plan_batch": "0",
                       "atlas": "", "atlas_scale": "", "voxel_size": "", "atlas_offset": ""}


def test_columns_may_come_in_any_order_and_optional_ones_may_be_missing(folder):
    path = sheet(folder, "image,id\nimg/a.tif,a\n")
    [s] = read_samplesheet(path)
    assert (s.id, s.axes, s.channel, s.ground_truth) == ("a", None, None, None)


def test_relative_paths_start_from_base_dir_when_given(folder, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    path = sheet(elsewhere, "id,image\na,img/a.tif\n")
    [s] = read_samplesheet(path, base_dir=folder)
    assert s.image == folder / "img" / "a.tif"


def test_stub_mode_checks_without_opening_images(folder):
    path = sheet(folder, "id,image,axes\na,img/missing.tif,zyx\n")
    [c] = check_samples(read_samplesheet(path), open_images=False)
    write_checked([c], folder / "samples.csv")
    rows = list(csv.DictReader(open(folder / "samples.csv", newline="")))
    assert rows[0]["axes"] == "ZYX" and rows[0]["spatial_shape"] == ""


# --------------------------------------------------------------------------- structure errors


def test_empty_file(folder):
    path = sheet(folder, "")
    assert error_of(path) == (f"{path}: the file is empty; expected a header line with "
                              f"columns: {EXPECTED.removeprefix('expected columns: ')}")


def test_unknown_column_suggests_the_closest(folder):
    path = sheet(folder, "id,imge\na,img/a.tif\n")
    assert error_of(path) == (f"{path}: line 1: unknown column 'imge' (did you mean 'image'?); "
                              f"{EXPECTED}")


def test_missing_required_column(folder):
    path = sheet(folder, "id,axes\na,YX\n")
    assert error_of(path) == f"{path}: line 1: missing required column 'image'; {EXPECTED}"


def test_column_named_twice(folder):
    path = sheet(folder, "id,image,id\na,img/a.tif,b\n")
    assert error_of(path) == f"{path}: line 1: column 'id' appears twice; {EXPECTED}"


def test_header_without_samples(folder):
    path = sheet(folder, "id,image\n")
    assert error_of(path) == f"{path}: has a header but no samples; add one line per image"


def test_duplicate_id_names_both_lines(folder):
    path = sheet(folder, "id,image\na,img/a.tif\nb,img/a.tif\na,img/vol.tif\n")
    assert error_of(path) == (f"{path}: line 4: column 'id': id 'a' is already used on line 2; "
                              "ids must be unique")


def test_bad_id_characters(folder):
    path = sheet(folder, "id,image\nmy image,img/a.tif\n")
    assert error_of(path) == (f"{path}: line 2: column 'id': 'my image' may only contain "
                              "letters, digits, '.', '_' and '-'")


@pytest.mark.parametrize("value", ["x", "1.5", "-1"])
def test_channel_not_an_integer(folder, value):
    path = sheet(folder, f"id,image,channel\na,img/a.tif,{value}\n")
    assert error_of(path) == (f"{path}: line 2: column 'channel': '{value}' is not an integer "
                              ">= 0 (channels are numbered from 0)")


def test_empty_required_cell(folder):
    path = sheet(folder, "id,image\na,\n")
    assert error_of(path) == f"{path}: line 2: column 'image': is empty; a value is required"


def test_row_with_the_wrong_number_of_cells(folder):
    path = sheet(folder, "id,image\na,img/a.tif,extra\n")
    assert error_of(path) == (f"{path}: line 2: has 3 cells but the header has 2 columns "
                              "(id, image)")


def test_bad_axes_letters(folder):
    path = sheet(folder, "id,image,axes\na,img/a.tif,YXQ\n")
    assert error_of(path) == (f"{path}: line 2: column 'axes': axes 'YXQ' contain unknown "
                              "letter(s) Q; expected letters from T, C, Z, Y, X, e.g. ZYX or CZYX")


def test_missing_samplesheet(tmp_path):
    with pytest.raises(SamplesheetError, match="file not found"):
        read_samplesheet(tmp_path / "none.csv")


# --------------------------------------------------------------------------- image errors


def test_missing_image_names_line_and_column(folder):
    path = sheet(folder, "id,image\na,img/a.tif\nb,img/nope.tif\n")
    assert error_of(path, InputError) == (f"{path}: line 3: column 'image': "
                                          f"{folder / 'img' / 'nope.tif'}: file not found")


def test_declared_axes_that_do_not_fit_the_image(folder):
    path = sheet(folder, "id,image,axes\nv,img/vol.tif,ZYX\n")
    assert error_of(path, InputError) == (
        f"{path}: line 2: column 'image': {folder / 'img' / 'vol.tif'}: declared axes 'ZYX' "
        "have 3 letters but the image has 4 dimensions (shape 4x2x32x48)")


def test_several_channels_and_no_channel_column(folder):
    path = sheet(folder, "id,image,axes\nv,img/vol.tif,ZCYX\n")
    assert error_of(path, InputError) == (
        f"{path}: line 2: column 'channel': {folder / 'img' / 'vol.tif'} has 2 channels "
        "(axes CZYX); add a 'channel' column saying which one to segment (0..1)")


def test_channel_out_of_range(folder):
    path = sheet(folder, "id,image,axes,channel\nv,img/vol.tif,ZCYX,2\n")
    assert error_of(path, InputError) == (
        f"{path}: line 2: column 'channel': channel 2 is out of range; "
        f"{folder / 'img' / 'vol.tif'} has 2 channel(s), numbered 0..1")


def test_ground_truth_of_another_shape(folder):
    path = sheet(folder, "id,image,ground_truth\na,img/a.tif,img/gt_small.tif\n")
    assert error_of(path, InputError) == (
        f"{path}: line 2: column 'ground_truth': {folder / 'img' / 'gt_small.tif'} has shape "
        "30x48 (axes YX); expected a label image of the image's spatial shape 32x48 (YX)")


@pytest.mark.parametrize("dtype", ["float32", "bool"])
def test_ground_truth_that_is_not_a_label_image(folder, dtype):
    tifffile.imwrite(folder / "img" / "probabilities.tif", np.zeros((32, 48), dtype))
    path = sheet(folder, "id,image,ground_truth\na,img/a.tif,img/probabilities.tif\n")
    assert error_of(path, InputError) == (
        f"{path}: line 2: column 'ground_truth': {folder / 'img' / 'probabilities.tif'} has {np.dtype(dtype)} pixels; "
        "expected a label image of integers (0 for background, one id per object)")


def test_missing_ground_truth(folder):
    path = sheet(folder, "id,image,ground_truth\na,img/a.tif,img/none.tif\n")
    assert error_of(path, InputError) == (
        f"{path}: line 2: column 'ground_truth': {folder / 'img' / 'none.tif'}: file not found")


# --------------------------------------------------------------------------- atlas_offset


@pytest.fixture
def atlas_folder(folder):
    """A 16x32x48 volume at 1 µm and an atlas of 4x8x12 voxels of 4 µm: the same extent."""
    tifffile.imwrite(folder / "img" / "brain.tif", np.zeros((16, 32, 48), "uint16"), photometric="minisblack")
    tifffile.imwrite(folder / "img" / "atlas.tif", np.ones((4, 8, 12), "uint16"), photometric="minisblack")
    return folder


def test_atlas_offset_is_carried_to_the_normalized_csv(atlas_folder):
    path = sheet(atlas_folder, 'id,image,atlas,atlas_scale,voxel_size,atlas_offset\n'
                               'b,img/brain.tif,img/atlas.tif,"4,4,4","1,1,1"," -2, 3.5,0 "\n')
    [s] = read_samplesheet(path)
    assert s.atlas_offset == "-2,3.5,0"
    write_checked(check_samples([s]), atlas_folder / "samples.csv")
    [row] = list(csv.DictReader(open(atlas_folder / "samples.csv", newline="")))
    assert (row["atlas_scale"], row["voxel_size"], row["atlas_offset"]) == ("4,4,4", "1,1,1", "-2,3.5,0")


@pytest.mark.parametrize("value", ["a,b,c", "1", "1,2,3,4", "nan,0,0"])
def test_atlas_offset_that_is_not_a_number_per_axis(atlas_folder, value):
    path = sheet(atlas_folder, f'id,image,atlas,atlas_scale,atlas_offset\nb,img/brain.tif,img/atlas.tif,"4,4,4","{value}"\n')
    assert error_of(path) == (f"{path}: line 2: column 'atlas_offset': '{value}': expected the atlas' position per "
                              "spatial axis, numbers such as 0,-120,250 (µm)")


def test_atlas_offset_with_a_value_per_axis_of_another_image(atlas_folder):
    path = sheet(atlas_folder, 'id,image,atlas,atlas_scale,atlas_offset\nb,img/brain.tif,img/atlas.tif,"4,4,4","0,0"\n')
    assert error_of(path, InputError) == (f"{path}: line 2: column 'atlas_offset': '0,0' has 2 value(s) but "
                                          f"{atlas_folder / 'img' / 'brain.tif'} has 3 spatial axes (ZYX)")


def test_atlas_offset_that_leaves_the_image_uncovered_is_refused_before_any_work(atlas_folder):
    path = sheet(atlas_folder, 'id,image,atlas,atlas_scale,voxel_size,atlas_offset\n'
                               'b,img/brain.tif,img/atlas.tif,"4,4,4","1,1,1","0,0,8"\n')
    message = error_of(path, InputError)
    assert message.startswith(f"{path}: line 2: column 'atlas': ") and "\n" not in message
    assert ("the atlas spans [0, 16) x [0, 32) x [8, 56) but the image spans [0, 16) x [0, 32) x [0, 48) "
            "(µm from the image's first corner); check the atlas_scale, voxel_size and atlas_offset columns") in message


def test_without_atlas_offset_the_files_translations_place_the_atlas(atlas_folder):
    from test_regions import translate

    from aiod import ngff
    ngff.write_image(atlas_folder / "img" / "brain.ome.zarr", np.zeros((16, 32, 48), "uint16"), "ZYX")
    ngff.write_image(atlas_folder / "img" / "atlas.ome.zarr", np.ones((4, 8, 12), "uint16"), "ZYX", scale=(4, 4, 4))
    translate(atlas_folder / "img" / "brain.ome.zarr", (0.0, 0.0, 100.0))
    path = sheet(atlas_folder, "id,image,atlas\nb,img/brain.ome.zarr,img/atlas.ome.zarr\n")
    message = error_of(path, InputError)  # the image lies 100 µm along x, the atlas at 0
    assert message.startswith(f"{path}: line 2: column 'atlas': ") and "the atlas spans [0, 16) x [0, 32) x [-100, -52)" in message
    translate(atlas_folder / "img" / "atlas.ome.zarr", (0.0, 0.0, 100.0))
    [checked] = check_samples(read_samplesheet(path))
    assert checked.spatial_shape == (16, 32, 48)
