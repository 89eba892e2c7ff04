"""Substack planning: how an image is cut into boxes that a model segments one at a time.

Every spatial axis is split into near-equal *cores* (sizes differ by at most one voxel); the
cores partition the image, so every voxel belongs to exactly one core. Each substack's *box* is
its core grown by the overlap (halo) on each side and clipped to the image: the model sees the
box, the merge keeps the core (see `aiod.merge`).

A plan is saved as JSON (`"format": "aiod-plan/1"`) with the keys

- `spatial_axes`: `"YX"` or `"ZYX"`; `spatial_shape`: voxels per spatial axis;
- `grid`: substacks per axis; `overlap`: halo in voxels per axis;
- `align`: per axis, the step that every box start is a multiple of (1 = none);
- `substacks`: a list of `{"index", "grid_pos", "core", "box"}`, where `core` and `box` are
  `[start, stop)` pairs per spatial axis, in image voxels.

Alignment: a network with strides or pooling (StarDist's grid and U-Net, Cellpose's U-Net) gives
the same output for a pixel only when its input is shifted by a multiple of its total stride. A
box that started at an arbitrary pixel would sample another grid and change every object in it,
not only those at the seams. So each box starts at a multiple of the model's `align` (read from
its artifact by the adapter): the box grows towards the image origin by less than one step,
never shrinks, and its halo stays at least `overlap`. Box ends are not aligned: the network pads
the end of its input, which changes only the pixels within its receptive field of that end, and
the halo covers those.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from aiod.boxes import rel, shape_of
from aiod.errors import PlanError

PLAN_FORMAT = "aiod-plan/1"
MIN_AUTO_CORE = 16  # `auto` never cuts an axis into cores thinner than this (unless it is thinner)

Range = tuple[int, int]


@dataclass(frozen=True)
class Substack:
    index: int
    grid_pos: tuple[int, ...]
    core: tuple[Range, ...]  # [start, stop) per spatial axis; the cores partition the image
    box: tuple[Range, ...]  # core grown by the overlap on each side, clipped to the image

    @property
    def core_slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.core)

    @property
    def box_slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.box)

    @property
    def core_in_box(self) -> tuple[slice, ...]:
        """The core as slices of an array that holds the box."""
        return rel(self.core, self.box)

    @property
    def box_shape(self) -> tuple[int, ...]:
        return shape_of(self.box)


@dataclass(frozen=True)
class Plan:
    spatial_shape: tuple[int, ...]
    spatial_axes: str
    grid: tuple[int, ...]
    overlap: tuple[int, ...]
    substacks: tuple[Substack, ...]
    align: tuple[int, ...] | None = None  # None: 1 per axis

    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "spatial_axes": self.spatial_axes,
            "spatial_shape": list(self.spatial_shape),
            "grid": list(self.grid),
            "overlap": list(self.overlap),
            "align": list(self.align or (1,) * len(self.grid)),
            "substacks": [
                {
                    "index": s.index,
                    "grid_pos": list(s.grid_pos),
                    "core": [list(r) for r in s.core],
                    "box": [list(r) for r in s.box],
                }
                for s in self.substacks
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise PlanError(f"plan: 'format' is {got!r}, expected {PLAN_FORMAT!r}")
        try:
            subs = tuple(
                Substack(
                    index=int(s["index"]),
                    grid_pos=tuple(int(v) for v in s["grid_pos"]),
                    core=tuple((int(a), int(b)) for a, b in s["core"]),
                    box=tuple((int(a), int(b)) for a, b in s["box"]),
                )
                for s in d["substacks"]
            )
            plan = cls(
                spatial_shape=tuple(int(v) for v in d["spatial_shape"]),
                spatial_axes=str(d["spatial_axes"]),
                grid=tuple(int(v) for v in d["grid"]),
                overlap=tuple(int(v) for v in d["overlap"]),
                substacks=subs,
                align=tuple(int(v) for v in d.get("align") or [1] * len(d["grid"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"plan: missing or malformed field ({exc!r})") from None
        if plan != _build(plan.spatial_shape, plan.spatial_axes, plan.grid, plan.overlap, plan.align):
            raise PlanError("plan: substacks do not match spatial_shape, grid and overlap")
        return plan

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PlanError(f"{path}: cannot read plan ({exc})") from None
        return cls.from_dict(data)

    def neighbours(self, index: int) -> list[int]:
        """Substacks whose cores touch this one's (by a face, an edge or a corner)."""
        pos = self.substacks[index].grid_pos
        return [
            s.index
            for s in self.substacks
            if s.index != index and all(abs(a - b) <= 1 for a, b in zip(s.grid_pos, pos))
        ]


