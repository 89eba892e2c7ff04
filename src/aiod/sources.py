"""Which Python files each pipeline step runs, so that `-resume` reruns exactly the tasks whose
code changed.

Nextflow hashes the bin/ scripts a task names, not the modules they import. main.nf therefore
gives each process the digest of the source files its step imports, read from the committed
map `src/aiod/step_sources.json`. The map is computed here by following imports (also those
inside functions) from each step's entry module; a test fails when it is stale, and
`bin/aiod sources --write` redoes it. Adapters are imported by name at run time, so the steps
that run a model list every adapter module (and fine-tuning every trainer).
"""

from __future__ import annotations

import json
import modulefinder
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
MAP_FILE = PACKAGE / "step_sources.json"

# process -> entry modules (package-relative) of the step it runs; cli.py and cli_steps.py are
# every step's door
STEPS: dict[str, list[str]] = {
    "RESOLVE_MODEL": ["models/__init__.py", "model_list.py"],
    "FETCH_ARTIFACTS": ["artifacts.py"],
    "CHECK_INPUT": ["samplesheet.py", "publish.py", "regions.py"],
    "PLAN": ["steps/plan.py", "models/*.py"],
    "SEGMENT": ["steps/segment.py", "models/*.py"],
    "MERGE": ["steps/merge.py"],
    "FINALIZE": ["steps/finalize.py"],
    "EVALUATE": ["evaluate.py"],
    "COUNT": ["regions.py", "measure.py", "publish.py", "tables.py"],
    "COMPARE": ["compare.py", "report.py"],
    "FINETUNE_CHECK": ["finetune.py", "training/*.py"],
    "FINETUNE_TRAIN": ["finetune.py", "training/*.py", "models/*.py"],
}
# Every step's door: the command line and its steps' handlers (their imports are per subcommand,
# inside functions, so they are listed as files but not followed) and what they import at module
# level.
COMMON = ["__init__.py", "cli.py", "cli_steps.py", "diskspace.py", "errors.py"]


def step_sources() -> dict[str, list[str]]:
    return {step: sorted(set(COMMON) | _closure(entries)) for step, entries in STEPS.items()}


def _closure(entries: list[str]) -> set[str]:
    found: set[str] = set()
    for pattern in entries:
        for path in sorted(PACKAGE.glob(pattern)):
            finder = modulefinder.ModuleFinder(path=[str(PACKAGE.parent)])
            finder.import_hook(_module_name(path))
            for module in finder.modules.values():
                if module.__file__ and Path(module.__file__).resolve().is_relative_to(PACKAGE):
                    found.add(Path(module.__file__).resolve().relative_to(PACKAGE).as_posix())
    return found


def _module_name(path: Path) -> str:
    parts = path.resolve().relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def map_text() -> str:
    return json.dumps(step_sources(), indent=2) + "\n"
