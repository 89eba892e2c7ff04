"""Model requests and family adapters.

A request (model, version, task, parameter overrides) is checked against the registry
(`aiod.registry`) before any image is touched and becomes a spec: the family, its adapter, the
version, the task, every parameter typed, the axes the version takes and where its artifact is.

An adapter module `aiod.models.<adapter>` runs one family (the manifest's `adapter`, by default
the family name). It imports its deep-learning library inside its functions, never at module
level, and provides:
    NAME: str
    BYTES_PER_VOXEL: float          measured peak host memory per voxel of a substack
    RUNTIME_BYTES: float            measured host memory a task holds before any substack
                                    (interpreter, libraries; the planner adds the artifact's size
                                    for the loaded weights): bench/task_memory.py
    GPU_BYTES_PER_VOXEL: float      the same for GPU memory (0 for CPU-only families)
    CPU_SECONDS_PER_MEGAVOXEL: float  optional: measured CPU time of segment() per million voxels;
                                    `--batch auto` keeps a task's estimated work under
                                    aiod.batches.AUTO_SECONDS with it (without it: voxels only)
    min_halo(artifact, config, params) -> int
                                    the least overlap (pixels) that keeps results local; reads
                                    at most small files of the artifact, never loads the model
    min_halo_z(artifact, config, params) -> int
                                    optional: the least overlap along a volume's Z where it is
                                    less (a network that sees one plane at a time); without it,
                                    min_halo. `halo_floor` gives both per axis
    prepare(image, channel, params) -> dict
                                    image-wide values computed once at plan time from a bounded
                                    sample (thresholds, normalisation), identical for every substack
    align(artifact, config, params) -> int | tuple[int, ...]
                                    the step (one, or per spatial axis) that every box start must
                                    be a multiple of for the network to see the same pixel grid in
                                    every box: its total stride (1 = pixel-wise); small files only
    load(artifact, config, params) -> model
                                    the model, from the local verified artifact (None: no artifact)
    segment(model, array, params, prepared, spacing, origin=None) -> (labels, scores | None)
                                    uint32 instance labels of one substack (0 = background) and
                                    per-object scores where the model has them; `origin` is the
                                    box's first pixel in the image (None: the array is the whole
                                    image), for families that lay their resize and tiles on the
                                    image's grid (models/anchored.py)
`params` is a namespace with one attribute per manifest parameter; `config` is the chosen
location's `config` mapping.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

from ..errors import ModelError
from ..registry import Manifest, did_you_mean, load_registry


def get_adapter(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise ModelError(f"no adapter '{name}' in aiod.models (a family's manifest names its adapter; see docs/adding-a-model.md)") from None


def halo_floor(adapter, artifact, config: dict, params, spatial_axes: str) -> tuple[int, ...]:
    """The adapter's least overlap per spatial axis: min_halo, and min_halo_z along Z where the
    adapter has one."""
    xy = int(adapter.min_halo(artifact, config, params))
    z = int(getattr(adapter, "min_halo_z", adapter.min_halo)(artifact, config, params))
    return tuple(z if axis == "Z" else xy for axis in spatial_axes)


def params_namespace(spec: dict) -> types.SimpleNamespace:
    return types.SimpleNamespace(**spec["params"])


def resolve(model: str, version: str | None, task: str | None, overrides: dict[str, Any],
            registry_dirs=(), source: str = "model_params") -> dict:
    """Check a model request against the registry and return its spec."""
    families = load_registry(registry_dirs)
    manifest = _pick(families, model, "model", "")
    version = version or next(iter(manifest.versions))
    entry = _pick(manifest.versions, version, "version", f" of model '{model}'")
    task = task or next(iter(entry.tasks))
    chosen = _pick(entry.tasks, task, "task", f" of {model}/{version}")
    params = manifest.parameters_of(version)
    for key, value in overrides.items():
        if key not in manifest.parameters:
            raise ModelError(f"{source}: unknown parameter '{key}' for {model}/{version}{did_you_mean(key, manifest.parameters)}; "
                             f"parameters: {', '.join(manifest.parameters)}")
        try:
            params[key] = manifest.parameters[key].check(value)
        except ValueError as exc:
            raise ModelError(f"{source}: parameter '{key}' of {model}/{version}: {exc}") from None
    if chosen.locations and not any(loc.visible() for loc in chosen.locations):
        raise ModelError(f"{model}/{version}/{task}: none of its artifact locations is readable by you: "
                         + "; ".join(loc.where for loc in chosen.locations))
    return {
        "family": model, "adapter": manifest.adapter or model, "version": version, "task": task,
        "params": params, "channel_params": [n for n, p in manifest.parameters.items() if p.channel],
        "axes": entry.axes.model_dump(),
        "locations": [loc.model_dump(exclude_none=True) for loc in chosen.locations],
    }


def _pick(choices: dict, name: str, kind: str, owner: str):
    if name not in choices:
        raise ModelError(f"unknown {kind} '{name}'{owner}{did_you_mean(name, choices)}; {kind}s: {', '.join(choices)}")
    return choices[name]


def visible(families: dict[str, Manifest]) -> dict[str, dict[str, list[str]]]:
    """family -> version -> the tasks the current user can run (a filepath-only task is
    visible only to users who can read one of its files)."""
    out: dict[str, dict[str, list[str]]] = {}
    for name, manifest in families.items():
        for vname, version in manifest.versions.items():
            tasks = [t for t, task in version.tasks.items() if not task.locations or any(loc.visible() for loc in task.locations)]
            if tasks:
                out.setdefault(name, {})[vname] = tasks
    return out
