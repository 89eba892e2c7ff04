"""Peak memory of the classical family per voxel of a substack: the figure behind
`classical.BYTES_PER_VOXEL`, which `--num_substacks auto` uses to size substacks.

    .venv/bin/python bench/classical_memory.py

Measures segment() with tracemalloc (numpy's allocations are traced) on 2D and 3D synthetic
nuclei of two sizes each, and compares the worst bytes/voxel with the stored constant.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from aiod import synthetic  # noqa: E402
from aiod.models import classical, params_namespace, resolve  # noqa: E402

CASES = [((1024, 1024), 900, (7.0, 12.0)), ((2048, 2048), 3600, (7.0, 12.0)),
         ((64, 256, 256), 900, (6.0, 10.0)), ((96, 384, 384), 3000, (6.0, 10.0))]


def main() -> None:
    params = params_namespace(resolve("classical", "nuclei", None, {}))
    worst = 0.0
    print(f"{'shape':>16} {'voxels':>11} {'peak MB':>9} {'bytes/voxel':>12} {'seconds':>8}")
    for shape, n, radius in CASES:
        image = synthetic.render_nuclei(synthetic.touching_nuclei(shape, n=n, radius=radius, seed=1), seed=2)
        prepared = {"threshold": 1200.0, "high": 3200.0}
        tracemalloc.start()
        started = time.time()
        classical.segment(None, image, params, prepared)
        seconds = time.time() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        per_voxel = peak / image.size
        worst = max(worst, per_voxel)
        print(f"{'x'.join(map(str, shape)):>16} {image.size:>11} {peak / 2**20:>9.1f} {per_voxel:>12.1f} {seconds:>8.2f}")
    print(f"worst {worst:.1f} bytes/voxel; stored BYTES_PER_VOXEL = {classical.BYTES_PER_VOXEL} "
          f"({'covers' if classical.BYTES_PER_VOXEL >= worst else 'DOES NOT cover'} the measurement)")


if __name__ == "__main__":
    main()
