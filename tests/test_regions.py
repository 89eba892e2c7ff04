"""Objects counted per atlas region: each once, by centroid, at any atlas resolution, with the
hierarchy rolled up; bad atlases and region files refused with one line and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from test_measure import blobs, write_mask

from aiod import cli, measure, ngff, regions

TREE = "id,name,acronym,parent_id\n1,root,R,\n2,left,L,1\n3,right,RT,1\n4,left inner,LI,2\n"


def cube_mask(tmp_path, corners, shape=(12, 12, 12)):
    """A mask of 2x2x2 cubes (ids 1..n) at `corners`, measured into objects.parquet."""
    labels = np.zeros(shape, np.uint32)
    for i, (z, y, x) in enumerate(corners, start=1):
        labels[z:z + 2, y:y + 2, x:x + 2] = i
    write_mask(tmp_path / "m.ome.zarr", labels, (1.0, 1.0, 1.0), (4, 4, 4))
    measure.write_tables(measure.measure_result(tmp_path / "m.ome.zarr"), tmp_path / "objects")
    return tmp_path / "objects.parquet"


def count(tmp_path, *args) -> dict:
    assert cli.main(["count", *map(str, args), "--out", str(tmp_path / "out" / "regions")]) == 0
    table = measure.read_table(tmp_path / "out" / "regions.parquet")
    return {int(i): {k: v[n] for k, v in table.columns.items()} for n, i in enumerate(table.columns["region_id"])}


def test_counts_roll_up_the_hierarchy_to_every_ancestor(tmp_path):
    objects = cube_mask(tmp_path, [(0, 0, 0), (1, 5, 5), (2, 9, 1), (5, 0, 0), (5, 6, 6), (9, 9, 9)])
    atlas = np.zeros((12, 12, 12), np.uint16)
    atlas[:4], atlas[4:8] = 4, 3  # z 0..3: left inner; z 4..7: right; z 8..11: background
    tifffile.imwrite(tmp_path / "atlas.tif", atlas)
    (tmp_path / "regions.csv").write_text(TREE)
    rows = count(tmp_path, "--objects", objects, "--atlas", tmp_path / "atlas.tif", "--regions", tmp_path / "regions.csv")
    assert list(rows) == [-1, 0, 1, 2, 3, 4]
    got = {i: (r["objects_self"], r["objects"], r["object_volume_um3"], r["region_volume_mm3"]) for i, r in rows.items()}
    assert got == {4: (3, 3, 24.0, 576e-9), 2: (0, 3, 24.0, 576e-9), 3: (2, 2, 16.0, 576e-9),
                   1: (0, 5, 40.0, 1152e-9), 0: (1, 1, 8.0, 576e-9), -1: (0, 0, 0.0, pytest.approx(np.nan, nan_ok=True))}
    assert rows[2]["density_per_mm3"] == pytest.approx(3 / 576e-9)
    assert (rows[4]["name"], rows[4]["acronym"], rows[4]["parent_id"], rows[4]["depth"]) == ("left inner", "LI", 2, 2)
    assert rows[0]["name"] == "background (0)" and rows[-1]["name"] == "outside atlas"
    csv = (tmp_path / "out" / "regions.csv").read_text().splitlines()
    assert csv[1] == '-1,"outside atlas","",,0,0,0,,,0,0,'


def coarse_atlas_case(tmp_path):
    """A mask at (2, 1, 1) µm and an atlas at 4x coarser voxels (8, 4, 4) µm: each atlas voxel
    covers 4x4x4 mask voxels. Expected counts from the full-resolution region map."""
    labels = blobs((32, 40, 48), seed=11)
    write_mask(tmp_path / "m.ome.zarr", labels, (2.0, 1.0, 1.0), (8, 8, 8))
    small = np.random.default_rng(5).integers(0, 6, size=(8, 10, 12)).astype(np.uint16)
    full = small.repeat(4, 0).repeat(4, 1).repeat(4, 2)
    table = measure.measure_result(tmp_path / "m.ome.zarr")
    measure.write_tables(table, tmp_path / "objects")
    c = table.columns
    nearest = np.floor(np.stack([c["centroid_z"], c["centroid_y"], c["centroid_x"]], 1) + 0.5).astype(int)
    expected = full[tuple(nearest.T)]
    return small, full, c, expected


@pytest.mark.parametrize("stored", ["ome-zarr with scale", "tiff with --atlas-scale"])
def test_an_atlas_at_4x_coarser_voxels_counts_each_object_where_its_centroid_is(tmp_path, stored):
    small, full, c, expected = coarse_atlas_case(tmp_path)
    if stored == "ome-zarr with scale":
        ngff.write_image(tmp_path / "atlas.ome.zarr", small, "ZYX", chunks=(3, 4, 5), scale=(8.0, 4.0, 4.0))
        rows = count(tmp_path, "--objects", tmp_path / "objects.parquet", "--atlas", tmp_path / "atlas.ome.zarr")
    else:
        tifffile.imwrite(tmp_path / "atlas.tif", small)
        rows = count(tmp_path, "--objects", tmp_path / "objects.parquet", "--atlas", tmp_path / "atlas.tif",
                     "--atlas-scale", "8,4,4")
    assert set(rows) == {-1, 0, 1, 2, 3, 4, 5}
    for region in range(6):
        mine = expected == region
        assert rows[region]["objects"] == mine.sum() > 0
        assert rows[region]["object_volume_um3"] == pytest.approx(2.0 * c["voxels"][mine].sum())
        assert rows[region]["region_volume_mm3"] == pytest.approx((full == region).sum() * 2.0 / 1e9)
        assert rows[region]["density_per_mm3"] == pytest.approx(mine.sum() / ((full == region).sum() * 2e-9))
    assert rows[-1]["objects"] == 0 and sum(r["objects_self"] for r in rows.values()) == len(c["id"])


def test_objects_beyond_a_partial_atlas_are_counted_outside_it(tmp_path):
    small, _, c, expected = coarse_atlas_case(tmp_path)
    tifffile.imwrite(tmp_path / "half.tif", small[4:], photometric="minisblack")  # only z >= 32 µm (mask voxels z >= 16)
    args = ["--objects", tmp_path / "objects.parquet", "--atlas", tmp_path / "half.tif", "--atlas-scale", "8,4,4",
            "--atlas-offset", "32,0,0"]
    assert cli.main(["count", *map(str, args), "--out", str(tmp_path / "out")]) == 65  # not the whole image
    rows = count(tmp_path, *args, "--partial-atlas")
    beyond = np.floor(c["centroid_z"] + 0.5) < 16
    assert rows[-1]["objects"] == beyond.sum() > 0
    for region in range(6):
        assert rows[region]["objects"] == ((expected == region) & ~beyond).sum()


def translate(group, translation, multiscale=None):
    """Give an OME-Zarr image group's level 0 a `translation` (and the multiscale its own transformations)."""
    node = zarr.open_group(str(group), mode="r+")
    ome = dict(node.attrs["ome"])
    ms = ome["multiscales"][0]
    ms["datasets"][0]["coordinateTransformations"].append({"type": "translation", "translation": list(translation)})
    if multiscale:
        ms["coordinateTransformations"] = multiscale
    node.attrs["ome"] = ome


