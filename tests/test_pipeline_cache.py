"""The shared cache seen from whole pipeline runs: a damaged entry is never published."""

from __future__ import annotations

import pytest
import tifffile

from aiod import synthetic
from pipeline_helpers import cache_entries, processes, run_pipeline, trace_rows, tree_digest

pytestmark = pytest.mark.pipeline


def test_a_cached_result_missing_a_chunk_is_recomputed_and_the_intact_mask_published(tmp_path):
    gt = synthetic.touching_nuclei((160, 160), n=30, radius=(7.0, 11.0), seed=21)
    tifffile.imwrite(tmp_path / "img.tif", synthetic.render_nuclei(gt, seed=22))
    (tmp_path / "images.csv").write_text("id,image\nimg,img.tif\n")
    common = ["--input", str(tmp_path / "images.csv"), "--root_dir", str(tmp_path / "root"), "--num_substacks", "2"]
    run_pipeline(tmp_path, *common, "--outdir", str(tmp_path / "first"), "--trace_report_suffix", "first")
    intact = tree_digest(tmp_path / "first" / "img.ome.zarr")
    [entry] = cache_entries(tmp_path / "root")
    chunk = next(p for p in sorted(entry.glob("labels.ome.zarr/labels/*/0/**/*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()

    run_pipeline(tmp_path, *common, "--outdir", str(tmp_path / "second"), "--trace_report_suffix", "second")

    assert len(processes(trace_rows(tmp_path / "second", "second"), "SEGMENT", "COMPLETED")) == 4
    assert tree_digest(tmp_path / "second" / "img.ome.zarr") == intact
    assert cache_entries(tmp_path / "root") == [entry] and chunk.is_file()
    [moved] = (tmp_path / "root" / "aiod_cache" / ".damaged" / "classical" / "nuclei").iterdir()
    assert moved.name.startswith(f"{entry.name}-") and not (moved / chunk.relative_to(entry)).exists()
    warnings = [line for err in (tmp_path / "root" / "work").glob("*/*/.command.err")
                for line in err.read_text().splitlines() if line.startswith("AIOD WARNING")]
    assert warnings == [f"AIOD WARNING: damaged cache entry {entry}: {chunk.relative_to(entry)} is missing; "
                        f"moved to {moved}, the result will be computed again"]
