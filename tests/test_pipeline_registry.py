"""The pipeline with a lab's own registry: the artifact is fetched once into the cache by
FETCH_ARTIFACTS, reused by later runs, and a bad artifact stops the run before any image work."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import tifffile
import yaml

from aiod import registry
from artifact_server import ArtifactServer
from pipeline_helpers import cache_entries, processes, read_mask, run_pipeline, trace_rows

pytestmark = pytest.mark.pipeline
ARTIFACT = b"a lab's model weights\n" * 1000


def lab_registry(folder, location):
    """A family 'labnuclei' that runs the classical adapter and needs an artifact."""
    manifest = yaml.safe_load((registry.BUILTIN_DIR / "manifests" / "classical.yaml").read_text())
    manifest["family"], manifest["adapter"] = "labnuclei", "classical"
    manifest["versions"] = {"v1": {**manifest["versions"]["nuclei"], "tasks": {"nuclei": {"locations": [location]}}}}
    (folder / "lab").mkdir()
    (folder / "lab" / "labnuclei.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder / "lab"


@pytest.fixture
def image(tmp_path):
    img = np.zeros((96, 96), dtype=np.uint16)
    img[20:40, 20:40] = img[60:80, 50:75] = 1000
    tifffile.imwrite(tmp_path / "img.tif", img)
    (tmp_path / "images.csv").write_text("id,image\nimg,img.tif\n")
    return tmp_path


def run(folder, lab, suffix, check=True):
    return run_pipeline(folder, "--input", str(folder / "images.csv"), "--outdir", str(folder / "results"),
                        "--root_dir", str(folder / "root"), "--registry_dir", str(lab), "--model", "labnuclei",
                        "--trace_report_suffix", suffix, check=check)


def test_a_url_artifact_is_fetched_once_and_reused_by_later_runs(image):
    with ArtifactServer() as server:
        server.files["weights.bin"] = ARTIFACT
        sha = hashlib.sha256(ARTIFACT).hexdigest()
        lab = lab_registry(image, {"url": f"{server.url}/plain/weights.bin", "sha256": sha})
        run(image, lab, "first")
        assert len(server.requests) == 1
        assert len(processes(trace_rows(image / "results", "first"), "FETCH_ARTIFACTS", "COMPLETED")) == 1
        stored = image / "root" / "aiod_cache" / "labnuclei" / "checkpoints" / f"v1-{sha[:16]}" / "weights.bin"
        assert stored.read_bytes() == ARTIFACT
        record = json.loads((image / "results" / "img.json").read_text())
        assert record["model"]["artifact"]["sha256"] == sha and record["model"]["task"] == "nuclei"
        assert len(np.unique(read_mask(image / "results", "img"))) == 3
        run(image, lab, "second")  # a new run (no -resume): the artifact and the result come from the cache
        assert len(server.requests) == 1
        assert [r["process"].split(":")[-1] for r in trace_rows(image / "results", "second") if r["process"].endswith("SEGMENT")] == []


def test_a_wrong_checksum_stops_the_run_and_leaves_nothing(image):
    with ArtifactServer() as server:
        server.files["weights.bin"] = ARTIFACT
        lab = lab_registry(image, {"url": f"{server.url}/plain/weights.bin", "sha256": "0" * 64})
        proc = run(image, lab, "bad", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "AIOD ERROR: labnuclei/v1/nuclei: no location gave the artifact" in out and "checksum mismatch" in out
    assert cache_entries(image / "root") == [] and not (image / "results" / "img.ome.zarr").exists()
    checkpoints = image / "root" / "aiod_cache" / "labnuclei" / "checkpoints"
    assert [p for p in checkpoints.iterdir() if not p.name.startswith(".")] == []