def padded_atlas(small):
    """The 8x10x12 atlas of coarse_atlas_case with 2 more voxels of region 7 before it on every axis:
    placed 2 voxels (16, 8, 8 µm) before the image, it covers the image exactly as `small` does."""
    out = np.full(tuple(n + 2 for n in small.shape), 7, np.uint16)
    out[2:, 2:, 2:] = small
    return out


def assert_counts(rows, expected, c):
    for region in range(6):
        assert rows[region]["objects"] == (expected == region).sum() > 0
        assert rows[region]["object_volume_um3"] == pytest.approx(2.0 * c["voxels"][expected == region].sum())
    assert rows[7]["objects"] == rows[-1]["objects"] == 0 and rows[7]["region_volume_mm3"] > 0


@pytest.mark.parametrize("placed_by", ["atlas translation", "both translations", "multiscale transformations"])
def test_an_atlas_with_an_ngff_translation_counts_each_object_where_its_centroid_is(tmp_path, placed_by):
    small, _, c, expected = coarse_atlas_case(tmp_path)
    atlas = tmp_path / "atlas.ome.zarr"
    ngff.write_image(atlas, padded_atlas(small), "ZYX", chunks=(3, 4, 5), scale=(8.0, 4.0, 4.0))
    if placed_by == "atlas translation":
        translate(atlas, (-16.0, -8.0, -8.0))
    elif placed_by == "both translations":  # the mask's translation too: only the difference counts
        translate(tmp_path / "m.ome.zarr" / "labels" / "seg", (1000.0, 50.0, -20.0))
        translate(atlas, (984.0, 42.0, -28.0))
    else:  # NGFF: the dataset's scale and translation, then the multiscale's: (-4, -4, -4) * (4, 2, 2) + (0, 0, 0)
        node = zarr.open_group(str(atlas), mode="r+")
        ome = dict(node.attrs["ome"])
        ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [2.0, 2.0, 2.0]
        node.attrs["ome"] = ome
        translate(atlas, (-4.0, -4.0, -4.0), [{"type": "scale", "scale": [4.0, 2.0, 2.0]},
                                               {"type": "translation", "translation": [0.0, 0.0, 0.0]}])
    rows = count(tmp_path, "--objects", tmp_path / "objects.parquet", "--atlas", atlas)
    assert_counts(rows, expected, c)


