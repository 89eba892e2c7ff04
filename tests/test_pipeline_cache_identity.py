"""The image's identity in the cache key, through the real pipeline: a changed image is never a hit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from pipeline_helpers import cache_entries, processes, run_pipeline, trace_rows

pytestmark = pytest.mark.pipeline


def test_one_pixel_changed_at_the_centre_of_an_8_mb_tiff_is_computed_again_not_a_cache_hit(tmp_path):
    """2048x2048 uint16: the centre pixel lies between the windows that `--fingerprint sample` reads."""
    image = np.zeros((2048, 2048), np.uint16)
    for y in range(64, 2048, 256):
        for x in range(64, 2048, 256):
            image[y:y + 40, x:x + 40] = 4000
    tifffile.imwrite(tmp_path / "img.tif", image)
    (tmp_path / "samplesheet.csv").write_text("id,image\nimg,img.tif\n")
    common = ("--input", str(tmp_path / "samplesheet.csv"), "--outdir", str(tmp_path / "results"),
              "--root_dir", str(tmp_path / "root"), "--num_substacks", "1")
    run_pipeline(tmp_path, *common, "--trace_report_suffix", "first")
    image[1024, 1024] = 4000
    tifffile.imwrite(tmp_path / "img.tif", image)
    run_pipeline(tmp_path, *common, "--trace_report_suffix", "second")

    assert len(processes(trace_rows(tmp_path / "results", "second"), "SEGMENT", "COMPLETED")) == 1
    assert json.loads((tmp_path / "results" / "img.json").read_text())["cache_hit"] is False
    assert len(cache_entries(tmp_path / "root")) == 2
