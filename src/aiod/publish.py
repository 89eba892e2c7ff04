"""What a run writes into --outdir, and the rules that keep the user's files safe.

A run publishes, per image, `<id>.ome.zarr` (the mask), `<id>.tif` (with --save_tiff) and last
`<id>.json` (the run's record). Three rules:

- **Inputs are never touched.** No published path may be an input, contain one, or lie inside
  one (an --outdir inside an input Zarr included): such a run is refused before any work
  (`check_targets`, run by CHECK_INPUT).
- **Only AIoD's own results are replaced.** A path already at a target is replaced only when it
  is a result that AIoD published before (its `<id>.json` record says so); anything else stops
  the run with a line naming it.
- **Complete or absent.** Each path is written under a hidden temporary name in --outdir and
  renamed into place once whole; the record comes last. A run that fails half-way (a full disk,
  a kill) leaves no half-written result under a published name.

All paths given here are absolute: main.nf resolves the user's paths against the launch folder.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from .errors import AiodError

SUFFIXES = (".ome.zarr", ".tif", ".objects.parquet", ".objects.csv", ".json")   # written in this order: the record last
TABLES = {".objects.parquet": "objects.parquet", ".objects.csv": "objects.csv"}  # published from the cache entry when it has them
RECORD_FORMAT = "aiod-record/1"
MODES = ("copy", "copyNoFollow", "symlink", "link")
TMP_PREFIX = ".aiod-partial-"


def targets(outdir: Path, sample_id: str) -> dict[str, Path]:
    return {suffix: Path(outdir) / f"{sample_id}{suffix}" for suffix in SUFFIXES}


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def is_aiod_record(path: Path) -> bool:
    """True for a run record that AIoD published (this format, or the fields of the earlier one)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and (
        record.get("format") == RECORD_FORMAT or {"id", "key", "cache_entry", "aiod_version"} <= record.keys())


def _listed(record_path: Path) -> set[str] | None:
    """The suffixes an AIoD record at `record_path` says it published; None when it is not one."""
    if not is_aiod_record(record_path):
        return None
    record = json.loads(Path(record_path).read_text())
    return set(record.get("published") or SUFFIXES) | {".json"}   # records before "published": all of them


def foreign(outdir: Path, sample_id: str) -> Path | None:
    """The first path at one of this image's targets that AIoD did not publish, else None."""
    paths = targets(outdir, sample_id)
    listed = _listed(paths[".json"]) or set()
    for suffix, path in paths.items():
        if (path.is_symlink() or path.exists()) and suffix not in listed:
            return path
    return None


def check_targets(ids_and_inputs: list[tuple[str, list[Path], str]], outdir: Path, root_dir: Path | None = None) -> None:
    """Refuse, before any work, a run whose results would touch an input or a file it did not
    write. `ids_and_inputs`: (sample id, its input paths, where the row is, for messages)."""
    outdir = Path(outdir)
    inputs = [(p, where) for _, paths, where in ids_and_inputs for p in paths]
    for p, where in inputs:
        if _real(outdir).is_relative_to(_real(p)) and _real(outdir) != _real(p):
            raise AiodError(f"--outdir {outdir}: lies inside the input {p} ({where}); results are never written into an "
                            "input: choose another --outdir")
        if root_dir is not None and _real(root_dir).is_relative_to(_real(p)):
            raise AiodError(f"--root_dir {root_dir}: lies inside the input {p} ({where}); choose another --root_dir")
    # Each path resolved once, overlaps found through parent folders: linear in rows, not quadratic.
    real_inputs: dict[Path, tuple[Path, str]] = {}
    holding: dict[Path, tuple[Path, str]] = {}  # a folder -> the first input below it
    for p, where in inputs:
        real = _real(p)
        real_inputs.setdefault(real, (p, where))
        for parent in real.parents:
            holding.setdefault(parent, (p, where))
    for sample_id, _, where in ids_and_inputs:
        for target in [*targets(outdir, sample_id).values(), *(outdir / f"{sample_id}{s}" for s in REGION_SUFFIXES)]:
            how = _touches(_real(target), real_inputs, holding)
            if how:
                verb, (p, p_where) = how
                raise AiodError(f"{where}: the result '{target}' {verb} the input '{p}' ({p_where}); "
                                "inputs are never modified: choose another --outdir or another id")
        other = foreign(outdir, sample_id)
        if other is not None:
            raise AiodError(f"{where}: '{other}' already exists and is not a result AIoD published; it is never "
                            "overwritten: move it away, or choose another --outdir or another id")
        try:
            check_region_tables(outdir, sample_id)
        except AiodError as exc:
            raise AiodError(f"{where}: {exc}") from None


