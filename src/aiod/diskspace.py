"""A full disk (ENOSPC) or an exceeded quota (EDQUOT) said in one line: which path and
filesystem, how much is free there, and how much the step meant to write.

A step that knows what it is about to write calls `expect(path, nbytes)` first; the CLI turns
the OSError into `message(...)` (src/aiod/cli.py main).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)
_expected: dict = {}


def expect(path, nbytes: int) -> None:
    """Record that this process is about to write about `nbytes` at `path` (the last call wins)."""
    _expected.update(path=Path(path), nbytes=int(nbytes))


def reset() -> None:
    """Forget the expected write (a new command starts)."""
    _expected.clear()


def full_error(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT OSError that `exc` is or was raised from (libraries wrap it), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in FULL:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def human(n: int) -> str:
    """Bytes as people read them: 512 B, 64.0 KiB, 1.5 GiB (powers of 1024)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    """The root of the filesystem that holds `path` (or its nearest existing folder)."""
    path = _existing(path)
    device = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def message(exc: OSError, fallback: Path | None = None) -> str:
    """One line for a full disk: the path written (from the error, else the step's expected
    write, else `fallback`), its filesystem's free and total space, and the planned size."""
    path = exc.filename or _expected.get("path") or fallback or Path.cwd()
    usage = shutil.disk_usage(_existing(Path(path)))
    what = "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device"
    line = (f"{path}: {what}: the filesystem at {mount_point(Path(path))} has {human(usage.free)} free "
            f"of {human(usage.total)}")
    if _expected.get("nbytes"):
        line += f"; this step writes up to {human(_expected['nbytes'])}"
    return line + "; free space there or choose a --root_dir/--outdir on a larger filesystem"
