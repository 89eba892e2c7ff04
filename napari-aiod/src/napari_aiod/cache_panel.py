"""The cache panel: the results under a root_dir, as `aiod cache ls` lists them.

It calls aiod.cache_tools, the code of the command line: `select` to list, `clear` (with
`--yes`, after the person confirms) to delete the chosen entries, so an entry a live run holds
is kept here as it is there. Opening an entry adds its mask over its image, lazily.
"""

from __future__ import annotations

import time
from pathlib import Path

from qtpy.QtWidgets import (QAbstractItemView, QHBoxLayout, QLabel, QMessageBox, QPushButton,
                            QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

COLUMNS = ("key", "family", "version", "image", "size", "age", "objects")


def rows(root_dir: Path) -> list[dict]:
    """One row per cache result (aiod.cache_tools.select, no filter)."""
    from aiod import cache_tools
    from aiod.diskspace import human
    now = time.time()
    out = []
    for e in cache_tools.select(Path(root_dir), cache_tools.Filters()):
        m = e.manifest or {}
        out.append({"key": e.key, "family": e.family, "version": e.version, "image": e.image_id,
                    "size": human(cache_tools.folder_size(e.path)), "age": cache_tools.human_age(e.age(now)),
                    "objects": m.get("n_objects", ""), "path": e.path,
                    "image_path": (m.get("image") or {}).get("path")})
    return out


class CachePanel(QWidget):
    def __init__(self, viewer, root_dir_getter, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.root_dir = root_dir_getter
        self.entries: list[dict] = []
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        for text, slot in (("Refresh", self.refresh), ("Open", self.open_selected), ("Delete…", self.delete_selected)):
            b = QPushButton(text)
            b.clicked.connect(slot)
            buttons.addWidget(b)
            setattr(self, f"{text.strip('…').lower()}_button", b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addWidget(self.status)

    def refresh(self) -> None:
        self.entries = rows(Path(self.root_dir()).expanduser())
        self.table.setRowCount(len(self.entries))
        for i, row in enumerate(self.entries):
            for j, col in enumerate(COLUMNS):
                text = row[col][:12] if col == "key" else str(row[col])
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.status.setText(f"{len(self.entries)} result(s) in {Path(self.root_dir()).expanduser() / 'aiod_cache'}")

    def selected(self) -> list[dict]:
        return [self.entries[i] for i in sorted({ix.row() for ix in self.table.selectedIndexes()})]

    def open_selected(self) -> None:
        from .layers import add_result
        for row in self.selected():
            image = Path(row["image_path"]) if row["image_path"] else None
            add_result(self.viewer, row["path"] / "labels.ome.zarr", image, name=f"{row['image']} ({row['key'][:8]})")

    def delete_selected(self) -> None:
        chosen = self.selected()
        if not chosen:
            self.status.setText("select the results to delete first")
            return
        names = "\n".join(f"{r['key'][:12]}  {r['family']}/{r['version']}  {r['image']}  {r['size']}" for r in chosen)
        answer = QMessageBox.question(self, "Delete cache results",
                                      f"Delete {len(chosen)} result(s) from the cache? The next run that needs "
                                      f"them computes them again.\n\n{names}",
                                      QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        if answer != QMessageBox.Yes:
            return
        root = Path(self.root_dir()).expanduser()
        lines = [delete_entry(root, r["key"]) for r in chosen]
        self.refresh()
        self.status.setText("\n".join(lines))


def delete_entry(root: Path, key: str) -> str:
    """Delete one result by its full key, as `aiod cache clear --yes` deletes what it selects:
    never one a live run holds, never anything outside <root>/aiod_cache, renamed out of its
    key's place before it is removed. (`aiod cache clear` selects by family, version, image and
    age, not by key, so this applies its rules to the one entry.)"""
    from aiod import claims, cache_tools
    from aiod.cache import CACHE_DIR
    entry = cache_tools.find(root, key)
    cache_dir = root.resolve() / CACHE_DIR
    holder = cache_tools.held_by(entry)
    if holder is not None:
        return f"kept     {key[:12]}: held by {claims.describe(holder)}"
    if entry.path.is_symlink() or not entry.path.resolve().is_relative_to(cache_dir):
        return f"kept     {entry.path}: not a folder inside {cache_dir}"
    cache_tools._remove(entry.path)
    return f"deleted  {key[:12]}  {entry.family}/{entry.version}  {entry.image_id}"
