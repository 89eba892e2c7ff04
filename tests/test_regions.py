"""Objects counted per atlas region: each once, by centroid, at any atlas resolution, with the
hierarchy rolled up; bad atlases and region files refused with one line and nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
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
    elif case == "not an object table":
        assert cli.main(["count", "--objects", str(args["--objects"]), "--atlas", str(args["--atlas"]),
                         "--out", str(tmp_path / "counts")]) == 0
        args["--objects"] = tmp_path / "counts.parquet"
    refused(tmp_path, capsys, args, message)