REGION_SUFFIXES = (".regions.parquet", ".regions.csv")  # COUNT's, beside the result (not in the record)


def check_region_tables(outdir: Path, sample_id: str) -> None:
    """Refuse region tables that would replace files AIoD did not write."""
    for suffix in REGION_SUFFIXES:
        path = Path(outdir) / f"{sample_id}{suffix}"
        if (path.is_symlink() or path.exists()) and not _our_table(path):
            raise AiodError(f"'{path}' already exists and is not a table AIoD wrote; it is never overwritten: move it "
                            "away, or choose another --outdir or another id")


def _our_table(path: Path) -> bool:
    """A table that aiod.tables wrote (its Parquet carries AIoD's metadata; a CSV counts when
    its Parquet beside it does)."""
    if path.is_symlink() or not path.is_file():
        return False
    if path.suffix == ".csv":
        return _our_table(path.with_suffix(".parquet"))
    try:
        import pyarrow.parquet as pq
        return b"aiod" in (pq.read_schema(path).metadata or {})
    except Exception:  # not a Parquet file at all
        return False


RUN_FILES = ("comparison.json", "comparison.csv", "evaluation.json", "evaluation.csv", "report.html")
REPORT_MARK = b'<meta name="generator" content="AIoD report">'


def check_run_files(outdir: Path, ids_and_inputs: list[tuple[str, list[Path], str]]) -> None:
    """Refuse, before any work, a run whose tables or report (written once at its end, into
    `outdir`) would replace an input or a file that AIoD did not write."""
    real_inputs = {_real(p): (p, where) for _, paths, where in ids_and_inputs for p in paths}
    for name in RUN_FILES:
        path = Path(outdir) / name
        if _real(path) in real_inputs:
            p, where = real_inputs[_real(path)]
            raise AiodError(f"{where}: the run's '{path}' would replace the input '{p}'; choose another --outdir")
        if (path.is_symlink() or path.exists()) and not _our_run_file(path):
            raise AiodError(f"'{path}' already exists and is not a file AIoD wrote; it is never overwritten: move it "
                            "away, or choose another --outdir")


