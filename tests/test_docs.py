"""The parameter reference names every pipeline parameter; the model reference is the registry's."""

from __future__ import annotations

import json

from aiod import catalogue, registry
from pipeline_helpers import ROOT

DOC = (ROOT / "docs" / "parameters.md").read_text()


def test_every_pipeline_parameter_is_documented():
    schema = json.loads((ROOT / "nextflow_schema.json").read_text())
    names = [n for g in schema["$defs"].values() for n, s in g["properties"].items() if not s.get("hidden")]
    assert [n for n in names if f"`--{n}`" not in DOC] == []


def test_model_reference_is_generated_from_the_current_manifests():
    # regenerate with: bin/aiod models docs --write
    assert (ROOT / "docs" / "models.md").read_text() == catalogue.reference(registry.load_registry())


def test_committed_manifest_schema_is_current():
    # regenerate with: bin/aiod models schema --write
    assert (ROOT / "model_registry" / "manifest.schema.json").read_text() == registry.json_schema()
