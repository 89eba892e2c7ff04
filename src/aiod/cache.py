"""The shared, hash-keyed result cache under root_dir (layout: docs/cache.md).

A result is a folder `aiod_cache/<family>/<version>_masks/<key>/` holding `labels.ome.zarr` and
`manifest.json`. It appears there only complete: it is copied into a hidden temporary folder
beside its final place and renamed in one step, so a reader sees all of it or nothing, and of two
runs finishing the same key at once, one wins and the other's copy is dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

CACHE_DIR = "aiod_cache"
STALE_TMP_SECONDS = 24 * 3600

README = """\
# AIoD root

Written by the AIoD pipeline. Safe to share between the users of a lab (one `--root_dir`).

- `aiod_cache/<family>/checkpoints/`: model artifacts, verified by sha256, fetched once.
- `aiod_cache/<family>/<version>_masks/<key>/`: one finished result (`labels.ome.zarr`,
  `manifest.json` saying how it was made). `<key>` is a hash of everything that can change the
  result (image content, model, version, parameters, substack plan, merge settings, result
  format). Results appear only complete; a `.tmp-*` folder is an unfinished copy, safe to delete.
  Deleting a result folder makes the next run compute it again.
- `conda/`: per-family environments, shared.
- `configs/`, `project_configs/`: resolved model configs and saved run settings.
- `work/`: Nextflow's work directory (`-resume` uses it); safe to delete when no run is active.
"""


def cache_key(parts: dict) -> str:
    """Hex sha256 of the canonical JSON of everything that can change a result."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class Cache:
    def __init__(self, root_dir: str | Path):
        self.root = Path(root_dir).expanduser().resolve()
        self.dir = self.root / CACHE_DIR

    def ensure(self) -> None:
        """Create the cache folder and the root's README (once)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        readme = self.root / "README.md"
        if not readme.exists():
            tmp = readme.with_name(f".README.md.{uuid.uuid4().hex}")
            tmp.write_text(README)
            os.replace(tmp, readme)

    def entry(self, family: str, version: str, key: str) -> Path:
        return self.dir / family / f"{version}_masks" / key

    def lookup(self, family: str, version: str, key: str) -> Path | None:
        """The finished result for this key, or None."""
        path = self.entry(family, version, key)
        return path if (path / "manifest.json").is_file() else None

    def commit(self, result: Path, family: str, version: str, key: str) -> Path:
        """Copy a finished result folder into the cache atomically; return its cache path."""
        final = self.entry(family, version, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp(final.parent)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex}"
        try:
            shutil.copytree(result, tmp, symlinks=False)
            try:
                os.rename(tmp, final)
            except OSError:
                if self.lookup(family, version, key) is None:
                    raise
                # another run committed the same key first: its result is the same, keep it
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    @staticmethod
    def _remove_stale_tmp(folder: Path) -> None:
        now = time.time()
        for tmp in folder.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    shutil.rmtree(tmp, ignore_errors=True)
            except FileNotFoundError:
                pass
