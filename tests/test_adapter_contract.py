"""One contract for every model family's adapter, run in the family's own environment on the same
small images (tests/family_artifacts.py: CONTRACT says each family's model, parameters and boxes):
uint32 ids 1..n of the box's shape, determinism, a box labelled with the whole image's
statistics, a volume's slices linked, nothing written into $HOME or the model's folder. What is
truly a family's own (its scores, its modes, its libraries' quirks) stays in its own tests."""

from __future__ import annotations

import pytest

from family_artifacts import (CONTRACT, assert_adapter_contract, box_shape, built_artifact,  # noqa: F401
                              contract_run, trained_artifact)
from family_envs import nuclei_data  # noqa: F401

VOLUME = (4, 96, 96)


@pytest.mark.families
@pytest.mark.parametrize("family", sorted(CONTRACT))
def test_every_adapter_keeps_the_contract(contract_run, family):  # noqa: F811
    spec = CONTRACT[family]
    volume = None if spec["volume"] is False else (box_shape(spec["volume"]) if spec["volume"] else VOLUME)
    assert_adapter_contract(contract_run(family), box_shape(spec["box"]), volume)


def test_the_contract_covers_every_family_of_the_registry():
    from aiod.registry import load_registry

    assert set(CONTRACT) == set(load_registry())
