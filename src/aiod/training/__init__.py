"""Trainers of the families that can be fine-tuned (`aiod finetune`, docs/finetune.md).

A family can be fine-tuned when its manifest declares `training` parameters and a module
`aiod.training.<adapter>` provides:
    NDIMS: tuple[int, ...]          the spatial dimensions of the images it trains on
    check(params) -> None           raise ValueError for a combination the ranges cannot say
    train(artifact, config, seg_params, train, valid, params, folder) -> dict
                                    train from the artifact's weights on patches of the `train`
                                    images (aiod.finetune.Item), writing a checkpoint after every
                                    epoch to `folder` and resuming from the last one found there;
                                    returns {"weights": Path (a file, or a model folder that
                                    the adapter loads), "epochs_done", "seconds",
                                    "curves": {"epoch", "train_loss", "valid_loss"}}
    CONFIG_IN_WEIGHTS: tuple[str, ...] (optional) keys of the location's `config` that the saved
                                    weights make unneeded
The trainers import their deep-learning library inside their functions, like the adapters.
Trainers: `cellpose` (cellpose 3's training step), `stardist` (StarDist2D.train, 2D models).
"""

from __future__ import annotations

import importlib
import types


def trainer(adapter: str) -> types.ModuleType | None:
    """The trainer module of an adapter, or None when it has none."""
    try:
        return importlib.import_module(f"{__name__}.{adapter}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{adapter}":
            raise
        return None
