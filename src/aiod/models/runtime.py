"""What every family adapter needs around its model: where it runs, where libraries may write,
and image-wide values computed from a bounded sample.

Adapters import their deep-learning library inside their functions, never at module level: the
pipeline's own steps import every adapter module in an environment that has none of them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .. import block_pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def keep_libraries_out_of_home(task_dir: Path | str = ".") -> Path:
    """Point every library cache/config directory we know of into the task directory, so that
    nothing is written under $HOME and nothing is downloaded into a shared place behind the
    registry's back. Call before importing the model library. Compiled numba code is the
    exception: it goes where every task of the environment shares it (block_pass.cache_dir,
    never $HOME), else into the task directory too."""
    base = Path(task_dir).resolve() / ".aiod-home"
    base.mkdir(parents=True, exist_ok=True)
    for var, sub in {
        "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config", "MPLCONFIGDIR": "matplotlib",
        "TORCH_HOME": "torch", "HF_HOME": "huggingface", "KERAS_HOME": "keras",
        "CELLPOSE_LOCAL_MODELS_PATH": "cellpose", "NUMBA_CACHE_DIR": "numba",
    }.items():
        os.environ[var] = str(base / sub)
    shared = block_pass.cache_dir()
    if shared is not None:
        os.environ["NUMBA_CACHE_DIR"] = str(shared)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return base


def torch_device(family: str):
    """The GPU when the task has one (CUDA_VISIBLE_DEVICES is honoured by CUDA itself), else the
    CPU; the log says which."""
    import torch

    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
        name = torch.cuda.get_device_name(device)
        log(f"{family}: running on GPU {name} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    else:
        device = torch.device("cpu")
        log(f"{family}: running on the CPU (no GPU visible to this task)")
    return device


def device_in_use() -> str:
    """What this task segmented on, from the libraries it loaded: 'GPU <name>' or 'CPU'."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    tf = sys.modules.get("tensorflow")
    if tf is not None and tf.config.list_logical_devices("GPU"):
        return "GPU"
    return "CPU"


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 natively (the avx512_bf16 or amx_bf16 flag; False where
    the flags cannot be read)."""
    try:
        flags = Path(cpuinfo).read_text(errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def sample_values(image, channel: int | None, max_voxels: int) -> np.ndarray:
    """Up to `max_voxels` voxel values (float64, flat) read as whole blocks spread evenly over
    the image: all of a small image, bounded reads of a large one. Image-wide statistics
    (thresholds, normalisation percentiles) come from this, so every substack uses the same."""
    return np.concatenate([block.ravel() for block in _sample_blocks(image, channel, max_voxels)]).astype(np.float64)


def _sample_blocks(image, channel, max_voxels):
    shape = image.spatial_shape
    if int(np.prod(shape)) <= max_voxels:
        yield image.read(tuple(slice(0, n) for n in shape), channel)
        return
    side = 64 if len(shape) == 3 else 512
    block = tuple(min(side, n) for n in shape)
    n_blocks = max(1, max_voxels // int(np.prod(block)))
    per_axis = max(1, int(round(n_blocks ** (1 / len(shape)))))
    starts = [np.linspace(0, n - b, num=min(per_axis, n // b or 1)).astype(int) for n, b in zip(shape, block)]
    for corner in np.array(np.meshgrid(*starts, indexing="ij")).reshape(len(shape), -1).T:
        yield image.read(tuple(slice(int(c), int(c) + b) for c, b in zip(corner, block)), channel)


def percentile_normalisation(image, channel: int | None, low: float = 1.0, high: float = 99.8,
                             max_voxels: int = 16_000_000) -> dict:
    """Image-wide intensity percentiles for the usual (x - p_low) / (p_high - p_low) scaling."""
    values = sample_values(image, channel, max_voxels)
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    return {"p_low": lo, "p_high": hi if hi > lo else lo + 1e-6}


def normalise(array: np.ndarray, prepared: dict) -> np.ndarray:
    """Scale a substack with the image-wide percentiles from `percentile_normalisation`."""
    lo, hi = prepared["p_low"], prepared["p_high"]
    return (array.astype(np.float32, copy=False) - np.float32(lo)) / np.float32(hi - lo)


def channel_percentiles(image, channel: int | None, max_channels: int, family: str) -> dict:
    """Image-wide 1st/99.8th percentiles of each channel the model will see (one when a channel
    is chosen or the image has none). Shared by the families that take up to 3 channels."""
    if channel is not None or image.n_channels == 1:
        return {"channels": [percentile_normalisation(image, channel)]}
    if image.n_channels > max_channels:
        raise ValueError(f"{family}: the image has {image.n_channels} channels; the model takes at most "
                         f"{max_channels}: choose one channel in the samplesheet")
    return {"channels": [percentile_normalisation(image, c) for c in range(image.n_channels)]}


def channels_last(array: np.ndarray, prepared: dict) -> np.ndarray:
    """The substack as float32 (*spatial, C), each channel scaled with its image-wide percentiles
    (0 at the low one, 1 at the high one). `array` has no channel axis when prepare() recorded
    one channel, else channels first."""
    scales = prepared["channels"]
    planes = [array] if len(scales) == 1 else list(array)
    if len(planes) != len(scales):
        raise ValueError(f"substack has {len(planes)} channels, the image-wide values {len(scales)}")
    out = np.empty(planes[0].shape + (len(planes),), dtype=np.float32)
    for i, (plane, scale) in enumerate(zip(planes, scales)):
        out[..., i] = normalise(plane, scale)
    return out


def local_file(artifact: Path | None, family: str) -> Path:
    """The artifact as an existing local file, or an error (never a name a library would fetch)."""
    if artifact is None or not Path(artifact).is_file():
        raise FileNotFoundError(f"{family}: model file {artifact} not found (it comes from the registry's artifact step)")
    return Path(artifact).resolve()