def test_atlas_offset_overrides_the_translations_of_the_files(tmp_path):
    small, _, c, expected = coarse_atlas_case(tmp_path)
    ngff.write_image(tmp_path / "atlas.ome.zarr", padded_atlas(small), "ZYX", chunks=(3, 4, 5), scale=(8.0, 4.0, 4.0))
    translate(tmp_path / "atlas.ome.zarr", (500.0, 500.0, 500.0))  # wrong: the atlas would miss the image
    args = ["--objects", tmp_path / "objects.parquet", "--atlas", tmp_path / "atlas.ome.zarr"]
    assert cli.main(["count", *map(str, args), "--out", str(tmp_path / "out")]) == 65
    assert_counts(count(tmp_path, *args, "--atlas-offset=-16,-8,-8"), expected, c)


def test_a_translated_atlas_covering_part_of_the_image_counts_the_rest_outside(tmp_path):
    small, _, c, expected = coarse_atlas_case(tmp_path)
    ngff.write_image(tmp_path / "half.ome.zarr", small[4:], "ZYX", chunks=(3, 4, 5), scale=(8.0, 4.0, 4.0))
    translate(tmp_path / "half.ome.zarr", (32.0, 0.0, 0.0))  # only z >= 32 µm (mask voxels z >= 16)
    rows = count(tmp_path, "--objects", tmp_path / "objects.parquet", "--atlas", tmp_path / "half.ome.zarr",
                 "--partial-atlas")
    beyond = np.floor(c["centroid_z"] + 0.5) < 16
    assert rows[-1]["objects"] == beyond.sum() > 0
    for region in range(6):
        assert rows[region]["objects"] == ((expected == region) & ~beyond).sum()
    assert rows[1]["region_volume_mm3"] == pytest.approx((small[4:] == 1).sum() * 128 / 1e9)


def test_ngff_translation_of_an_image_group_or_array_composes_dataset_and_multiscale(tmp_path):
    ngff.write_image(tmp_path / "img.ome.zarr", np.zeros((2, 4, 4, 4), np.uint8), "CZYX", scale=(2.0, 1.0, 1.0))
    assert ngff.read_translation(tmp_path / "img.ome.zarr") is None
    translate(tmp_path / "img.ome.zarr", (0.0, 1.0, 2.0, 3.0), [{"type": "scale", "scale": [1.0, 10.0, 10.0, 10.0]},
                                                                {"type": "translation", "translation": [0, 5, 0, -5]}])
    assert ngff.read_translation(tmp_path / "img.ome.zarr") == (15.0, 20.0, 25.0)
    assert ngff.read_translation(tmp_path / "img.ome.zarr" / "0") == (15.0, 20.0, 25.0)
    group = zarr.open_group(str(tmp_path / "v04.zarr"), mode="w", zarr_format=2)  # NGFF 0.4: attributes at the top
    group.create_array("0", shape=(4, 4), dtype="uint8")
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                                   "datasets": [{"path": "0", "coordinateTransformations": [
                                       {"type": "scale", "scale": [0.5, 0.5]}, {"type": "translation", "translation": [7, -1]}]}]}]
    assert ngff.read_translation(tmp_path / "v04.zarr") == (7.0, -1.0)
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))
    assert ngff.read_translation(tmp_path / "a.tif") is None


