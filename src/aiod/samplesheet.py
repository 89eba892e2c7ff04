"""The user's samplesheet: a CSV with one image per row.

Columns (header on line 1, any order):

    id            required; letters, digits, '.', '_', '-'; unique
    image         required; path to a TIFF or zarr image (relative to the samplesheet's folder)
    axes          optional; stored axis order, e.g. ZYX, CZYX, YXC (see aiod.imageio)
    channel       optional; integer >= 0: the channel to segment (needed when C > 1)
    ground_truth  optional; path to a label image with the image's spatial shape
    atlas         optional; path to a label image of region ids registered to the image, at any
                  resolution: each result's objects are counted per region (docs/measure.md)
    atlas_scale   optional; the atlas' voxel size, e.g. 25,25,25 (µm; default: its metadata's)
    voxel_size    optional; the image's voxel size, e.g. 2,0.65,0.65 (default: its metadata's)
    atlas_offset  optional; where the atlas' first corner lies from the image's first corner, e.g.
                  0,-120,250 (µm; default: from the files' NGFF translations, else 0)
    split         optional; train, valid or test: the image's part in fine-tuning (docs/finetune.md)

Empty optional cells mean "not given". Every error is one line naming the samplesheet, the line
(as a person counts: the header is line 1) and the column.
"""

from __future__ import annotations

import csv
import difflib
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .batches import plan_groups
from .errors import InputError, SamplesheetError
from .imageio import check_axes, open_image

COLUMNS = ("id", "image", "axes", "channel", "ground_truth", "atlas", "atlas_scale", "voxel_size", "atlas_offset",
           "split")
SPLITS = ("train", "valid", "test")
REQUIRED = ("id", "image")
CHECKED_COLUMNS = ("id", "image", "axes", "channel", "ground_truth", "spatial_shape",
                   "canonical_axes", "plan_batch", "atlas", "atlas_scale", "voxel_size", "atlas_offset")
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


class Sample(BaseModel):
    """One samplesheet row. `source`/`line` say where it came from (for error messages)."""

    model_config = ConfigDict(frozen=True)

    id: str
    image: Path
    axes: str | None = None
    channel: int | None = None
    ground_truth: Path | None = None
    atlas: Path | None = None
    atlas_scale: str | None = None
    voxel_size: str | None = None
    atlas_offset: str | None = None
    split: str | None = None
    source: str | None = Field(default=None, exclude=True)
    line: int | None = Field(default=None, exclude=True)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v):
        v = str(v).strip()
        if not ID_PATTERN.fullmatch(v):
            raise ValueError(f"'{v}' may only contain letters, digits, '.', '_' and '-'")
        return v

    @field_validator("axes", mode="before")
    @classmethod
    def _axes(cls, v):
        return None if v is None or str(v).strip() == "" else check_axes(str(v), "axes")

    @field_validator("channel", mode="before")
    @classmethod
    def _channel(cls, v):
        if v is None or (isinstance(v, str) and v.strip() == ""):
            return None
        text = str(v).strip()
        if isinstance(v, bool) or not re.fullmatch(r"\d+", text):
            raise ValueError(f"'{text}' is not an integer >= 0 (channels are numbered from 0)")
        return int(text)

    @field_validator("atlas_scale", "voxel_size", mode="before")
    @classmethod
    def _sizes(cls, v):
        if v is None or str(v).strip() == "":
            return None
        parts = str(v).replace(" ", "").split(",")
        try:
            if all(float(p) > 0 for p in parts) and len(parts) in (2, 3):
                return ",".join(parts)
        except ValueError:
            pass
        raise ValueError(f"'{v}': expected a voxel size per spatial axis, positive numbers such as 2,0.65,0.65 (µm)")

    @field_validator("atlas_offset", mode="before")
    @classmethod
    def _offset(cls, v):
        if v is None or str(v).strip() == "":
            return None
        parts = str(v).replace(" ", "").split(",")
        try:
            if all(math.isfinite(float(p)) for p in parts) and len(parts) in (2, 3):
                return ",".join(parts)
        except ValueError:
            pass
        raise ValueError(f"'{v}': expected the atlas' position per spatial axis, numbers such as 0,-120,250 (µm)")

    @field_validator("split", mode="before")
    @classmethod
    def _split(cls, v):
        if v is None or str(v).strip() == "":
            return None
        if str(v).strip() not in SPLITS:
            raise ValueError(f"'{str(v).strip()}' is not a split; expected one of {', '.join(SPLITS)}")
        return str(v).strip()

    @field_validator("ground_truth", "atlas", mode="before")
    @classmethod
    def _optional_path(cls, v):
        return None if v is None or str(v).strip() == "" else v