def _values(text: str, ndim: int, name: str, form: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts = parts * ndim
    if len(parts) != ndim or any(p == "" for p in parts):
        raise PlanError(
            f"{name}: {text!r} has {len(parts)} values for {ndim} spatial axes; expected {form}"
        )
    return parts


def parse_num_substacks(text: str, ndim: int) -> tuple[int, ...] | str:
    """`"auto"`, one count for every axis (`"4"`), or one per spatial axis (`"1,2,2"`)."""
    form = f"'auto', one integer >= 1, or {ndim} comma-separated integers >= 1 (e.g. 'auto', '4', '{','.join(['2'] * ndim)}')"
    if str(text).strip().lower() == "auto":
        return "auto"
    out = []
    for p in _values(text, ndim, "num_substacks", form):
        try:
            v = int(p)
        except ValueError:
            raise PlanError(f"num_substacks: {p!r} is not an integer; expected {form}") from None
        if v < 1:
            raise PlanError(f"num_substacks: {v} is less than 1; expected {form}")
        out.append(v)
    return tuple(out)


def parse_overlap(text: str, ndim: int) -> tuple[float, ...]:
    """Voxels (`"32"`, `"8,32,32"`) or, below 1, a fraction of the core size (`"0.1"`)."""
    form = f"one number >= 0 or {ndim} comma-separated numbers (voxels, or a fraction of the core size when < 1)"
    out = []
    for p in _values(text, ndim, "overlap", form):
        try:
            v = float(p)
        except ValueError:
            raise PlanError(f"overlap: {p!r} is not a number; expected {form}") from None
        if not math.isfinite(v) or v < 0:
            raise PlanError(f"overlap: {p!r} is negative or not finite; expected {form}")
        out.append(v)
    return tuple(out)


def _split(length: int, parts: int) -> list[Range]:
    q, r = divmod(length, parts)
    starts = [i * q + min(i, r) for i in range(parts + 1)]
    return list(zip(starts[:-1], starts[1:]))


def _halo(ov: float, length: int, parts: int) -> int:
    if ov < 1:
        return math.ceil(ov * math.ceil(length / parts))
    return int(round(ov))


def _box(core: Range, halo: int, length: int, align: int) -> Range:
    """The core grown by `halo` on each side, its start moved down to a multiple of `align`."""
    a, b = core
    return max(0, (a - halo) // align * align), min(length, b + halo)


def _build(shape, axes, grid, halo, align=None) -> Plan:
    align = tuple(int(v) for v in (align or (1,) * len(shape)))
    per_axis = [_split(n, g) for n, g in zip(shape, grid)]
    subs = []
    for i, pos in enumerate(itertools.product(*(range(g) for g in grid))):
        core = tuple(per_axis[k][p] for k, p in enumerate(pos))
        box = tuple(_box(c, h, n, al) for c, h, n, al in zip(core, halo, shape, align))
        subs.append(Substack(index=i, grid_pos=tuple(pos), core=core, box=box))
    return Plan(tuple(shape), axes, tuple(grid), tuple(halo), tuple(subs), align)


def _largest_box(shape, grid, halo, align=None) -> int:
    """Voxels of the largest box (boxes form a grid, so it is the product of per-axis maxima)."""
    out = 1
    for n, g, h, al in zip(shape, grid, halo, align or (1,) * len(shape)):
        out *= max(b - a for a, b in (_box(c, h, n, al) for c in _split(n, g)))
    return out


def parse_align(align, ndim: int) -> tuple[int, ...]:
    """An adapter's alignment: one step for every axis, or one per spatial axis (each >= 1)."""
    steps = (align,) * ndim if isinstance(align, int) else tuple(align)
    if len(steps) != ndim or any(int(v) < 1 for v in steps):
        raise PlanError(f"align: {align!r} is not one step >= 1 or {ndim} of them")
    return tuple(int(v) for v in steps)


def _size(nbytes: float) -> str:
    """Bytes as Nextflow writes memory (powers of 1024)."""
    for unit, power in (("TB", 4), ("GB", 3), ("MB", 2), ("KB", 1)):
        if nbytes >= 1024**power:
            return f"{nbytes / 1024**power:.1f} {unit}"
    return f"{int(nbytes)} B"


@dataclass(frozen=True)
class _Budget:
    """How many voxels one box may hold, and which memory says so."""

    memory: int | None  # bytes of host memory per substack
    bytes_per_voxel: float
    gpu: int | None = None  # bytes of GPU memory, None = no GPU
    gpu_bytes_per_voxel: float | None = None
    fixed: int = 0  # host bytes a task holds whatever its box: libraries and the loaded model

    def __post_init__(self):
        if self.memory is not None and self.memory <= self.fixed:
            raise PlanError(f"substack_memory {_size(self.memory)} leaves nothing for the image: the model and its "
                            f"libraries alone take {_size(self.fixed)} per task; raise substack_memory")

    def limits(self) -> list[tuple[float, str]]:
        out = []
        if self.memory is not None:
            out.append(((self.memory - self.fixed) / float(self.bytes_per_voxel), f"substack_memory {_size(self.memory)}"))
        if self.gpu is not None:
            per = float(self.gpu_bytes_per_voxel or self.bytes_per_voxel)
            out.append((self.gpu / per, f"GPU memory {_size(self.gpu)}"))
        return out

    def max_voxels(self) -> float | None:
        return min((v for v, _ in self.limits()), default=None)

    def over(self, voxels: int) -> str | None:
        """What a box of `voxels` needs, and the budget it exceeds (None when it fits)."""
        for limit, name in self.limits():
            if voxels > limit:
                if name.startswith("GPU"):
                    return f"needs {_size(voxels * float(self.gpu_bytes_per_voxel or self.bytes_per_voxel))} " \
                           f"per substack, more than {name}"
                fixed = f" ({_size(self.fixed)} of it the model and its libraries)" if self.fixed else ""
                return f"needs {_size(self.fixed + voxels * float(self.bytes_per_voxel))} per substack{fixed}, " \
                       f"more than {name}"
        return None


def plan_substacks(
    spatial_shape,
    spatial_axes: str,
    num_substacks,
    overlap,
    *,
    bytes_per_voxel: float,
    memory_budget: int | None,
    gpu_memory_budget: int | None = None,
    gpu_bytes_per_voxel: float | None = None,
    fixed_bytes: int = 0,
    align=1,
) -> Plan:
    """Plan the substacks of one image.

    `num_substacks` is a tuple of counts per axis or `"auto"`: the fewest substacks whose largest
    box fits the budget (no budget: one substack), splitting the axis with the largest core
    first so boxes stay near-cubic in voxels. The budget is `memory_budget` bytes of host
    memory at `bytes_per_voxel` after the `fixed_bytes` every task holds whatever its box (the
    libraries and the loaded model) and, when the model runs on a GPU, `gpu_memory_budget` bytes of
    GPU memory at `gpu_bytes_per_voxel` (the family's measured GPU factor; default
    `bytes_per_voxel`): a box must fit both. A requested count whose largest box does not fit
    is refused, naming the smallest grid that does. `overlap` is per axis, in voxels, or a
    fraction of the core size when below 1. Every box starts at a multiple of `align` (one step,
    or one per axis; see the module's docstring).
    """
    shape = tuple(int(n) for n in spatial_shape)
    ndim = len(shape)
    if len(spatial_axes) != ndim or any(n < 1 for n in shape):
        raise PlanError(f"image: spatial shape {shape} does not fit axes {spatial_axes!r}")
    overlap = tuple(float(v) for v in overlap)
    if len(overlap) != ndim or any(v < 0 for v in overlap):
        raise PlanError(f"overlap: {overlap} must be {ndim} numbers >= 0")
    budget = _Budget(memory_budget, bytes_per_voxel, gpu_memory_budget, gpu_bytes_per_voxel, int(fixed_bytes))
    align = parse_align(align, ndim)
    if num_substacks == "auto":
        grid = _auto_grid(shape, spatial_axes, overlap, budget, align)
    else:
        grid = tuple(int(g) for g in num_substacks)
        if len(grid) != ndim:
            raise PlanError(f"num_substacks: {grid} has {len(grid)} values for {ndim} axes")
        for ax, n, g in zip(spatial_axes, shape, grid):
            if g < 1 or g > n:
                raise PlanError(
                    f"num_substacks: {g} substacks along {ax} but the image has {n} voxels "
                    f"along {ax}; use 1 to {n} (or 'auto')"
                )
        halo = tuple(_halo(ov, n, g) for ov, n, g in zip(overlap, shape, grid))
        problem = budget.over(_largest_box(shape, grid, halo, align))
        if problem:
            try:
                fits = ",".join(map(str, _auto_grid(shape, spatial_axes, overlap, budget, align))) + " or more fits, or use auto"
            except PlanError:
                fits = "no grid fits: raise the memory, or lower the overlap"
            raise PlanError(f"num_substacks {','.join(map(str, grid))} {problem}; {fits}")
    halo = tuple(_halo(ov, n, g) for ov, n, g in zip(overlap, shape, grid))
    return _build(shape, spatial_axes, grid, halo, align)


def _auto_grid(shape, axes, overlap, budget: _Budget, align) -> tuple[int, ...]:
    grid = [1] * len(shape)
    max_voxels = budget.max_voxels()
    if max_voxels is None:
        return tuple(grid)
    # the finest split `auto` may use: cores of at least MIN_AUTO_CORE voxels per axis
    finest = [max(1, n // MIN_AUTO_CORE) for n in shape]

    def fits(g) -> bool:
        halo = [_halo(ov, n, k) for ov, n, k in zip(overlap, shape, g)]
        return _largest_box(shape, g, halo, align) <= max_voxels

    if not fits(finest):
        halo = [_halo(ov, n, k) for ov, n, k in zip(overlap, shape, finest)]
        problem = budget.over(_largest_box(shape, finest, halo, align))
        raise PlanError(
            f"num_substacks: 'auto' cannot fit a box in the memory budget: even cores of "
            f"{MIN_AUTO_CORE} voxels per axis with overlap {tuple(halo)} {problem}; "
            f"raise the memory, or lower the overlap"
        )
    while not fits(grid):
        cand = [k for k in range(len(shape)) if grid[k] < finest[k]]
        k = max(cand, key=lambda k: (math.ceil(shape[k] / grid[k]), -k))
        grid[k] += 1
    return tuple(grid)
