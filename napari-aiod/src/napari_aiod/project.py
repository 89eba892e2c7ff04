"""Where the AIoD pipeline is, and its `aiod` package.

The plugin drives the pipeline of one AIoD checkout (its main.nf, conf/, model_registry/) and
imports that same checkout's `aiod` package from `src/`, as `bin/aiod` and the tests do, so the
widget and the pipeline it starts never run two versions of the code. The checkout is, in order:

1. the folder named by the environment variable AIOD_PROJECT;
2. the folder holding this plugin's source tree (`<checkout>/napari-aiod/src/napari_aiod`),
   which is what an editable install (`pip install -e ./napari-aiod`) gives.

The Nextflow engine is AIOD_NEXTFLOW, else `nextflow` on PATH, else `<checkout>/engine/nextflow`
(`make engine`).
"""

from __future__ import annotations

import os
import shutil
import sys
from functools import lru_cache
from pathlib import Path


class ProjectNotFound(RuntimeError):
    pass


@lru_cache(maxsize=None)
def project_dir() -> Path:
    named = os.environ.get("AIOD_PROJECT")
    candidates = [Path(named).expanduser()] if named else []
    candidates.append(Path(__file__).resolve().parents[3])
    for folder in candidates:
        if (folder / "main.nf").is_file() and (folder / "src" / "aiod").is_dir():
            return folder.resolve()
    raise ProjectNotFound(
        "AIoD checkout not found: set AIOD_PROJECT to the folder holding main.nf and src/aiod "
        f"(looked in {', '.join(str(c) for c in candidates)})")


def use_aiod() -> Path:
    """Put the checkout's src/ on sys.path (once) so that `import aiod` finds it; the checkout."""
    root = project_dir()
    src = str(root / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return root


def nextflow() -> str:
    return os.environ.get("AIOD_NEXTFLOW") or shutil.which("nextflow") or str(project_dir() / "engine" / "nextflow")


def profiles(root: Path | None = None) -> list[str]:
    """The profiles nextflow.config defines (local first), read from its `profiles { }` block."""
    import re
    text = Path(root or project_dir(), "nextflow.config").read_text()
    block = text[text.find("profiles {"):]
    names = re.findall(r"^\s{4}([A-Za-z_][\w-]*)\s*\{", block, flags=re.M)
    return sorted(dict.fromkeys(names), key=lambda n: (n != "local", names.index(n)))


def pipeline_defaults(root: Path | None = None) -> dict:
    """Each pipeline parameter's default, from the checkout's nextflow_schema.json."""
    import json
    schema = json.loads(Path(root or project_dir(), "nextflow_schema.json").read_text())
    return {name: spec["default"] for group in schema.get("$defs", {}).values()
            for name, spec in group.get("properties", {}).items() if "default" in spec}
