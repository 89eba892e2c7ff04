"""The model registry: which models exist, where their weights are, with which parameters they run.

One manifest per family (`model_registry/manifests/<family>.yaml`), checked against the pydantic
models below. A lab adds its own registry directories (`--registry_dir`); a family defined there
replaces the built-in family of the same name. Every error names the file, the path to the field
and what was expected; unknown fields are errors, with a "did you mean" when one is close.
"""

from __future__ import annotations

import difflib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from .errors import ModelError

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "model_registry"

# What a model is for. One table: a contributor adds a task here and nowhere else.
TASKS: dict[str, str] = {
    "nuclei": "cell nuclei",
    "cyto": "whole cells (cytoplasm)",
    "mito": "mitochondria (electron microscopy)",
    "er": "endoplasmic reticulum",
    "ne": "nuclei and nuclear envelope (electron microscopy)",
    "drop": "lipid droplets",
    "boundaries": "cell boundaries (membranes)",
    "everything": "every distinct object, without prompts",
}


class ManifestError(ModelError):
    """A manifest that does not follow the schema."""


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class Location(_Strict):
    """Where one artifact can be had. The first accessible location of a task wins."""

    url: str | None = pydantic.Field(None, pattern=r"^https?://", description="http(s) URL to download")
    filepath: str | None = pydantic.Field(None, description="a file or directory on a (shared) disk")
    sha256: str | None = pydantic.Field(None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the file, checked after fetching")
    unpack: Literal["zip"] | None = pydantic.Field(None, description="the artifact is an archive; the model gets its unpacked directory")
    config: dict[str, Any] = pydantic.Field(default_factory=dict, description="settings passed to the family's adapter with the artifact")

    @pydantic.model_validator(mode="after")
    def _one_source(self):
        if (self.url is None) == (self.filepath is None):
            raise ValueError("give exactly one of 'url' or 'filepath'")
        return self

    @property
    def where(self) -> str:
        return self.url or self.filepath

    def visible(self) -> bool:
        """A URL is visible to everyone; a filepath only to users who can read it."""
        if self.url:
            return True
        path = os.path.expanduser(self.filepath)
        return os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0))


class Parameter(_Strict):
    type: Literal["int", "float", "bool", "str"]
    default: Any = pydantic.Field(None, description="null: unset, the adapter decides (e.g. the model's own thresholds)")
    help: str
    min: float | None = None
    max: float | None = None
    choices: list[str] | None = pydantic.Field(None, description="the allowed values of a 'str' parameter")
    keywords: list[str] = pydantic.Field(default_factory=list, description="words a numeric parameter also accepts, e.g. 'auto'")
    channel: bool = pydantic.Field(False, description="the value is an image channel (0-based), checked against each image")

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.choices is not None and self.type != "str":
            raise ValueError("'choices' is for parameters of type 'str'; use 'min'/'max' for numbers")
        if self.channel and self.type != "int":
            raise ValueError("a channel parameter has type 'int'")
        if self.default is not None:
            self.check(self.default)
        return self

    def check(self, value):
        """The value, typed; ValueError saying what was expected otherwise."""
        if value is None:
            if self.default is None:
                return None
            raise ValueError(f"expected {self.describe()}, got null")
        if isinstance(value, str) and value in self.keywords:
            return value
        given = value
        if self.type == "bool":
            ok = isinstance(value, bool)
        elif self.type == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str) and (self.choices is None or value in self.choices)
        if not ok:
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        if self.min is not None and value < self.min:
            raise ValueError(f"{given!r} is below the minimum {self.min:g}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{given!r} is above the maximum {self.max:g}")
        if self.channel and value < 0:
            raise ValueError(f"{value!r} is not a channel: channels are numbered from 0")
        return value

    def describe(self) -> str:
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[self.type]
        if self.keywords:
            text += " or " + " or ".join(repr(k) for k in self.keywords)
        return text


class Task(_Strict):
    locations: list[Location] = pydantic.Field(default_factory=list, description="empty: the family needs no artifact")


class Axes(_Strict):
    ndim: list[Literal[2, 3]] = pydantic.Field(description="spatial dimensions the version segments natively")
    channels: list[pydantic.PositiveInt] = pydantic.Field([1], description="numbers of input channels it accepts")


class Metadata(_Strict):
    authors: list[str]
    citation: str
    doi: str | None = None
    licence: str
    url: str | None = None
    model_card: str


class Trained(_Strict):
    """How a version made by `aiod finetune` was trained (docs/finetune.md)."""

    parent: str = pydantic.Field(description="the version its training started from")
    parent_sha256: str | None = pydantic.Field(None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the parent's weights")
    data: str = pydantic.Field(description="fingerprint of the training data: every image and ground truth, with its split")
    split: dict[str, list[str]] = pydantic.Field(description="split -> image ids (train, valid, test)")
    split_from: Literal["samplesheet", "image id"] = pydantic.Field(description="where the split came from")
    params: dict[str, Any] = pydantic.Field(description="the training parameters, every one")
    epochs_done: int
    seconds: float = pydantic.Field(description="training time, wall clock, over every attempt")
    metrics: dict[str, dict[str, Any]] = pydantic.Field(description="'before' and 'after': pooled scores on the test images")
    date: str = pydantic.Field(description="when it was registered (ISO 8601, UTC)")


class Version(_Strict):
    tasks: dict[str, Task] = pydantic.Field(min_length=1, description="task name (see TASKS) -> where its artifact is; the first task is the default")
    defaults: dict[str, Any] = pydantic.Field(default_factory=dict, description="this version's defaults for the family's parameters")
    axes: Axes
    metadata: Metadata
    trained: Trained | None = pydantic.Field(None, description="set for versions made by `aiod finetune`")

    @pydantic.field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks):
        for name in tasks:
            if name not in TASKS:
                raise ValueError(f"unknown task '{name}'{did_you_mean(name, TASKS)}; tasks: {', '.join(TASKS)}")
        return tasks


