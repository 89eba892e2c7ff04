"""The report's pictures: overlay thumbnails read from the masks' multiscale levels, object-size
histograms and time/memory charts (docs/report.md).

Thumbnail rule: the stride `s` is the largest power of two that keeps the image's longest Y/X
side at `TARGET` pixels or more (1 for smaller images). Each mask is read at the coarsest level
whose Y/X factor divides `s` (its pyramid level halves Y and X, so level k is level 0 taking
every 2^k-th pixel) and then every (s / 2^k)-th pixel of it; the image and the ground truth have
no pyramid and are read box by box (at most `TILE` pixels a side), keeping every s-th pixel, so
only the thumbnail is ever held. A 3D image shows its middle plane and a maximum projection over
at most `MAX_PLANES` evenly spaced planes. Object sizes come from the object tables; a mask
without one is counted chunk by chunk on its finest level of at most `COUNT_BUDGET` voxels, each
voxel there standing for the level's factor.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
from pathlib import Path

import numpy as np

from . import ngff
from .errors import AiodError

TARGET = 256  # a thumbnail's longest side is at least this (when the image is)
TILE = {2: 2048, 3: 256}  # pixels a side of one box read from an image without a pyramid
MAX_PLANES = 32  # planes of a 3D image in its maximum projection
COUNT_BUDGET = 1 << 24  # voxels of the level that object sizes are counted on (at most)
PNG_BUDGET = 100_000  # bytes of one thumbnail PNG: fewer grey levels until it fits
COLOURS = {"matched": (0, 230, 64), "false": (255, 45, 155), "missed": (255, 212, 0), "outline": (0, 220, 255)}
OUTLINE_ORDER = ("matched", "false", "missed", "outline")


def stride_for(yx) -> int:
    """The largest power of two s with ceil(max(Y, X) / s) >= TARGET (1 for small images)."""
    s = 1
    while -(-max(yx) // (2 * s)) >= TARGET:
        s *= 2
    return s


def _boxes(shape, steps, tile: int):
    """Boxes covering `shape`, each side a multiple of its step (so strides stay aligned)."""
    sides = [max(st, tile // st * st) for st in steps]
    for corner in itertools.product(*(range(0, n, side) for n, side in zip(shape, sides))):
        yield tuple(slice(c, min(c + side, n)) for c, side, n in zip(corner, sides, shape))


def strided(read, shape, steps, tile: int) -> np.ndarray:
    """Every steps[i]-th voxel of an array of `shape`, read box by box with read(box)."""
    out = None
    for box in _boxes(shape, steps, tile):
        block = np.asarray(read(box))[tuple(slice(None, None, st) for st in steps)]
        if out is None:
            out = np.zeros(tuple(-(-n // st) for n, st in zip(shape, steps)), dtype=block.dtype)
        out[tuple(slice(b.start // st, b.start // st + k) for b, st, k in zip(box, steps, block.shape))] = block
    return out


class Mask:
    """One published mask's label pyramid: each level's array and its factor per axis."""

    def __init__(self, root: Path, name: str | None = None):
        import zarr
        self.root = Path(root)
        if name is None:
            name = (zarr.open_group(store=str(self.root / "labels"), mode="r").attrs.get("ome") or {})["labels"][0]
        self.name = name
        ms = zarr.open_group(store=str(self.root / "labels" / name), mode="r").attrs["ome"]["multiscales"][0]
        self.axes = "".join(a["name"] for a in ms["axes"]).upper()
        scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
        self.factors = [tuple(max(1, round(a / b)) for a, b in zip(sc, scales[0])) for sc in scales]
        self.levels = [ngff.open_labels(self.root, name, k) for k in range(len(scales))]
        self.shape = tuple(self.levels[0].shape)

    def level_for(self, s: int) -> int:
        """The coarsest level whose Y/X factor divides the stride s."""
        return max(k for k, f in enumerate(self.factors) if s % f[-1] == 0 and s % f[-2] == 0 and f[-1] <= s)

    def plane(self, s: int, z: int | None, k: int) -> np.ndarray:
        """Level 0's plane z (None: 2D) at every s-th Y/X pixel, read from level k."""
        arr, f = self.levels[k], self.factors[k]
        step = (s // f[-2], s // f[-1])
        if z is None:
            return strided(lambda b: arr[b], arr.shape, step, TILE[2])
        zk = z // f[0]
        return strided(lambda b: arr[(zk, *b)], arr.shape[1:], step, TILE[2])

    def counts(self) -> tuple[np.ndarray, float]:
        """Voxel count of every object on the finest level of at most COUNT_BUDGET voxels (the
        coarsest when none is), read chunk by chunk, and the level-0 voxels one voxel stands for."""
        k = next((k for k, a in enumerate(self.levels) if math.prod(a.shape) <= COUNT_BUDGET), len(self.levels) - 1)
        arr = self.levels[k]
        return count_labels(lambda b: arr[b], arr.shape, (1,) * arr.ndim, arr.chunks), float(math.prod(self.factors[k]))


def count_labels(read, shape, steps, chunks=None) -> np.ndarray:
    """Voxel counts of the objects (label != 0) at every steps[i]-th voxel, box by box."""
    ids, counts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    tile = max(chunks) if chunks else TILE[len(shape)]
    for box in _boxes(shape, steps, tile):
        block = np.asarray(read(box))[tuple(slice(None, None, st) for st in steps)]
        u, c = np.unique(block[block != 0], return_counts=True)
        ids.append(u.astype(np.int64))
        counts.append(c.astype(np.int64))
    u, inv = np.unique(np.concatenate(ids), return_inverse=True)
    return np.bincount(inv.ravel(), weights=np.concatenate(counts)).astype(np.int64) if len(u) else np.zeros(0, np.int64)


def diameters(counts: np.ndarray, voxel: float, ndim: int) -> np.ndarray:
    """Equivalent diameters (pixels) of objects of counts * voxel pixels (2D) or voxels (3D)."""
    size = counts * voxel
    return 2 * np.sqrt(size / np.pi) if ndim == 2 else 2 * np.cbrt(3 * size / (4 * np.pi))


def image_plane(image, channel: int | None, s: int, z: int | None) -> np.ndarray:
    """Plane z (None: 2D) of an imageio.ImageSource at every s-th Y/X pixel, box by box."""
    if channel is None and image.n_channels > 1:
        channel = 0
    yx = image.spatial_shape[-2:]
    if z is None:
        return strided(lambda b: image.read(b, channel), yx, (s, s), TILE[2])
    return strided(lambda b: image.read((slice(z, z + 1), *b), channel)[0], yx, (s, s), TILE[2])


def truth_counts(truth, voxel_budget: int = COUNT_BUDGET) -> tuple[np.ndarray, float]:
    """Object voxel counts of a ground-truth ImageSource: Y/X strided by the smallest power of
    two that keeps the counted voxels within the budget; (counts, voxels one stands for)."""
    shape = truth.spatial_shape
    s = 1
    while math.prod(shape[:-2]) * -(-shape[-2] // s) * -(-shape[-1] // s) > voxel_budget:
        s *= 2
    steps = (1,) * (len(shape) - 2) + (s, s)
    return count_labels(lambda b: truth.read(b, None), shape, steps), float(s * s)


def normalise(img: np.ndarray | None, shape) -> np.ndarray:
    """The image scaled to 0..1 between its 1st and 99.8th percentile (black when absent)."""
    if img is None:
        return np.zeros(shape, np.float32)
    img = img.astype(np.float32)
    lo, hi = np.percentile(img, [1, 99.8])
    return np.clip((img - lo) / (hi - lo if hi > lo else 1), 0, 1)


def matches(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true ids, predicted ids) of the pairs with IoU >= 0.5 on these (thumbnail) arrays."""
    from . import metrics
    c = metrics.contingency(truth, pred)
    gid, gsize = c.sizes("gt")
    pid, psize = c.sizes("pred")
    fg = (c.gt != 0) & (c.pred != 0)
    g, p, inter = c.gt[fg], c.pred[fg], c.count[fg]
    iou = inter / (gsize[np.searchsorted(gid, g)] + psize[np.searchsorted(pid, p)] - inter)
    ok = iou >= 0.5
    return np.unique(g[ok]), np.unique(p[ok])


def overlay(img: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> dict:
    """A thumbnail PNG (data: URI) of the image with the mask's outlines: with ground truth
    matched (green), false (magenta) and missed true objects (yellow); else one colour."""
    from skimage.segmentation import find_boundaries
    layers = {}
    edge = find_boundaries(pred, mode="inner")
    counts = None
    if truth is not None:
        true_ok, pred_ok = matches(truth, pred)
        hit = np.isin(pred, pred_ok)
        layers["missed"] = find_boundaries(truth, mode="inner") & (truth != 0) & ~np.isin(truth, true_ok)
        layers["matched"], layers["false"] = edge & hit, edge & ~hit
        n_true, n_pred = len(np.unique(truth[truth != 0])), len(np.unique(pred[pred != 0]))
        counts = {"matched": len(pred_ok), "false": n_pred - len(pred_ok), "missed": n_true - len(true_ok)}
    else:
        layers["outline"] = edge
    uri, nbytes = png(img, layers)
    return {"uri": uri, "width": int(img.shape[1]), "height": int(img.shape[0]), "bytes": nbytes, "counts": counts}


def png(img: np.ndarray, layers: dict[str, np.ndarray]) -> tuple[str, int]:
    """A palette PNG of a 0..1 grey image with coloured layers on top, as a data: URI; fewer grey
    levels (64, 32, 16, 8) until it is at most PNG_BUDGET bytes."""
    from PIL import Image
    data = b""
    for grey in (64, 32, 16, 8):
        idx = np.round(img * (grey - 1)).astype(np.uint8)
        palette = [v for g in range(grey) for v in (round(255 * g / (grey - 1)),) * 3]
        for i, name in enumerate(OUTLINE_ORDER):
            if name in layers:
                idx[layers[name]] = grey + i
            palette += COLOURS[name]
        picture = Image.fromarray(idx, mode="P")
        picture.putpalette(palette)
        buf = io.BytesIO()
        picture.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
        if len(data) <= PNG_BUDGET:
            break
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), len(data)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def size_histogram(sizes: dict[str, np.ndarray], truth: np.ndarray | None) -> str | None:
    """Object equivalent diameters per model (step lines) and of the ground truth (grey)."""
    every = [d for d in [*sizes.values(), truth] if d is not None and len(d)]
    if not every:
        return None
    lo, hi = min(float(d.min()) for d in every), max(float(d.max()) for d in every)
    bins = np.geomspace(max(lo, 0.5) * 0.9, max(hi, 1.0) * 1.1, 40)
    fig = _figure(8, 3.2)
    ax = fig.add_subplot()
    if truth is not None and len(truth):
        ax.hist(truth, bins=bins, color="0.8", label=f"ground truth ({len(truth)})")
    for label, d in sizes.items():
        ax.hist(d, bins=bins, histtype="step", linewidth=1.6, label=f"{label} ({len(d)})")
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if bins[0] <= t <= bins[-1]]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter("")
    ax.set_xlabel("object size: equivalent diameter (pixels)")
    ax.set_ylabel("objects")
    ax.legend(fontsize=8, frameon=False)
    return _uri(fig)


def region_bars(rows: list[dict], unit: str, top: int = 15) -> str | None:
    """The `top` regions by density (objects per mm³, or mm² in 2D) as horizontal bars."""
    rows = sorted(rows, key=lambda r: -r["density"])[:top]
    if not rows:
        return None
    fig = _figure(8, 0.6 + 0.28 * len(rows))
    ax = fig.add_subplot()
    ax.barh(range(len(rows)), [r["density"] for r in rows], color="#3d7fc1")
    ax.set_yticks(range(len(rows)), [f"{r['name']} ({r['objects']})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"objects per {unit} (objects counted in brackets)")
    return _uri(fig)


def time_chart(rows: list[dict], name: str, parts: tuple[tuple[str, str], ...], memory: str | None) -> str | None:
    """Horizontal bars of seconds per row (stacked `parts`), and beside them its memory (MiB)."""
    if not rows:
        return None
    labels = [r[name] for r in rows]
    height = 0.9 + 0.28 * len(rows)
    fig = _figure(9, height)
    axes = fig.subplots(1, 2 if memory else 1, sharey=True, squeeze=False)[0]
    left = np.zeros(len(rows))
    for key, text in parts:
        values = np.array([r.get(key) or 0.0 for r in rows], dtype=float)
        axes[0].barh(labels, values, left=left, label=text)
        left += values
    axes[0].set_xlabel("seconds")
    axes[0].invert_yaxis()
    if len(parts) > 1:
        axes[0].legend(fontsize=8, frameon=False)
    if memory:
        axes[1].barh(labels, [(r.get(memory) or 0) / 2**20 for r in rows], color="tab:purple")
        axes[1].set_xlabel("peak memory (MiB)")
    for ax in axes:
        ax.tick_params(labelsize=8)
    return _uri(fig)


def open_mask(root: Path, name: str | None) -> tuple[Mask | None, str | None]:
    try:
        return Mask(root, name), None
    except (AiodError, OSError, KeyError, IndexError) as exc:
        return None, f"{root}: cannot read the mask ({exc.__class__.__name__}: {exc})"
