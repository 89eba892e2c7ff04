"""The widget's settings as a project file: `<root_dir>/project_configs/<name>.yaml`.

A project file is plain YAML a person can read and edit:

    format: napari-aiod-project/1
    images: [/data/field_1.tif]
    models:                       # the models to compare (--models); [] : the model below alone
    - {model: classical, version: nuclei, task: nuclei, params: {}}
    - {model: classical, version: nuclei, task: nuclei, params: {sigma: 2.5}}
    model: classical
    version: nuclei
    task: nuclei
    params: {sigma: 1.0, threshold: otsu, ...}
    num_substacks: '2'
    overlap: '24'
    substack_memory: 6 GB
    fingerprint: full
    profile: local
    outdir: /data/results
    root_dir: /lab/aiod
    save_tiff: false
    publish_image: false
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

FORMAT = "napari-aiod-project/1"
FOLDER = "project_configs"
KEYS = ("images", "models", "model", "version", "task", "params", "num_substacks", "overlap", "substack_memory",
        "fingerprint", "profile", "outdir", "root_dir", "save_tiff", "publish_image")


class ProjectFileError(ValueError):
    pass


def project_path(root_dir: str | Path, name: str) -> Path:
    """`<root_dir>/project_configs/<name>.yaml`; a name is letters, digits, '.', '_', '-'."""
    name = name.removesuffix(".yaml")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ProjectFileError(f"project name '{name}': use letters, digits, '.', '_', '-'")
    return Path(root_dir).expanduser() / FOLDER / f"{name}.yaml"


def save(path: Path, settings: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, **{k: settings[k] for k in KEYS if k in settings}}
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
    return path


def load(path: Path) -> dict:
    """The settings of a project file; ProjectFileError naming the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProjectFileError(f"{path}: cannot read the project file ({exc})".replace("\n", " ")) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ProjectFileError(f"{path}: not a napari-aiod project file (expected 'format: {FORMAT}')")
    unknown = sorted(set(data) - set(KEYS) - {"format"})
    if unknown:
        raise ProjectFileError(f"{path}: unknown field(s) {', '.join(unknown)}; fields: {', '.join(KEYS)}")
    if not isinstance(data.get("images", []), list):
        raise ProjectFileError(f"{path}: images: expected a list of image paths")
    models = data.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, dict) and "model" in m for m in models):
        raise ProjectFileError(f"{path}: models: expected a list of {{model, version, task, params}} mappings")
    if not isinstance(data.get("params", {}), dict):
        raise ProjectFileError(f"{path}: params: expected a mapping of parameter names to values")
    return {k: data[k] for k in KEYS if k in data}


def saved(root_dir: str | Path) -> list[Path]:
    folder = Path(root_dir).expanduser() / FOLDER
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []
