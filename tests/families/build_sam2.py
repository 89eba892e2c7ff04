"""Build a random-weight SAM 2.1 Hiera-tiny checkpoint, in the sam2 environment.

    python build_sam2.py OUT_DIR

Writes OUT_DIR/sam2.1_hiera_tiny.pt in the format of the published checkpoints and of
`build_sam2(config, ckpt_path)`: `{"model": state_dict}`; the architecture is the installed sam2
package's own `configs/sam2.1/sam2.1_hiera_t.yaml` (seeded random initialisation, nothing
downloaded). Prints one JSON line {family, version, task, artifact, config}.
"""

import json
import sys
from pathlib import Path

from aiod.models import runtime

MODEL_CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def main(out: Path) -> dict:
    runtime.keep_libraries_out_of_home(".")
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(MODEL_CFG, None, device="cpu")
    path = out / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return {"family": "sam2", "version": "hiera_tiny", "task": "everything", "artifact": str(path),
            "config": {"model_cfg": MODEL_CFG}}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]).resolve())))
