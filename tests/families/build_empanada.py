"""Build a random-weight MitoNet (TorchScript) with its config, in the empanada environment.

    python build_empanada.py OUT_DIR

The architecture is MitoNet's: empanada-napari's `training/pdl_model.yaml` (Panoptic-DeepLab,
ResNet-50, PointRend) built as `QuantizablePanopticDeepLabPR` with one class, fused and scripted
with torch.jit exactly as empanada-napari exports a trained model (`_train.py`). Writes
OUT_DIR/MitoNet_v1.pth and prints one JSON line {family, version, task, artifact, config}, the
config being the registry location's: MitoNet_v1's (norms, padding_factor, classes).

Weights: seeded random. empanada initialises its decoders and heads with std 0.001, which makes
the untrained outputs constant (no objects ever); those layers are re-drawn with unit-gain
Kaiming normals so that the random network gives image-dependent semantic, centre and offset maps,
and a test sees objects. Its output means nothing.
"""

import json
import os
import sys
from pathlib import Path

import yaml

from aiod.models import runtime

CONFIG = {"norms": {"mean": 0.57571, "std": 0.12765}, "padding_factor": 16, "thing_list": [1], "labels": [1],
          "class_names": {"1": "mito"}}


def main(out: Path) -> dict:
    runtime.keep_libraries_out_of_home(".")  # napari (imported by empanada_napari) writes caches
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for news on import
    import empanada_napari
    import torch
    from empanada.models.quantization.panoptic_deeplab import QuantizablePanopticDeepLabPR

    torch.manual_seed(0)
    arch = yaml.safe_load((Path(empanada_napari.__file__).parent / "training" / "pdl_model.yaml").read_text())
    arch.pop("arch")
    model = QuantizablePanopticDeepLabPR(**{**arch, "num_classes": 1}, quantize=False)
    with torch.no_grad():
        for name, layer in model.named_modules():
            if isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and not name.startswith("encoder"):
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
    model.eval()
    model.fuse_model()
    path = out / "MitoNet_v1.pth"
    torch.jit.save(torch.jit.script(model), str(path))
    return {"family": "empanada", "version": "MitoNet_v1", "task": "mito", "artifact": str(path), "config": CONFIG}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]).resolve())))