def test_2d_counts_are_per_area(tmp_path):
    labels = blobs((60, 64), seed=12)
    write_mask(tmp_path / "m.ome.zarr", labels, (0.5, 0.5), (16, 16))
    measure.write_tables(measure.measure_result(tmp_path / "m.ome.zarr"), tmp_path / "objects")
    atlas = np.ones((30, 32), np.uint8)
    atlas[:, 16:] = 2
    tifffile.imwrite(tmp_path / "atlas.tif", atlas)
    rows = count(tmp_path, "--objects", tmp_path / "objects.parquet", "--atlas", tmp_path / "atlas.tif", "--atlas-scale", "1,1")
    assert rows[1]["region_area_mm2"] == pytest.approx(480e-6) and "density_per_mm2" in rows[1]
    assert rows[1]["objects"] + rows[2]["objects"] == labels.max()


def test_a_structure_table_with_parent_structure_id_and_spreadsheet_numbers_is_read(tmp_path):
    (tmp_path / "structures.csv").write_text(
        "acronym,id,name,structure_id_path,parent_structure_id\nroot,997,root,/997/,\ngrey,8.0,Basic cell groups,/997/8/,997.0\n")
    h = regions.read_hierarchy(tmp_path / "structures.csv")
    assert h.ids.tolist() == [997, 8] and h.parents.tolist() == [-1, 997] and h.acronyms == ["root", "grey"]


@pytest.fixture
def base(tmp_path):
    objects = cube_mask(tmp_path, [(0, 0, 0), (6, 6, 6)])
    tifffile.imwrite(tmp_path / "atlas.tif", np.ones((12, 12, 12), np.uint8))
    (tmp_path / "regions.csv").write_text(TREE)
    return {"--objects": objects, "--atlas": tmp_path / "atlas.tif"}


