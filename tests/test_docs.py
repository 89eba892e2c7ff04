"""The parameter reference names every pipeline parameter and every classical parameter."""

from __future__ import annotations

import json

from aiod.models import classical
from pipeline_helpers import ROOT

DOC = (ROOT / "docs" / "parameters.md").read_text()


def test_every_pipeline_parameter_is_documented():
    schema = json.loads((ROOT / "nextflow_schema.json").read_text())
    names = [n for g in schema["$defs"].values() for n, s in g["properties"].items() if not s.get("hidden")]
    assert [n for n in names if f"`--{n}`" not in DOC] == []


def test_every_classical_parameter_and_preset_is_documented():
    assert [n for n in classical.Params.model_fields if f"| `{n}` |" not in DOC] == []
    for version, values in classical.PRESETS.items():
        assert f"`{version}`" in DOC
        for name, value in values.items():
            row = next(line for line in DOC.splitlines() if line.startswith(f"| `{name}` |"))
            assert (f"`{value}`" if isinstance(value, str) else str(value)) in row, (version, name)