@dataclass(frozen=True)
class CheckedSample:
    """A sample whose image (and ground truth) opened and fit together. The image fields are
    None when the images were not opened (`check_samples(..., open_images=False)`)."""

    sample: Sample
    image: Path                       # absolute
    ground_truth: Path | None         # absolute
    axes: str | None = None           # canonical, as resolved, e.g. "CZYX"
    source_axes: str | None = None    # stored order, one letter per stored dimension
    spatial_shape: tuple[int, ...] | None = None
    n_channels: int | None = None


def _where(sheet, line: int | None = None, column: str | None = None) -> str:
    out = str(sheet)
    if line is not None:
        out += f": line {line}"
    if column is not None:
        out += f": column '{column}'"
    return out


def _read_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.reader(f))
    except FileNotFoundError:
        raise SamplesheetError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise SamplesheetError(f"{path}: cannot be read as a CSV text file ({e})") from None


def _check_header(path, header: list[str]) -> list[str]:
    expected = f"expected columns: {', '.join(COLUMNS)}"
    names = [h.strip() for h in header]
    seen = set()
    for name in names:
        if name not in COLUMNS:
            close = difflib.get_close_matches(name.lower(), COLUMNS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SamplesheetError(f"{_where(path, 1)}: unknown column '{name}'{hint}; {expected}")
        if name in seen:
            raise SamplesheetError(f"{_where(path, 1)}: column '{name}' appears twice; {expected}")
        seen.add(name)
    for name in REQUIRED:
        if name not in seen:
            raise SamplesheetError(f"{_where(path, 1)}: missing required column '{name}'; "
                                   f"{expected}")
    return names


def read_samplesheet(path, base_dir=None) -> list[Sample]:
    """Read and validate a samplesheet CSV (structure only; images are not opened). Relative
    paths start from `base_dir`, by default the samplesheet's folder."""
    path = Path(path)
    rows = _read_rows(path)
    numbered = [(i, r) for i, r in enumerate(rows, start=1) if any(c.strip() for c in r)]
    if not numbered:
        raise SamplesheetError(f"{path}: the file is empty; expected a header line with "
                               f"columns: {', '.join(COLUMNS)}")
    if numbered[0][0] != 1:
        raise SamplesheetError(f"{_where(path, 1)}: is empty; expected the header line with "
                               f"columns: {', '.join(COLUMNS)}")
    names = _check_header(path, numbered[0][1])
    base = Path(base_dir).resolve() if base_dir is not None else path.resolve().parent
    samples, first_line = [], {}
    for line, row in numbered[1:]:
        if len(row) != len(names):
            raise SamplesheetError(f"{_where(path, line)}: has {len(row)} cells but the header "
                                   f"has {len(names)} columns ({', '.join(names)})")
        cells = dict(zip(names, (c.strip() for c in row)))
        for name in REQUIRED:
            if not cells[name]:
                raise SamplesheetError(f"{_where(path, line, name)}: is empty; a value is "
                                       "required")
        try:
            sample = Sample(**{k: v for k, v in cells.items() if v != ""},
                            source=str(path), line=line)
        except ValidationError as e:
            err = e.errors()[0]
            column = str(err["loc"][0]) if err["loc"] else None
            msg = str(err.get("ctx", {}).get("error") or err["msg"])
            raise SamplesheetError(f"{_where(path, line, column)}: {msg}") from None
        if sample.id in first_line:
            raise SamplesheetError(f"{_where(path, line, 'id')}: id '{sample.id}' is already "
                                   f"used on line {first_line[sample.id]}; ids must be unique")
        first_line[sample.id] = line
        resolved = {"image": base / sample.image}
        for column in ("ground_truth", "atlas"):
            if getattr(sample, column) is not None:
                resolved[column] = base / getattr(sample, column)
        samples.append(sample.model_copy(update=resolved))
    if not samples:
        raise SamplesheetError(f"{path}: has a header but no samples; add one line per image")
    return samples


def _dims(shape) -> str:
    return "x".join(str(n) for n in shape)


def _check_one(s: Sample) -> CheckedSample:
    sheet, line = s.source or "samplesheet", s.line
    try:
        src = open_image(s.image, s.axes)
    except InputError as e:
        raise InputError(f"{_where(sheet, line, 'image')}: {e}") from None
    with src:
        n = src.n_channels
        if s.channel is not None and s.channel >= n:
            raise InputError(f"{_where(sheet, line, 'channel')}: channel {s.channel} is out of "
                             f"range; {s.image} has {n} channel(s), numbered 0..{n - 1}")
        if s.channel is None and n > 1:
            raise InputError(f"{_where(sheet, line, 'channel')}: {s.image} has {n} channels "
                             f"(axes {src.axes}); add a 'channel' column saying which one to "
                             f"segment (0..{n - 1})")
        checked = CheckedSample(s, s.image.resolve(), None, src.axes, src.source_axes,
                                src.spatial_shape, n)
        if s.atlas is not None:
            from .regions import check_atlas
            for column in ("atlas_scale", "voxel_size", "atlas_offset"):
                value = getattr(s, column)
                if value and len(value.split(",")) != len(src.spatial_shape):
                    raise InputError(f"{_where(sheet, line, column)}: '{value}' has {len(value.split(','))} value(s) "
                                     f"but {s.image} has {len(src.spatial_shape)} spatial axes "
                                     f"({''.join(a for a in src.axes if a != 'C')})")
            check_atlas(s.atlas, src.spatial_shape, src.scale, atlas_scale=s.atlas_scale, voxel_size=s.voxel_size,
                        atlas_offset=s.atlas_offset, image=s.image, where=_where(sheet, line, "atlas"))
    if s.ground_truth is None:
        return checked
    try:
        gt = open_image(s.ground_truth)
    except InputError as e:
        raise InputError(f"{_where(sheet, line, 'ground_truth')}: {e}") from None
    with gt:
        if gt.n_channels > 1 or gt.spatial_shape != checked.spatial_shape:
            raise InputError(f"{_where(sheet, line, 'ground_truth')}: {s.ground_truth} has "
                             f"shape {_dims(gt.shape)} (axes {gt.axes}); expected a label "
                             f"image of the image's spatial shape {_dims(checked.spatial_shape)}"
                             f" ({''.join(a for a in checked.axes if a != 'C')})")
        if gt.dtype.kind not in "iu":
            raise InputError(f"{_where(sheet, line, 'ground_truth')}: {s.ground_truth} has {gt.dtype} pixels; "
                             "expected a label image of integers (0 for background, one id per object)")
    return replace(checked, ground_truth=s.ground_truth.resolve())


def check_samples(samples: list[Sample], open_images: bool = True) -> list[CheckedSample]:
    """Open every image and ground truth lazily and check that they fit the row; raises
    InputError naming samplesheet, line and column on the first problem. With
    `open_images=False` (pipeline stub runs) only paths are made absolute."""
    if not open_images:
        return [CheckedSample(s, s.image.resolve(), s.ground_truth and s.ground_truth.resolve())
                for s in samples]
    return [_check_one(s) for s in samples]


def write_checked(checked: list[CheckedSample], out_csv) -> None:
    """Write the normalized CSV the pipeline reads: id, image (absolute), axes, channel (as
    given or empty), ground_truth (absolute or empty), spatial_shape (e.g. 64x128x128),
    canonical_axes (e.g. CZYX), plan_batch (the PLAN task that takes the image: aiod.batches),
    atlas (absolute or empty), atlas_scale, voxel_size, atlas_offset (as given or empty).

    `axes` is the resolved STORED axis order (e.g. ZCYX, or TZCYX with T=1): the pipeline passes
    it back to `open_image(image, axes)`, which then reads the image exactly as checked here.
    The canonical order is not a valid declaration for files stored in another order. Without
    opened images, `axes` is the declared value and the last two columns are empty."""
    groups = plan_groups([math.prod(c.spatial_shape) * (c.n_channels or 1) if c.spatial_shape else None
                          for c in checked])
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CHECKED_COLUMNS)
        for c, group in zip(checked, groups):
            w.writerow([c.sample.id, str(c.image), c.source_axes or c.sample.axes or "",
                        "" if c.sample.channel is None else c.sample.channel,
                        "" if c.ground_truth is None else str(c.ground_truth),
                        _dims(c.spatial_shape or ()), c.axes or "", group,
                        "" if c.sample.atlas is None else str(c.sample.atlas.resolve()),
                        c.sample.atlas_scale or "", c.sample.voxel_size or "", c.sample.atlas_offset or ""])



def inputs_by_row(samples: list[Sample]) -> list[tuple[str, list[Path], str]]:
    """(id, the row's input paths, where the row is) per sample: what a run must never touch
    (aiod.publish.check_targets)."""
    return [(s.id, [p for p in (s.image, s.ground_truth, s.atlas) if p is not None], _where(s.source, s.line, "id"))
            for s in samples]
