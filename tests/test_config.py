"""`nextflow config` is clean for every documented profile; --help comes from the schema."""

from __future__ import annotations

import json
import re

import pytest

from pipeline_helpers import ROOT, nextflow

# profile -> the executor its tasks get (None: the profile sets none)
PROFILES = {"local": "local", "test": "local", "demo": None, "local,demo": "local", "gpu": None, "local,gpu": "local",
            "slurm": "slurm", "slurm,test": "slurm", "example_cluster": "slurm"}


@pytest.mark.parametrize("profile", PROFILES)
def test_config_resolves_cleanly(tmp_path, profile):
    proc = nextflow(["config", str(ROOT), "-profile", profile], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "WARN" not in proc.stdout + proc.stderr
    executors = set(re.findall(r"^\s*executor = '(\w+)'$", proc.stdout, re.M))
    assert executors == ({PROFILES[profile]} if PROFILES[profile] else set())


def test_help_lists_every_parameter_with_its_default(tmp_path):
    proc = nextflow(["run", str(ROOT / "main.nf"), "--help", "--outdir", str(tmp_path / "r")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads((ROOT / "nextflow_schema.json").read_text())
    for group in schema["$defs"].values():
        for name, spec in group["properties"].items():
            if spec.get("hidden"):
                continue
            line = next((l for l in proc.stdout.splitlines() if l.strip().startswith(f"--{name} ")), None)
            assert line is not None, name
            assert spec["description"] in line
            if "default" in spec:
                assert f"[default: {str(spec['default']).lower() if isinstance(spec['default'], bool) else spec['default']}]" in line


def test_schema_defaults_match_nextflow_config(tmp_path):
    proc = nextflow(["config", str(ROOT), "-flat"], cwd=tmp_path)
    config = dict(line.split(" = ", 1) for line in proc.stdout.splitlines() if line.startswith("params."))
    schema = json.loads((ROOT / "nextflow_schema.json").read_text())
    for group in schema["$defs"].values():
        for name, spec in group["properties"].items():
            assert f"params.{name}" in config, name
            if "default" in spec and name != "root_dir":
                value = config[f"params.{name}"].strip("'")
                assert value == str(spec["default"]).lower() if isinstance(spec["default"], bool) else value == str(spec["default"]), name
