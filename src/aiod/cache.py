"""The shared, hash-keyed result cache under root_dir (layout: docs/cache.md).

A result is a folder `aiod_cache/<family>/<version>_masks/<key>/` holding `labels.ome.zarr` and
`manifest.json`. It appears there only complete: it is copied into a hidden temporary folder
beside its final place, the size and checksum of every file it holds are written into its
manifest, and it is renamed in one step, so a reader sees all of it or nothing, and of two runs
finishing the same key at once, one wins and the other's copy is dropped.

An entry is trusted only when its manifest lists every file with the size it has (a stat per
file), and, when asked (`verify`), the checksum too. An entry that fails is damaged: it is moved
aside under `aiod_cache/.damaged/` (never deleted) with a warning, and the key is a miss again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import time
import uuid
from pathlib import Path

CACHE_DIR = "aiod_cache"
DAMAGED_DIR = ".damaged"
MANIFEST = "manifest.json"
CHECKSUM = "blake2b"
BLOCK = 1 << 22
STALE_TMP_SECONDS = 24 * 3600

README = """\
# AIoD root

Written by the AIoD pipeline. Safe to share between the users of a lab (one `--root_dir`).

- `aiod_cache/<family>/checkpoints/`: model artifacts, verified by sha256, fetched once.
- `aiod_cache/<family>/<version>_masks/<key>/`: one finished result (`labels.ome.zarr`,
  `manifest.json` saying how it was made, with the size and checksum of every file). `<key>` is
  a hash of everything that can change the result (image content, model, version, parameters,
  substack plan, merge settings, result format). Results appear only complete; a `.tmp-*` folder
  is an unfinished copy, safe to delete. Deleting a result folder makes the next run compute it
  again. `aiod cache ls|info|verify|clear --root-dir <this folder>` lists, checks and cleans.
- `aiod_cache/.damaged/`: entries found damaged (a file missing, short or changed), moved aside
  for inspection and recomputed; safe to delete.
- `aiod_cache/.fingerprints/`: each image's content hash, remembered until the file changes (so
  an unchanged image is not read again); safe to delete.
- `aiod_cache/.claims/`: which run is computing which result right now; a run waits for another
  run's claim instead of computing the same result twice.
- `conda/`: per-family environments, shared.
- `configs/`, `project_configs/`: resolved model configs and saved run settings.
- `work/`: Nextflow's work directory (`-resume` uses it); safe to delete when no run is active.
"""


def share_with_group(root_dir: str | Path) -> bool:
    """When root_dir is group-writable (a lab's shared folder), let this process create what the
    group can write too (umask without group write): a second user of the lab then reuses and
    extends the cache. Folders inherit a setgid root_dir's group. True when shared."""
    try:
        shared = bool(Path(root_dir).expanduser().stat().st_mode & stat.S_IWGRP)
    except OSError:
        return False
    if shared:
        os.umask(os.umask(0) & ~0o070)
    return shared


def _open_to_group(folder: Path) -> None:
    """g+rw on every file, g+rwxs on every folder below (copies keep their sources' modes)."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode | (0o2070 if path.is_dir() else 0o060))


def cache_key(parts: dict) -> str:
    """Hex sha256 of the canonical JSON of everything that can change a result."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def warn(message: str) -> None:
    print(f"AIOD WARNING: {message}", file=sys.stderr, flush=True)


def file_checksum(path: Path) -> str:
    digest = hashlib.blake2b()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def entry_problem(path: Path, verify: bool = False) -> str | None:
    """What is wrong with a cache entry folder, in a few words, or None when it is whole.

    Whole means: `manifest.json` parses and lists files, and every listed file is there with its
    size (one stat each); with `verify`, every file's checksum matches too (reads every byte)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return f"{MANIFEST} is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{MANIFEST} cannot be read ({exc.__class__.__name__}; truncated?)"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST} lists no files with checksums"
    for rel, want in sorted(files.items()):
        try:
            size = (path / rel).stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        except OSError as exc:
            return f"{rel} cannot be read ({exc.strerror})"
        if size != want.get("size"):
            return f"{rel} has {size} bytes, the manifest says {want.get('size')}"
    if verify:
        for rel, want in sorted(files.items()):
            try:
                if file_checksum(path / rel) != want.get(CHECKSUM):
                    return f"{rel} does not match its {CHECKSUM} checksum"
            except OSError as exc:
                return f"{rel} cannot be read ({exc.strerror})"
    return None


class Cache:
    def __init__(self, root_dir: str | Path):
        self.root = Path(root_dir).expanduser().resolve()
        self.dir = self.root / CACHE_DIR
        self.shared = share_with_group(self.root)

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

    def lookup(self, family: str, version: str, key: str, verify: bool = False) -> Path | None:
        """The finished, whole result for this key, or None. A damaged entry is moved aside
        (with a warning) and is a miss, so that the result is computed and committed again."""
        path = self.entry(family, version, key)
        if not path.exists():
            return None
        problem = entry_problem(path, verify)
        if problem is None:
            return path
        self.set_aside(path, problem)
        return None

    def set_aside(self, path: Path, problem: str) -> Path | None:
        """Move a damaged entry to `.damaged/<family>/<version>/<key>-<time>`; warn once, naming it."""
        version = path.parent.name.removesuffix("_masks")
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:6]}"
        target = self.dir / DAMAGED_DIR / path.parent.parent.name / version / f"{path.name}-{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None  # another run moved it first
        warn(f"damaged cache entry {path}: {problem}; moved to {target}, the result will be computed again")
        return target

    def commit(self, result: Path, family: str, version: str, key: str) -> Path:
        """Copy a finished result folder into the cache atomically, recording the size and
        checksum of every file in its manifest; return its cache path."""
        final = self.entry(family, version, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp(final.parent)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex}"
        try:
            files = _copy_with_checksums(Path(result), tmp)
            manifest_path = tmp / MANIFEST
            manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
            manifest["files"] = files
            manifest_path.write_text(json.dumps(manifest, indent=2))
            if self.shared:
                _open_to_group(tmp)
            for _attempt in range(3):
                try:
                    os.rename(tmp, final)
                    break
                except OSError:
                    if self.lookup(family, version, key) is not None:
                        break  # another run committed the same key first: its result is the same, keep it
                    # a damaged entry was in the way: lookup moved it aside; try again
            else:
                raise OSError(f"{final}: cannot commit the result (the place stays taken)")
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


def _copy_with_checksums(src: Path, dst: Path) -> dict:
    """Copy a folder (symlinks followed), reading each file once to copy and checksum it."""
    files: dict[str, dict] = {}

    def copy(source: str, target: str) -> str:
        digest, size = hashlib.blake2b(), 0
        with open(source, "rb") as fi, open(target, "wb") as fo:
            while block := fi.read(BLOCK):
                digest.update(block)
                fo.write(block)
                size += len(block)
        rel = Path(target).relative_to(dst).as_posix()
        if rel != MANIFEST:
            files[rel] = {"size": size, CHECKSUM: digest.hexdigest()}
        return target

    shutil.copytree(src, dst, symlinks=False, copy_function=copy)
    return dict(sorted(files.items()))