def _our_run_file(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    if path.suffix == ".csv":
        return _our_run_file(path.with_suffix(".json"))
    head = path.open("rb").read(4096)
    if path.suffix == ".html":
        return REPORT_MARK in head
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    # evaluation.json of `aiod evaluate` before it carried a format: thresholds, images, pooled
    return isinstance(data, dict) and (str(data.get("format", "")).startswith("aiod-")
                                       or {"thresholds", "images", "pooled"} <= set(data))


def _touches(target: Path, real_inputs: dict, holding: dict) -> tuple[str, tuple[Path, str]] | None:
    """How a resolved target would touch the inputs (`real_inputs`: resolved input -> the input;
    `holding`: folder -> an input below it): None when it does not."""
    if target in real_inputs:
        return "would replace", real_inputs[target]
    inside = next((real_inputs[parent] for parent in target.parents if parent in real_inputs), None)
    if inside is not None:
        return "would be written inside", inside
    if target in holding:
        return "would replace a folder holding", holding[target]
    return None


def publish(*, outdir: Path, sample_id: str, labels: Path, record: dict, mode: str, tiff_writer=None,
            image: tuple[Path, str | None] | None = None) -> dict[str, Path]:
    """Publish one image's result into `outdir`: labels (a cache entry's OME-Zarr) by `mode`,
    with `image` ((path, declared axes) of the input) written into it (aiod.result_image), the
    TIFF (`tiff_writer(path)` writes it) when asked, then the record. Returns what was written.
    Raises AiodError when a target holds something AIoD did not publish."""
    if mode not in MODES:
        raise AiodError(f"--publish_mode '{mode}': expected one of {', '.join(MODES)}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    other = foreign(outdir, sample_id)
    if other is not None:
        raise AiodError(f"'{other}' already exists and is not a result AIoD published; it is never overwritten: move "
                        "it away, or choose another --outdir")
    paths = targets(outdir, sample_id)
    staged: dict[str, Path] = {}
    try:
        record = {**record, "image_in_result": image is not None}
        if image is None:
            named, extra, write_image = _naming_image(Path(labels), record.get("image"), paths[".ome.zarr"]), set(), None
        else:
            named, extra, write_image = _image_in_result(Path(labels), *image)
        if not _published_before(paths, record, Path(labels), mode, named, extra):  # else an identical rerun keeps it
            def put(tmp):
                _put_tree(Path(labels), tmp, mode, named)
                if write_image is not None:
                    write_image(tmp)
            staged[".ome.zarr"] = _stage(paths[".ome.zarr"], put)
        if tiff_writer is not None:
            staged[".tif"] = _stage(paths[".tif"], tiff_writer)
        for suffix, name in TABLES.items():  # small: copied whatever the mode
            if (Path(labels).parent / name).is_file():
                staged[suffix] = _stage(paths[suffix], lambda tmp, src=Path(labels).parent / name: shutil.copyfile(src, tmp))
        published = {suffix: str(paths[suffix]) for suffix in (".ome.zarr", *staged)}
        record = {"format": RECORD_FORMAT, **record, "published": published}
        staged[".json"] = _stage(paths[".json"], lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
        for suffix in (".tif", *TABLES):  # an earlier run's (foreign() let it pass) must not sit beside this result
            if suffix not in staged and (paths[suffix].is_symlink() or paths[suffix].exists()):
                _remove(paths[suffix])
        for suffix in SUFFIXES:  # everything is written: now only renames, the record last
            if suffix in staged:
                _swap_in(staged.pop(suffix), paths[suffix])
    finally:
        for tmp in staged.values():
            _remove(tmp)
    return {suffix: paths[suffix] for suffix in published} | {".json": paths[".json"]}


def _naming_image(labels: Path, image, target: Path) -> dict[str, bytes]:
    """The label metadata files that name the input image in the published copy (aiod.ngff)."""
    if not image:
        return {}
    from . import ngff  # here: checking targets (CHECK_INPUT) needs none of zarr
    return ngff.naming_image(labels, Path(image), target)


def _image_in_result(labels: Path, path: Path, axes: str | None):
    """(named metadata files, the image's array names, a writer of its arrays into the published
    copy) for `--publish_image` (aiod.result_image)."""
    from . import imageio, result_image

    with imageio.open_image(Path(path), axes) as image:
        named = result_image.named_files(labels, image)

    def write(tmp: Path) -> None:
        with imageio.open_image(Path(path), axes) as source:
            result_image.write_levels(tmp, source, labels)

    return named, result_image.level_names(labels), write


def _published_before(paths: dict[str, Path], record: dict, labels: Path, mode: str, named: dict[str, bytes],
                      extra: set[str] = frozenset()) -> bool:
    """True when `<id>.ome.zarr` is what publishing `labels` by `mode` would write, untouched
    since an earlier run published it from the same cache entry: the same files, each with the
    size and modification time that copying gave it (the same inode for `link`, the same target
    for `symlink`), and the label metadata that names the image (`named`) with the same bytes.
    `extra`: the top-level folders written besides the entry's (the image's arrays, from the same
    image as before). Anything else (an edited or missing file, another entry, a moved image) is
    published again."""
    try:
        before = json.loads(paths[".json"].read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(before, dict) or before.get("cache_entry") != record.get("cache_entry") or (
            ".ome.zarr" not in (before.get("published") or {})) or bool(before.get("image_in_result")) != bool(extra) or (
            extra and before.get("image") != record.get("image")):
        return False
    target = paths[".ome.zarr"]
    if any((target / name).is_symlink() or not (target / name).is_dir() for name in extra):
        return False
    if mode == "symlink" and not named:
        return target.is_symlink() and _real(target) == _real(labels)
    if target.is_symlink() or not target.is_dir():
        return False
    if mode == "symlink":
        return _linked_before(labels, target, named, extra)
    source = {p.relative_to(labels): p for p in labels.rglob("*")}
    copied = {p.relative_to(target): p for p in target.rglob("*") if p.relative_to(target).parts[0] not in extra}
    if source.keys() != copied.keys():
        return False
    for name, src in source.items():
        dst = copied[name]
        if name.as_posix() in named:
            if dst.is_symlink() or not dst.is_file() or dst.read_bytes() != named[name.as_posix()]:
                return False
            continue
        if src.is_dir() or dst.is_dir() or dst.is_symlink():
            if src.is_dir() and dst.is_dir() and not dst.is_symlink():
                continue
            return False
        a, b = src.stat(), dst.stat()
        linked = (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)
        same = linked if mode == "link" else not linked and (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)
        if not same:
            return False
    return True


def _stage(target: Path, write) -> Path:
    """Write what goes to `target` under a hidden name beside it; return that name."""
    tmp = target.with_name(f"{TMP_PREFIX}{target.name}.{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _named_dirs(named: dict[str, bytes]) -> set[str]:
    """The folders (relative, '' the top) that hold the rewritten label metadata files."""
    return {"/".join(Path(rel).parts[:i]) for rel in named for i in range(len(Path(rel).parts))}


def _linked_before(labels: Path, target: Path, named: dict[str, bytes], extra: set[str] = frozenset()) -> bool:
    """`_published_before` for `symlink` with named metadata: the tree `_link_tree` makes (and
    the top-level folders of `extra` beside it)."""
    dirs = _named_dirs(named)
    for rel in sorted(dirs):
        src, dst = labels / rel, target / rel
        if dst.is_symlink() or not dst.is_dir() or (
                {p.name for p in src.iterdir()} != {p.name for p in dst.iterdir()} - (extra if rel == "" else set())):
            return False
        for item in src.iterdir():
            name = f"{rel}/{item.name}" if rel else item.name
            there = dst / item.name
            if name in named:
                if there.is_symlink() or not there.is_file() or there.read_bytes() != named[name]:
                    return False
            elif name not in dirs and not (there.is_symlink() and _real(there) == _real(item)):
                return False
    return True


def _link_tree(source: Path, tmp: Path, named: dict[str, bytes]) -> None:
    """`symlink` with named metadata: the folders that hold it are made, each file of `named`
    written, and everything else beside them linked to the cache entry (the arrays included)."""
    dirs = _named_dirs(named)
    for rel in sorted(dirs):
        (tmp / rel).mkdir()
        for item in (source / rel).iterdir():
            name = f"{rel}/{item.name}" if rel else item.name
            if name in named:
                (tmp / name).write_bytes(named[name])
            elif name not in dirs:
                os.symlink(_real(item), tmp / name)


def _put_tree(source: Path, tmp: Path, mode: str, named: dict[str, bytes]) -> None:
    """Publish the cache entry's OME-Zarr `source` at `tmp` by `mode`; the files of `named`
    (relative path -> bytes) are written in place of the entry's, never through a hard link."""
    if mode == "symlink":
        if named:
            _link_tree(source, tmp, named)
        else:
            os.symlink(_real(source), tmp)
        return
    if mode == "link":
        try:
            shutil.copytree(source, tmp, copy_function=os.link)
        except shutil.Error as exc:
            raise AiodError(f"--publish_mode link: cannot hard-link the cache entry {source} into {tmp.parent} "
                            f"(different filesystems?); use copy or symlink ({exc.args[0][0][2] if exc.args else exc})") from None
    else:  # copy, copyNoFollow: the cache holds no links, both copy the bytes
        shutil.copytree(source, tmp, symlinks=(mode == "copyNoFollow"))
    for rel, data in named.items():  # a new file renamed over the copy (or the hard link)
        part = (tmp / rel).with_name(f".{Path(rel).name}.{uuid.uuid4().hex[:8]}")
        part.write_bytes(data)
        os.replace(part, tmp / rel)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename a staged path into place; an earlier AIoD result there is swapped out, then removed."""
    old = None
    if target.is_symlink() or target.exists():
        old = target.with_name(f"{TMP_PREFIX}{target.name}.old.{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    """Delete a published path: a link is unlinked (never followed into the cache)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
