"""Writing a fine-tuned version into a lab's registry directory (docs/finetune.md).

The directory gets the weights, `weights/<family>/<name>/model` (a file, or a model folder such as
StarDist's, whose sha256 is that of its files as aiod.artifacts computes it), and the family's manifest,
`manifests/<family>.yaml` (or `<family>.yaml` where the directory keeps its manifests at its top):
the lab's own manifest of the family when it has one, else a copy of the built-in one (a family
in a registry directory replaces the built-in family of that name, so the copy keeps every
published version), with the new version added. The version's artifact is a filepath location
with the weights' sha256, so only those who can read the weights see the version. Either all of
it is written or none: the manifest is checked, written beside its place and renamed into it;
on any failure what was written is removed.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
from pathlib import Path

import yaml

from . import registry
from .artifacts import tree_sha256  # the digest a fetch of the folder checks
from .errors import ModelError
from .training import trainer as find_trainer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_target(registry_dir: Path, family: str) -> tuple[Path, Path]:
    """(where the family's manifest goes, where its current text comes from)."""
    registry_dir = Path(registry_dir)
    top_level = registry_dir.is_dir() and any(p.suffix in (".yaml", ".yml") for p in registry_dir.iterdir())
    folder = registry_dir if top_level and not (registry_dir / "manifests").is_dir() else registry_dir / "manifests"
    for suffix in (".yaml", ".yml"):
        if (folder / f"{family}{suffix}").is_file():
            return folder / f"{family}{suffix}", folder / f"{family}{suffix}"
    return folder / f"{family}.yaml", registry.BUILTIN_DIR / "manifests" / f"{family}.yaml"


def version_entry(manifest: registry.Manifest, parent: str, spec: dict, record: dict, weights: Path, sha: str) -> dict:
    old = manifest.versions[parent]
    kept_in_weights = getattr(find_trainer(manifest.adapter or manifest.family), "CONFIG_IN_WEIGHTS", ())
    config = {k: v for k, v in ((spec.get("artifact") or {}).get("config") or {}).items() if k not in kept_in_weights}
    location = {"filepath": str(weights), "sha256": sha, **({"config": config} if config else {})}
    before, after = record["metrics"]["before"]["pooled"], record["metrics"]["after"]["pooled"]
    trained = {"parent": parent, "parent_sha256": record["parent_sha256"], "data": record["data"], "split": record["split"],
               "split_from": record["split_from"], "params": record["params"], "epochs_done": record["epochs_done"],
               "seconds": record["seconds"], "metrics": {"before": before, "after": after},
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    card = (f"{manifest.family}/{parent} fine-tuned with `aiod finetune` on {len(record['split']['train'])} training "
            f"image(s) for {record['epochs_done']} epochs; on {len(record['split']['test'])} test image(s) F1@0.5 "
            f"went from {before['f1']:.3f} to {after['f1']:.3f}. The version it started from:\n" + old.metadata.model_card)
    metadata = {**old.metadata.model_dump(exclude_none=True), "model_card": card}
    return {"tasks": {spec["task"]: {"locations": [location]}}, "defaults": dict(old.defaults),
            "axes": old.axes.model_dump(), "metadata": metadata, "trained": trained}


def register(registry_dir: Path, manifest: registry.Manifest, parent: str, spec: dict, record: dict, weights: Path) -> str:
    """Write the new version `record['name']`; returns the weights' sha256."""
    registry_dir = Path(registry_dir).resolve()
    name, family = record["name"], manifest.family
    created = [p for p in (registry_dir, registry_dir / "manifests", registry_dir / "weights") if not p.exists()]
    target, source = manifest_target(registry_dir, family)
    folder = registry_dir / "weights" / family / name
    if folder.exists():
        raise ModelError(f"{folder}: already exists; choose another name (nothing registered)")
    partial = target.with_name(f".{target.name}.partial")
    written = []
    try:
        folder.mkdir(parents=True)
        written.append(folder)
        stored = folder / "model"
        if Path(weights).is_dir():  # a model folder (StarDist): its sha256 as a fetched folder's
            shutil.copytree(weights, stored)
            sha = tree_sha256(stored)
        else:
            shutil.copyfile(weights, stored)
            sha = _sha256(stored)
        raw = yaml.safe_load(source.read_text())
        if name in raw.get("versions", {}):
            raise ModelError(f"{family}/{name} already exists in {source} (nothing registered)")
        raw["versions"][name] = version_entry(manifest, parent, spec, record, stored, sha)
        try:
            registry.Manifest.model_validate(raw)
        except Exception as exc:  # pydantic's message, one line: our own entry would be at fault
            raise ModelError(f"{target}: the new version does not validate: {exc}".replace("\n", " ")) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        written.append(partial)
        os.replace(partial, target)
        return sha
    except BaseException:
        for path in reversed(written):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
            shutil.rmtree(path, ignore_errors=True)
        _prune(registry_dir / "weights" / family, registry_dir)
        raise


def _prune(path: Path, stop: Path) -> None:
    """Remove empty folders from `path` up to (not including) `stop`."""
    while path != stop and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent
