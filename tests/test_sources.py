"""The map of which Python files each step runs (what -resume invalidates) is current and true."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aiod import sources
from pipeline_helpers import ROOT


def test_the_committed_map_is_current():
    # regenerate with: bin/aiod sources --write
    assert sources.MAP_FILE.read_text() == sources.map_text()


@pytest.mark.parametrize("step", sorted(sources.STEPS))
def test_every_module_a_step_loads_is_in_its_list(step):
    """Import the step's entry modules in a fresh interpreter and compare what got loaded."""
    entries = [p for pattern in sources.STEPS[step] for p in sorted(sources.PACKAGE.glob(pattern))]
    names = [sources._module_name(p) for p in entries] + ["aiod.cli"]
    code = (f"import importlib, json, sys; [importlib.import_module(n) for n in {names!r}]; "
            "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('aiod') and m.__file__)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT / "src", capture_output=True, text=True, check=True).stdout)
    relative = {str(__import__("pathlib").Path(f).resolve().relative_to(sources.PACKAGE)) for f in loaded}
    assert relative <= set(json.loads(sources.MAP_FILE.read_text())[step])


def test_the_merge_step_does_not_run_the_model_code():
    steps = json.loads(sources.MAP_FILE.read_text())
    assert not any(name.startswith("models/") for name in steps["MERGE"] + steps["FINALIZE"])
    assert "seams.py" not in steps["PLAN"]
    # SEGMENT writes the result of an image planned as one substack with MERGE's own code
    assert {"steps/merge.py", "seams.py"} <= set(steps["SEGMENT"])
