"""Model families: one small adapter module per family behind the same interface.

An adapter module provides:
    NAME: str                       family name used by --model
    BYTES_PER_VOXEL: float          measured peak memory per voxel of a substack (for `auto`)
    Params: pydantic model          the family's parameters (unknown fields are errors)
    PRESETS: dict[str, dict]        version name -> parameter defaults
    min_halo(params) -> int         the smallest overlap (voxels) that keeps results local
    prepare(image, channel, params) -> dict
                                    image-wide values computed once at plan time, out-of-core
                                    (e.g. a global threshold), identical for every substack
    segment(array, params, prepared, spacing) -> np.ndarray
                                    integer instance labels of one substack (0 = background)
"""

from __future__ import annotations

import difflib
from types import ModuleType
from typing import Any

import pydantic

from ..errors import ModelError
from . import classical

FAMILIES: dict[str, ModuleType] = {classical.NAME: classical}


def get_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ModelError(f"unknown model '{name}'{_did_you_mean(name, FAMILIES)}; available models: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def resolve(model: str, version: str, overrides: dict[str, Any], source: str = "model_params") -> dict:
    """Check a model request and return its spec: family, version and every parameter, typed."""
    family = get_family(model)
    if version not in family.PRESETS:
        raise ModelError(
            f"unknown version '{version}' of model '{model}'{_did_you_mean(version, family.PRESETS)}; "
            f"available versions: {', '.join(family.PRESETS)}"
        )
    fields = family.Params.model_fields
    for key in overrides:
        if key not in fields:
            raise ModelError(
                f"{source}: unknown parameter '{key}' for {model}/{version}{_did_you_mean(key, fields)}; "
                f"parameters: {', '.join(fields)}"
            )
    try:
        params = family.Params(**{**family.PRESETS[version], **overrides})
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ModelError(f"{source}: parameter '{where}' of {model}/{version}: {err['msg']} (got {err.get('input')!r})") from None
    return {"family": model, "version": version, "params": params.model_dump(mode="json")}


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