class Manifest(_Strict):
    family: str = pydantic.Field(pattern=r"^[a-z][a-z0-9_]*$", description="the name users give to --model")
    description: str
    adapter: str | None = pydantic.Field(None, pattern=r"^[a-z][a-z0-9_]*$", description="the adapter module in aiod.models that runs it (default: the family name)")
    parameters: dict[str, Parameter] = pydantic.Field(default_factory=dict)
    training: dict[str, Parameter] = pydantic.Field(default_factory=dict, description="the training parameters of `aiod finetune`; empty: the family cannot be fine-tuned")
    versions: dict[str, Version] = pydantic.Field(min_length=1, description="the first version is the default")

    @pydantic.model_validator(mode="after")
    def _defaults_are_parameters(self):
        for vname, version in self.versions.items():
            for name, value in version.defaults.items():
                if name not in self.parameters:
                    raise ValueError(f"versions.{vname}.defaults: '{name}' is not a parameter of this family"
                                     f"{did_you_mean(name, self.parameters)}")
                try:
                    self.parameters[name].check(value)
                except ValueError as exc:
                    raise ValueError(f"versions.{vname}.defaults.{name}: {exc}") from None
        return self

    def parameters_of(self, version: str) -> dict[str, Any]:
        """Every parameter's default for one version."""
        return {name: self.versions[version].defaults.get(name, p.default) for name, p in self.parameters.items()}


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---- loading ---------------------------------------------------------------------------------

def manifest_files(directory: Path) -> list[Path]:
    """The manifests of one registry directory (its `manifests/` folder, or the folder itself)."""
    directory = Path(directory)
    folder = directory / "manifests" if (directory / "manifests").is_dir() else directory
    if not folder.is_dir():
        raise ManifestError(f"{directory}: registry directory not found")
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_manifest(path: Path) -> Manifest:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping with 'family', 'description', 'parameters', 'versions'")
    try:
        manifest = Manifest.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ManifestError("\n".join(f"{path}: {line}" for line in _explain(exc))) from None
    if path.stem != manifest.family:
        raise ManifestError(f"{path}: family: '{manifest.family}' must match the file name ('{path.stem}.yaml')")
    return manifest


def load_registry(extra_dirs: list[Path] | tuple = ()) -> dict[str, Manifest]:
    """Family name -> manifest: the built-in registry, then each extra directory in order (a
    family defined again replaces the earlier one)."""
    families: dict[str, Manifest] = {}
    for directory in [BUILTIN_DIR, *map(Path, extra_dirs)]:
        for path in manifest_files(directory):
            manifest = load_manifest(path)
            families[manifest.family] = manifest
    return families


def validate(paths: list[Path]) -> list[str]:
    """Every problem in the given manifests or registry directories, one line each."""
    problems = []
    for target in map(Path, paths):
        try:
            files = manifest_files(target) if target.is_dir() else [target]
        except ManifestError as exc:
            problems.append(str(exc))
            continue
        for path in files:
            try:
                load_manifest(path)
            except ManifestError as exc:
                problems.extend(str(exc).splitlines())
    return problems


def _explain(exc: pydantic.ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = _dotted(loc) or "(top level)"
        if not loc:  # a check across fields: its message names the path itself
            lines.append(err["msg"].removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            fields = _fields_at(Manifest, loc[:-1])
            lines.append(f"{_dotted(loc[:-1]) or '(top level)'}: '{loc[-1]}' is not a field{did_you_mean(loc[-1], fields)}; fields: {', '.join(fields)}")
        elif err["type"] == "missing":
            lines.append(f"{where}: required field missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = f" (got {err['input']!r})" if err["type"] not in ("value_error",) and not isinstance(err["input"], dict) else ""
            lines.append(f"{where}: {msg}{got}")
    return lines


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_at(model: type[pydantic.BaseModel], loc: tuple) -> list[str]:
    """The field names of the model found by following `loc` from `model`."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            annotation = annotation.model_fields[part].annotation
        elif typing.get_origin(annotation) in (dict, list):
            annotation = typing.get_args(annotation)[-1]
    annotation = _unwrap(annotation)
    return list(annotation.model_fields) if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel) else []


def _unwrap(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def json_schema() -> str:
    """The JSON schema of a manifest, as committed in model_registry/manifest.schema.json."""
    schema = Manifest.model_json_schema()
    schema["$comment"] = "Generated from aiod.registry.Manifest by `bin/aiod models schema --write`; do not edit."
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
