"""The Scores tab: a run's `comparison.json` (aiod.compare), one row per model."""

from __future__ import annotations

import json
from pathlib import Path

from qtpy.QtWidgets import QTableWidget, QTableWidgetItem

COLUMNS = ("label", "images", "cached", "objects", "f1", "ap_50_95", "panoptic_quality", "dice",
           "seconds_per_megapixel", "device")


class ScoresTable(QTableWidget):
    def __init__(self, parent=None):
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(COLUMNS))

    def read(self, path: Path) -> bool:
        """comparison.json's table (a row per model; the best marked *), when it exists."""
        try:
            models = json.loads(Path(path).read_text())["models"]
        except (OSError, ValueError, KeyError):
            return False
        self.setRowCount(len(models))
        for i, row in enumerate(models):
            for j, key in enumerate(COLUMNS):
                value = row.get(key)
                text = "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
                self.setItem(i, j, QTableWidgetItem(("* " if row.get("best") and j == 0 else "") + text))
        return True
