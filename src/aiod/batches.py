"""How work is grouped into tasks (docs/usage.md, "Batches"): images into PLAN tasks, substacks
into SEGMENT tasks. A task pays a Python start-up and a model load before it does any work, so
many small images share one task, while a large image's boxes each fill a task of their own and
spread over the cluster. Grouping never changes a result: every substack is segmented alone,
from its own box, whatever else its task holds."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PlanError

# `--batch auto`: substacks are added to a SEGMENT task until it holds this many voxels. 16 M
# voxels is 256 fields of 256x256 or 16 of 1024x1024: seconds to minutes of work on a CPU, against
# ~2 s of start-up; a box of this size or more is a task by itself.
AUTO_VOXELS = 2**24
# ... or until its substacks are estimated to take this long on a CPU, for families that declare
# their measured CPU cost (adapter CPU_SECONDS_PER_MEGAVOXEL): 16 M voxels of a ViT-L would be
# hours of one task, on one core, where many tasks could run side by side.
AUTO_SECONDS = 900.0
# PLAN reads every image once (its fingerprint and image-wide statistics): it takes images until
# it has this many, or this many voxels.
PLAN_IMAGES = 250
PLAN_VOXELS = 2**28


@dataclass(frozen=True)
class BatchRule:
    """`count` substacks per task, or substacks until the task holds `voxels` (or, with
    `seconds`, until its estimated CPU time reaches it)."""

    count: int | None = None
    voxels: int | None = None
    seconds: float | None = None

    def full(self, n_items: int, voxels: int, seconds: float = 0.0) -> bool:
        if self.count is not None:
            return n_items >= self.count
        return voxels >= self.voxels or (self.seconds is not None and seconds >= self.seconds)


def parse_batch(text: str) -> BatchRule:
    """'auto' | a number of substacks per task ('1', '20') | voxels per task ('64M', '2G';
    K, M, G are powers of 1024)."""
    value = str(text).strip()
    if value == "auto":
        return BatchRule(voxels=AUTO_VOXELS, seconds=AUTO_SECONDS)
    m = re.fullmatch(r"([0-9]+)\s*([KMG]?)", value, flags=re.IGNORECASE)
    if not m or int(m.group(1)) < 1:
        raise PlanError(f"batch: '{text}' is not 'auto', a number of substacks per task (e.g. 8) "
                        "or a number of voxels per task (e.g. 64M)")
    if m.group(2):
        return BatchRule(voxels=int(m.group(1)) * 1024 ** ("KMG".index(m.group(2).upper()) + 1))
    return BatchRule(count=int(m.group(1)))


def plan_groups(voxels: list[int | None]) -> list[int]:
    """The PLAN task (0, 1, ...) of each image, in samplesheet order: consecutive images until a
    task has PLAN_IMAGES of them or PLAN_VOXELS voxels (None: size unknown, counted as 0)."""
    groups, group, n, total = [], 0, 0, 0
    for v in voxels:
        if n and (n >= PLAN_IMAGES or total >= PLAN_VOXELS):
            group, n, total = group + 1, 0, 0
        groups.append(group)
        n, total = n + 1, total + (v or 0)
    return groups


@dataclass(frozen=True)
class Work:
    """One image's substacks to segment: the voxels of each box, the host memory a task needs
    for a box of v voxels: fixed + per_voxel * v (the planner's estimate), and the family's CPU
    seconds per voxel (0: not declared)."""

    id: str
    box_voxels: list[int]
    fixed: float
    per_voxel: float
    seconds_per_voxel: float = 0.0


def segment_batches(works: list[Work], rule: BatchRule, prefix: str = "") -> list[dict]:
    """Substacks grouped into SEGMENT tasks, in order: {"name", "items": [[id, index, n], ...],
    "memory": bytes}. A task segments its substacks one after another, so it needs the memory of
    its largest box, not their sum."""
    batches, items, voxels, seconds, need = [], [], 0, 0.0, 0.0

    def close():
        nonlocal items, voxels, seconds, need
        if items:
            batches.append({"name": f"{prefix}{len(batches) + 1}", "items": items, "memory": int(need)})
        items, voxels, seconds, need = [], 0, 0.0, 0.0

    for work in works:
        n = len(work.box_voxels)
        for index, v in enumerate(work.box_voxels):
            items.append([work.id, index, n])
            voxels += v
            seconds += v * work.seconds_per_voxel
            need = max(need, work.fixed + work.per_voxel * v)
            if rule.full(len(items), voxels, seconds):
                close()
    close()
    return batches
