"""Shared test set-up.

The `aiod` package lives in `bin/aiod/` because Nextflow puts `bin/` on every task's PATH and
Python then finds the package beside the `bin/aiod` entry script, in whatever environment the
task runs. Tests import it the same way: `bin/` goes on `sys.path` once, here.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bin"))