def refused(tmp_path, capsys, args: dict, message: str):
    argv = ["count"] + [str(x) for k, v in args.items() for x in (k, v)] + ["--out", str(tmp_path / "out" / "regions")]
    assert cli.main(argv) == 65
    err = capsys.readouterr().err.strip()
    assert err.startswith("AIOD ERROR: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case,message", [
    ("missing atlas", "nope.tif: file not found"),
    ("float atlas", "atlas pixels are float32; expected an integer label image of region ids"),
    ("negative ids", "negative region id -3; region ids must be >= 0"),
    ("no column", "missing column(s) acronym; expected id, name, acronym, parent_id"),
    ("cycle", "regions 2 -> 4 -> 2 form a cycle of parents"),
    ("unknown parent", "line 3: parent 9 of region 2 is not a region of the file"),
    ("scale length", "--atlas-scale '1,1': 2 value(s), but the mask has 3 spatial axes"),
    ("atlas too small", "the atlas spans [0, 12) x [0, 12) x [0, 0.012) but the image spans [0, 12) x [0, 12) x [0, 12)"),
    ("atlas without scale", "no voxel size in the file and shape (6, 6, 6) is not the mask's (12, 12, 12); give --atlas-scale"),
    ("offset off the image", "the atlas spans [0, 12) x [0, 12) x [5, 17) but the image spans [0, 12) x [0, 12) x [0, 12)"),
    ("translated off the image", "the atlas spans [-3, 9) x [0, 12) x [0, 12) but the image spans [0, 12) x [0, 12) x [0, 12)"),
    ("bad offset", "--atlas-offset '1,x,2': not numbers; expected 3 comma-separated values"),
    ("offset length", "--atlas-offset '1,2': 2 value(s), but the mask has 3 spatial axes"),
    ("not an object table", "not an object table of `aiod measure`"),
])
def test_bad_input_is_refused_with_one_line_and_nothing_written(tmp_path, capsys, base, case, message):
    args = dict(base)
    if case == "missing atlas":
        args["--atlas"] = tmp_path / "nope.tif"
    elif case == "float atlas":
        tifffile.imwrite(tmp_path / "atlas.tif", np.ones((12, 12, 12), np.float32))
    elif case == "negative ids":
        atlas = np.ones((12, 12, 12), np.int16)
        atlas[11, 11, 11] = -3
        tifffile.imwrite(tmp_path / "atlas.tif", atlas)
    elif case in ("no column", "cycle", "unknown parent"):
        text = {"no column": "id,name,parent_id\n1,root,\n", "cycle": TREE.replace("2,left,L,1", "2,left,L,4"),
                "unknown parent": TREE.replace("2,left,L,1", "2,left,L,9")}[case]
        (tmp_path / "regions.csv").write_text(text)
        args["--regions"] = tmp_path / "regions.csv"
    elif case == "scale length":
        args["--atlas-scale"] = "1,1"
    elif case == "atlas too small":
        args["--atlas-scale"] = "1,1,0.001"  # x in mm by mistake
    elif case == "atlas without scale":
        tifffile.imwrite(tmp_path / "atlas.tif", np.ones((6, 6, 6), np.uint8))
    elif case == "offset off the image":
        args["--atlas-offset"] = "0,0,5"
    elif case == "translated off the image":
        ngff.write_image(tmp_path / "atlas.ome.zarr", np.ones((12, 12, 12), np.uint8), "ZYX")
        translate(tmp_path / "atlas.ome.zarr", (-3.0, 0.0, 0.0))
        args["--atlas"] = tmp_path / "atlas.ome.zarr"
    elif case in ("bad offset", "offset length"):
        args["--atlas-offset"] = {"bad offset": "1,x,2", "offset length": "1,2"}[case]
    elif case == "not an object table":
        assert cli.main(["count", "--objects", str(args["--objects"]), "--atlas", str(args["--atlas"]),
                         "--out", str(tmp_path / "counts")]) == 0
        args["--objects"] = tmp_path / "counts.parquet"
    refused(tmp_path, capsys, args, message)


def test_the_pipeline_count_step_places_the_atlas_by_the_input_images_translation(tmp_path):
    small, _, c, expected = coarse_atlas_case(tmp_path)  # objects.parquet names a mask without a translation
    entry = tmp_path / "entry"
    entry.mkdir()
    (tmp_path / "objects.parquet").rename(entry / "objects.parquet")
    ngff.write_image(tmp_path / "image.ome.zarr", np.zeros((32, 40, 48), np.uint8), "ZYX", scale=(2.0, 1.0, 1.0))
    translate(tmp_path / "image.ome.zarr", (100.0, 200.0, 300.0))
    ngff.write_image(tmp_path / "atlas.ome.zarr", padded_atlas(small), "ZYX", chunks=(3, 4, 5), scale=(8.0, 4.0, 4.0))
    translate(tmp_path / "atlas.ome.zarr", (84.0, 192.0, 292.0))
    (tmp_path / "record.json").write_text(json.dumps({"cache_entry": str(entry), "image": str(tmp_path / "image.ome.zarr")}))
    (tmp_path / "items.tsv").write_text(f"vol\t{tmp_path / 'record.json'}\t{tmp_path / 'atlas.ome.zarr'}\t\t\t\n")
    assert cli.main(["count-results", "--items", str(tmp_path / "items.tsv"), "--outdir", str(tmp_path / "out")]) == 0
    table = measure.read_table(tmp_path / "out" / "vol.regions.parquet")
    rows = {int(i): {k: v[n] for k, v in table.columns.items()} for n, i in enumerate(table.columns["region_id"])}
    assert_counts(rows, expected, c)
    assert table.meta["atlas_offset"] == [-16.0, -8.0, -8.0]
