"""The built-in demo set (`make demo`): synthetic touching nuclei with their ground truth.

Four 2D fields (TIFF) and one 3D volume (OME-Zarr), plus `samplesheet.csv` naming them. Small
enough to run in a minute on a laptop CPU, large enough to be split into substacks.
"""

from __future__ import annotations

import csv
from pathlib import Path

import tifffile

from . import ngff, synthetic

FIELDS_2D = 4
SHAPE_2D = (256, 256)
SHAPE_3D = (48, 160, 160)


def write_demo(outdir: Path) -> Path:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(1, FIELDS_2D + 1):
        gt = synthetic.touching_nuclei(SHAPE_2D, n=60, radius=(7.0, 12.0), seed=i)
        tifffile.imwrite(outdir / f"field_{i}.tif", synthetic.render_nuclei(gt, seed=100 + i), compression="zlib")
        tifffile.imwrite(outdir / f"field_{i}_gt.tif", gt, compression="zlib")
        rows.append({"id": f"field_{i}", "image": f"field_{i}.tif", "axes": "YX", "channel": "", "ground_truth": f"field_{i}_gt.tif"})
    gt = synthetic.touching_nuclei(SHAPE_3D, n=90, radius=(6.0, 10.0), seed=42)
    ngff.write_image(outdir / "volume.ome.zarr", synthetic.render_nuclei(gt, seed=142), axes="ZYX")
    tifffile.imwrite(outdir / "volume_gt.tif", gt, compression="zlib")
    rows.append({"id": "volume", "image": "volume.ome.zarr", "axes": "", "channel": "", "ground_truth": "volume_gt.tif"})
    sheet = outdir / "samplesheet.csv"
    with open(sheet, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "axes", "channel", "ground_truth"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"[aiod] demo data: {FIELDS_2D} 2D fields {SHAPE_2D} and one 3D volume {SHAPE_3D} in {outdir}")
    return sheet
