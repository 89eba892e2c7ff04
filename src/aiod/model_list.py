"""The models of one run (`--models`): parsed, resolved against the registry, and labelled.

A run takes one model (`--model X [--model_version V --task T --model_params F]`) or several:

    --models 'classical, stardist:2D_versatile_fluo, cellpose:nuclei:{diameter: 17}'
    --models models.yaml      # a list of {model, version, task, params, label} mappings

An entry of the string form is `family[:version[:task]][:{parameter overrides}]`, the overrides
a YAML flow mapping; entries are separated by commas outside braces. Each entry is resolved
like `--model` (models.resolve), so an unknown family, version, task or parameter is refused
naming the entry. Two entries that resolve to the same model, task and parameters are refused:
they would compute the same result twice.

Every model gets a label, the name of its results: `<family>_<version>`, or the entry's own
`label`; entries that share a family and version are told apart by their task, then by a digest
of their parameters. A run of several models publishes under `<outdir>/<label>/`; a run of one
keeps `<outdir>/` (docs/output.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import yaml

from .errors import ModelError

ENTRY_KEYS = ("model", "version", "task", "params", "label")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def split_entries(text: str) -> list[str]:
    """The comma-separated entries of a --models string (commas inside braces belong to an entry)."""
    entries, depth, current = [], 0, []
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            entries.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    entries.append("".join(current).strip())
    return entries


def parse_entry(text: str, source: str) -> dict:
    """`family[:version[:task]][:{overrides}]` -> {model, version, task, params}."""
    head, brace, rest = text.partition("{")
    params = {}
    if brace:
        if not head.endswith(":"):
            raise ModelError(f"{source}: entry '{text}': parameters come last, after a colon: family[:version[:task]]:{{name: value}}")
        head = head[:-1]
        try:
            params = yaml.safe_load("{" + rest)
        except yaml.YAMLError as exc:
            raise ModelError(f"{source}: entry '{text}': cannot read its parameters ({str(exc).splitlines()[0]})") from None
        if not isinstance(params, dict):
            raise ModelError(f"{source}: entry '{text}': expected parameters as {{name: value, ...}}")
    parts = [p.strip() for p in head.split(":")]
    if not parts[0] or len(parts) > 3 or any(not p for p in parts[1:]):
        raise ModelError(f"{source}: entry '{text}': expected family[:version[:task]][:{{name: value}}], "
                         "e.g. 'cellpose:nuclei:{diameter: 17}'")
    return {"model": parts[0], "version": parts[1] if len(parts) > 1 else None,
            "task": parts[2] if len(parts) > 2 else None, "params": params}


def read_entries(models: str, source: str | None = None) -> list[dict]:
    """The entries of --models: a file of entries (YAML/JSON list) or the string form."""
    source = source or models
    if re.search(r"\.(ya?ml|json)$", models.strip(), re.IGNORECASE):
        path = Path(models.strip())
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"--models {source}: file not found") from None
        except (OSError, yaml.YAMLError) as exc:
            raise ModelError(f"--models {source}: cannot read it ({str(exc).splitlines()[0]})") from None
        if isinstance(data, dict) and "models" in data:
            data = data["models"]
        if not isinstance(data, list) or not data:
            raise ModelError(f"--models {source}: expected a list of entries such as '- {{model: stardist, version: "
                             "2D_versatile_fluo, params: {prob_thresh: 0.5}}'")
        entries = []
        for k, item in enumerate(data, 1):
            where = f"--models {source}: entry {k}"
            if isinstance(item, str):
                item = parse_entry(item, where)
            if not isinstance(item, dict) or "model" not in item:
                raise ModelError(f"{where}: expected a mapping with 'model' (and optionally {', '.join(ENTRY_KEYS[1:])})")
            unknown = sorted(set(item) - set(ENTRY_KEYS))
            if unknown:
                raise ModelError(f"{where}: unknown key '{unknown[0]}'; keys: {', '.join(ENTRY_KEYS)}")
            if not isinstance(item.get("params") or {}, dict):
                raise ModelError(f"{where}: 'params' must be a mapping of parameter names to values")
            entries.append({"model": str(item["model"]), "version": _text(item.get("version")), "task": _text(item.get("task")),
                            "params": item.get("params") or {}, "label": _text(item.get("label"))})
        return entries
    texts = split_entries(models)
    if not any(texts):
        raise ModelError("--models: no model given; e.g. --models 'classical, stardist:2D_versatile_fluo'")
    if any(not t for t in texts):
        raise ModelError(f"--models '{models}': an empty entry (two commas in a row, or one at an end)")
    return [{**parse_entry(t, f"--models entry '{t}'" if len(texts) > 1 else "--models"), "label": None} for t in texts]


def _text(value) -> str | None:
    return None if value is None else str(value)


def params_digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec["params"], sort_keys=True).encode()).hexdigest()[:8]


def resolve_entries(entries: list[dict], registry_dirs=(), source: str = "--models") -> list[dict]:
    """Each entry resolved (models.resolve) and labelled; duplicates refused. Messages name the
    entry when there is a list (`source` --models ...), else `source` alone (--model_params)."""
    from .models import resolve
    specs = []
    for entry in entries:
        name = ":".join(p for p in (entry["model"], entry["version"], entry["task"]) if p)
        where = f"{source} entry '{name}'" if source.startswith("--models") else source
        try:
            spec = resolve(entry["model"], entry["version"], entry["task"], entry["params"], registry_dirs, source=where)
        except ModelError as exc:
            message = str(exc)
            raise ModelError(message if message.startswith(where) or not source.startswith("--models")
                             else f"{where}: {message}") from None
        spec["label"] = entry.get("label")
        spec["entry"] = name
        specs.append(spec)
    seen = {}
    for spec in specs:
        identity = json.dumps([spec["family"], spec["version"], spec["task"], spec["params"]], sort_keys=True)
        if identity in seen:
            raise ModelError(f"{source}: entries '{seen[identity]}' and '{spec['entry']}' are the same model with the same "
                             "task and parameters; remove one")
        seen[identity] = spec["entry"]
    _label(specs, source)
    return specs


def _label(specs: list[dict], source: str) -> None:
    made = [spec for spec in specs if spec["label"] is None]  # an entry's own label is kept as given
    for spec in made:
        spec["label"] = f"{spec['family']}_{spec['version']}"
    for step in ("task", "params"):
        by_label: dict[str, list[dict]] = {}
        for spec in made:
            by_label.setdefault(spec["label"], []).append(spec)
        for same in by_label.values():
            if len(same) > 1 and (step == "params" or len({spec["task"] for spec in same}) > 1):
                for spec in same:
                    spec["label"] += f"_{spec['task']}" if step == "task" else f"-{params_digest(spec)}"
    labels = [spec["label"] for spec in specs]
    for label in labels:
        if not LABEL.match(label):
            raise ModelError(f"{source}: label '{label}': use letters, digits, '.', '_' and '-' only (it names a folder)")
        if labels.count(label) > 1:
            raise ModelError(f"{source}: two entries are labelled '{label}'; give each its own label")
