"""Objects per atlas region in a run: the atlas column, --regions, the COUNT step (docs/measure.md).

A 3D volume split into substacks, an atlas at a 4x coarser grid with a two-level hierarchy: the
region table counts each published object once, in the atlas voxel holding its centroid, as
the mask itself says; a second run with another atlas reuses the cached result and object
table and makes only the region table anew, with the atlas placed by the samplesheet's
atlas_offset."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from aiod import ngff, synthetic
from pipeline_helpers import cache_entries, processes, run_pipeline, trace_rows

pytestmark = pytest.mark.pipeline

SHAPE = (48, 160, 160)


def atlas_halves(axis: int) -> np.ndarray:
    """A 12x40x40 atlas (4x coarser than the image): region 10 below the middle of `axis`, 20 above."""
    atlas = np.full((12, 40, 40), 10, np.uint16)
    index = [slice(None)] * 3
    index[axis] = slice(atlas.shape[axis] // 2, None)
    atlas[tuple(index)] = 20
    return atlas


def expected(mask: np.ndarray, atlas: np.ndarray, offset=(0, 0, 0)) -> dict[int, tuple[int, int]]:
    """Region -> (objects, summed voxels) from the mask: each object in the atlas voxel of its centroid
    (1 µm image voxels, 4 µm atlas voxels, the atlas' first corner at `offset` µm from the image's)."""
    ids = np.unique(mask)[1:]
    centroids = np.array(ndimage.center_of_mass(np.ones_like(mask), mask, ids))
    sizes = ndimage.sum_labels(np.ones_like(mask), mask, ids)
    cells = np.floor((centroids + 0.5 - np.asarray(offset)) / 4).astype(int)
    region = atlas[tuple(cells.T)]
    return {r: (int((region == r).sum()), int(sizes[region == r].sum())) for r in (10, 20, 30)}


def region_rows(path) -> dict[int, dict]:
    with open(path, newline="") as fh:
        return {int(row["region_id"]): row for row in csv.DictReader(fh)}


def test_objects_counted_per_region_once_and_a_new_atlas_recounts_without_segmenting(tmp_path):
    gt = synthetic.touching_nuclei(SHAPE, n=90, radius=(6.0, 10.0), seed=42)
    tifffile.imwrite(tmp_path / "volume.tif", synthetic.render_nuclei(gt, seed=142))
    tifffile.imwrite(tmp_path / "atlas.tif", atlas_halves(2))
    (tmp_path / "regions.csv").write_text("id,name,acronym,parent_id\n1,brain,BR,\n10,left,L,1\n20,right,R,1\n")
    (tmp_path / "images.csv").write_text("id,image,atlas,atlas_scale,voxel_size\nvolume,volume.tif,atlas.tif,\"4,4,4\",\"1,1,1\"\n")
    common = ["--input", "images.csv", "--outdir", "results", "--root_dir", "root", "--regions", "regions.csv",
              "--num_substacks", "2"]
    first = run_pipeline(tmp_path, *common, "--trace_report_suffix", "first")
    assert "results/volume.regions.csv" in first.stdout
    mask = np.asarray(ngff.open_labels(tmp_path / "results" / "volume.ome.zarr")[...])
    rows = region_rows(tmp_path / "results" / "volume.regions.csv")
    want = expected(mask, atlas_halves(2))
    n = len(np.unique(mask)) - 1
    for region in (10, 20):
        assert (int(rows[region]["objects"]), float(rows[region]["object_volume_um3"])) == (want[region][0], want[region][1])
        assert float(rows[region]["region_volume_mm3"]) == pytest.approx(12 * 40 * 20 * 64 / 1e9)
        assert float(rows[region]["density_per_mm3"]) == pytest.approx(want[region][0] / (12 * 40 * 20 * 64 / 1e9))
    assert int(rows[1]["objects"]) == n == want[10][0] + want[20][0]  # the parent holds both, each object once
    assert int(rows[-1]["objects"]) == int(rows[0]["objects"]) == 0
    assert sum(1 for _ in open(tmp_path / "results" / "volume.objects.csv")) == n + 1  # header + one row per object
    page = (tmp_path / "results" / "report.html").read_text()
    assert "Objects per atlas region" in page and 'alt="top regions by density: volume' in page

    # another atlas, split along z and starting 8 µm (2 atlas voxels of region 30) before the image, as the
    # samplesheet's atlas_offset says: the mask and its object table come from the cache, only the regions are new
    shifted = np.concatenate([np.full((2, 40, 40), 30, np.uint16), atlas_halves(0)])
    tifffile.imwrite(tmp_path / "atlas.tif", shifted)
    (tmp_path / "images.csv").write_text(
        'id,image,atlas,atlas_scale,voxel_size,atlas_offset\nvolume,volume.tif,atlas.tif,"4,4,4","1,1,1","-8,0,0"\n')
    run_pipeline(tmp_path, *common, "--trace_report_suffix", "second")
    trace = trace_rows(tmp_path / "results", "second")
    assert not processes(trace, "SEGMENT") and not processes(trace, "MERGE")
    assert len(processes(trace, "COUNT", "COMPLETED")) == 1 and len(cache_entries(tmp_path / "root")) == 1
    rows = region_rows(tmp_path / "results" / "volume.regions.csv")
    want = expected(mask, shifted, offset=(-8, 0, 0))
    assert want == expected(mask, atlas_halves(0)) and want[10][0] and want[20][0] and want[30] == (0, 0)
    assert want != expected(mask, shifted)  # without the offset, the halves would split the objects elsewhere
    for region in (10, 20, 30):
        assert (int(rows[region]["objects"]), float(rows[region]["object_volume_um3"])) == want[region]
    assert float(rows[30]["region_volume_mm3"]) == pytest.approx(2 * 40 * 40 * 64 / 1e9)


@pytest.mark.parametrize("atlas, extra, message", [
    (np.zeros((12, 40, 40), np.float32), "", "atlas pixels are float32; expected an integer label image of region ids"),
    (np.zeros((12, 40, 20), np.uint16), "", "the atlas spans"),
    (np.zeros((12, 40, 40), np.uint16), "--regions=cycle.csv", "cycle.csv"),
])
def test_a_bad_atlas_or_hierarchy_stops_the_run_before_any_work(tmp_path, atlas, extra, message):
    tifffile.imwrite(tmp_path / "volume.tif", np.zeros(SHAPE, np.uint16))
    tifffile.imwrite(tmp_path / "atlas.tif", atlas)
    (tmp_path / "cycle.csv").write_text("id,name,acronym,parent_id\n1,a,A,2\n2,b,B,1\n")
    (tmp_path / "images.csv").write_text("id,image,atlas,atlas_scale,voxel_size\nvolume,volume.tif,atlas.tif,\"4,4,4\",\"1,1,1\"\n")
    args = ["--input", "images.csv", "--outdir", "results", "--root_dir", "root"]
    if extra:
        args += extra.split("=")
    proc = run_pipeline(tmp_path, *args, check=False)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "AIOD ERROR:" in line]
    assert errors and message in errors[-1], (proc.stdout + proc.stderr)[-3000:]
    assert cache_entries(tmp_path / "root") == [] and not list(tmp_path.glob("results/*.ome.zarr"))
