"""`aiod cache`: list, inspect, verify and clear what lies under a root_dir (docs/cache.md).

Everything here reads the layout of `cache.py`; `clear` deletes only result entries (and, when
asked, damaged copies) below `<root_dir>/aiod_cache`, and never an entry a live run holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import claims
from .diskspace import human
from .cache import CACHE_DIR, DAMAGED_DIR, MANIFEST, Cache, entry_problem
from .errors import CacheError

DEFAULT_ROOT = "~/.nextflow/aiod"
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class Entry:
    family: str
    version: str
    key: str
    path: Path
    manifest: dict | None  # None when the manifest cannot be read (a damaged entry)

    @property
    def image_id(self) -> str:
        return str((self.manifest or {}).get("id", "?"))

    @property
    def image_name(self) -> str:
        return Path(((self.manifest or {}).get("image") or {}).get("path", "?")).name

    def age(self, now: float) -> float:
        return now - self.path.stat().st_mtime


@dataclass
class Filters:
    family: str | None = None
    version: str | None = None
    image: str | None = None
    older_than: str | None = None


def parse_age(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhdw])\s*", text or "")
    if not m:
        raise CacheError(f"--older-than: '{text}' is not an age (expected a number and a unit: s, m, h, d or w, e.g. '30d')")
    return float(m.group(1)) * AGE_UNITS[m.group(2)]


def folder_size(path: Path) -> int:
    """Bytes of the files below a folder (links not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def human_age(seconds: float) -> str:
    for unit, size in (("w", AGE_UNITS["w"]), ("d", AGE_UNITS["d"]), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def all_entries(root: Path) -> list[Entry]:
    found = []
    for path in sorted(Path(root, CACHE_DIR).glob("*/*_masks/*")):
        if path.name.startswith(".") or not path.is_dir() or path.is_symlink():
            continue
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = None
        found.append(Entry(path.parent.parent.name, path.parent.name.removesuffix("_masks"), path.name, path,
                           manifest if isinstance(manifest, dict) else None))
    return found


def select(root: Path, filters: Filters) -> list[Entry]:
    limit = parse_age(filters.older_than) if filters.older_than else None
    now = time.time()
    return [e for e in all_entries(root)
            if (filters.family is None or e.family == filters.family)
            and (filters.version is None or e.version == filters.version)
            and (filters.image is None or filters.image in (e.image_id, e.image_name))
            and (limit is None or e.age(now) > limit)]


def find(root: Path, prefix: str) -> Entry:
    """The one entry whose key starts with `prefix`."""
    matches = [e for e in all_entries(root) if e.key.startswith(prefix)]
    if not matches:
        raise CacheError(f"{Path(root) / CACHE_DIR}: no cache entry has a key starting with '{prefix}' (see 'aiod cache ls')")
    if len(matches) > 1:
        raise CacheError(f"{Path(root) / CACHE_DIR}: key prefix '{prefix}' matches {len(matches)} entries; give more characters")
    return matches[0]


def kind_sizes(root: Path) -> dict[str, int]:
    """Bytes per kind of thing under a root_dir."""
    cache = Path(root) / CACHE_DIR
    return {
        "results": sum(folder_size(p) for p in cache.glob("*/*_masks")),
        "checkpoints": sum(folder_size(p) for p in cache.glob("*/checkpoints")),
        "damaged": folder_size(cache / DAMAGED_DIR),
        "conda envs": folder_size(Path(root) / "conda"),
        "work": folder_size(Path(root) / "work"),
    }


def held_by(entry: Entry) -> dict | None:
    """Who holds the entry's key, when a live run does."""
    path = claims.claim_path(entry.path)
    if path.exists() and not claims.is_stale(path):
        return claims.holder(path) or {}
    return None


def listing(root: Path, filters: Filters) -> str:
    now = time.time()
    chosen = select(root, filters)
    lines = [f"{'KEY':<14}{'FAMILY/VERSION':<28}{'IMAGE':<24}{'SIZE':>10}  AGE"]
    for e in chosen:
        lines.append(f"{e.key[:12]:<14}{e.family + '/' + e.version:<28}{e.image_id:<24}{human(folder_size(e.path)):>10}  "
                     f"{human_age(e.age(now))}" + ("" if e.manifest else "  (manifest unreadable)"))
    sizes = kind_sizes(root)
    lines.append(f"{len(chosen)} entr{'y' if len(chosen) == 1 else 'ies'} listed, {human(sum(folder_size(e.path) for e in chosen))}")
    lines.append("under " + str(Path(root)) + ": " + ", ".join(f"{kind} {human(n)}" for kind, n in sizes.items()))
    return "\n".join(lines)


def info(root: Path, prefix: str) -> str:
    e = find(root, prefix)
    m = e.manifest or {}
    files = m.get("files") or {}
    substacks = (m.get("timings") or {}).get("substacks") or {}
    summary = {
        "key": e.key, "path": str(e.path), "state": entry_problem(e.path) or "complete (sizes checked; 'aiod cache verify' reads every byte)",
        "id": m.get("id"), "created": m.get("created"), "aiod_version": m.get("aiod_version"),
        "result_format": m.get("result_format"), "image": m.get("image"),
        "model": {k: (m.get("model") or {}).get(k) for k in ("family", "version", "task", "params")}
                 | {"artifact_sha256": ((m.get("model") or {}).get("artifact") or {}).get("sha256")},
        "plan": {k: (m.get("plan") or {}).get(k) for k in ("grid", "overlap")} | {"substacks": len((m.get("plan") or {}).get("substacks") or [])},
        "merge": m.get("merge"), "n_objects": m.get("n_objects"), "labels": m.get("labels"),
        "timings": {"merge_seconds": round((m.get("timings") or {}).get("merge_seconds") or 0, 2),
                    "segment_seconds": round(sum((t or {}).get("segment_seconds") or 0 for t in substacks.values()), 2),
                    "read_seconds": round(sum((t or {}).get("read_seconds") or 0 for t in substacks.values()), 2)},
        "files": {"count": len(files), "bytes": sum(f.get("size", 0) for f in files.values())},
    }
    return yaml.safe_dump(summary, sort_keys=False, default_flow_style=None, width=120).rstrip()


def verify(root: Path, prefixes: list[str], every: bool) -> tuple[list[str], bool]:
    """Check every checksum of the chosen entries; damaged ones are moved aside. (lines, all whole)"""
    if every == bool(prefixes):
        raise CacheError("aiod cache verify: give the keys to check, or --all (not both)")
    chosen = all_entries(root) if every else [find(root, p) for p in prefixes]
    cache, lines, whole = Cache(root), [], True
    for e in chosen:
        problem = entry_problem(e.path, verify=True)
        if problem is None:
            lines.append(f"ok       {e.key[:12]}  {e.family}/{e.version}  {e.image_id}")
        else:
            whole = False
            moved = cache.set_aside(e.path, problem)
            lines.append(f"DAMAGED  {e.key[:12]}  {e.family}/{e.version}  {e.image_id}: {problem}; moved to {moved}")
    lines.append(f"{len(chosen)} entr{'y' if len(chosen) == 1 else 'ies'} checked, {sum(not ln.startswith('ok') for ln in lines)} damaged")
    return lines, whole


def clear(root: Path, filters: Filters, yes: bool, damaged: bool = False) -> list[str]:
    """Delete the chosen results (dry run unless `yes`); never one a live run holds, never anything
    outside `<root>/aiod_cache`. With `damaged`, the copies under `.damaged/` instead."""
    cache_dir = (Path(root).expanduser().resolve() / CACHE_DIR)
    if damaged:
        targets = [(p, f"damaged copy {p.relative_to(cache_dir)}") for p in sorted(cache_dir.glob(f"{DAMAGED_DIR}/*/*/*"))]
    else:
        targets = []
        for e in select(root, filters):
            holder = held_by(e)
            if holder is not None:
                targets.append((None, f"kept     {e.key[:12]}  {e.family}/{e.version}  {e.image_id}: held by {claims.describe(holder)}"))
            else:
                targets.append((e.path, f"{e.key[:12]}  {e.family}/{e.version}  {e.image_id}  {human(folder_size(e.path))}"))
    lines = []
    for path, text in targets:
        if path is None:
            lines.append(text)
            continue
        path = Path(path)
        if path.is_symlink() or not path.resolve().is_relative_to(cache_dir) or path.resolve() == cache_dir:
            lines.append(f"kept     {path}: not a folder inside {cache_dir}")
            continue
        if yes:
            _remove(path)
        lines.append(f"{'deleted' if yes else 'would delete':<8} {text}")
    n = sum(not ln.startswith("kept") for ln in lines)
    lines.append(f"{n} deleted" if yes else f"{n} would be deleted; run again with --yes to delete")
    return lines


def _remove(path: Path) -> None:
    """Rename out of the key's place first (a reader sees the entry whole or absent), then delete."""
    doomed = path.parent / f".tmp-delete-{path.name}-{uuid.uuid4().hex}"
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed)
