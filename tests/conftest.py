"""Shared test set-up.

The `aiod` package lives in `src/aiod/`; the pipeline's tasks run `bin/aiod`, which puts `src/`
on `sys.path` itself, so any environment with the dependencies can run it without installing
the package. Tests import it the same way: `src/` goes on `sys.path` once, here, and `tests/`
too, for the shared helpers of the pipeline tests.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
