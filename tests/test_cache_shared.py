"""A lab shares one root_dir: what one user's runs put in the cache, another user of the group
reuses and extends (two real uids, so this runs as root only)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
GROUP, FIRST_USER, SECOND_USER = 47401, 47402, 47403



def python_for_everyone() -> str | None:
    """An interpreter that another uid can run (the cache needs only the standard library)."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if candidate and Path(candidate).exists():
            real = Path(candidate).resolve()
            if all(p.stat().st_mode & stat.S_IXOTH for p in [real, *real.parents]):
                return str(real)
    return None


PYTHON = python_for_everyone()
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or PYTHON is None,
                                reason="needs root to act as two users, and a Python they can run")

AS_USER = """
import json, sys
from pathlib import Path
from aiod.cache import Cache
root, action, key = sys.argv[1:4]
cache = Cache(root)
if action == "commit":
    src = Path(root).parent / f"result-{key}"
    cache.commit(src, "classical", "v1", key)
elif action == "lookup":
    print(cache.lookup("classical", "v1", key) is not None)
"""


@pytest.fixture
def lab():
    """A group-writable, setgid root_dir outside the private pytest folder (other uids must reach it)."""
    top = Path(tempfile.mkdtemp(prefix="aiod-lab-", dir="/tmp"))
    top.chmod(0o755)
    root = top / "root"
    root.mkdir()
    os.chown(root, 0, GROUP)
    root.chmod(0o2775)
    for key in ("k1", "k2"):
        folder = top / f"result-{key}"
        (folder / "labels.ome.zarr").mkdir(parents=True)
        (folder / "labels.ome.zarr" / "c0").write_bytes(key.encode())
        (folder / "manifest.json").write_text(json.dumps({"id": key}))
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    yield root
    shutil.rmtree(top)


def as_user(uid, *args):
    return subprocess.run([PYTHON, "-c", AS_USER, *map(str, args)], user=uid, group=GROUP, extra_groups=[GROUP],
                          umask=0o022, env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, check=True)


def test_a_second_user_of_the_group_reuses_and_extends_the_cache(lab):
    as_user(FIRST_USER, lab, "commit", "k1")
    assert as_user(SECOND_USER, lab, "lookup", "k1").stdout == "True\n"
    as_user(SECOND_USER, lab, "commit", "k2")
    assert as_user(FIRST_USER, lab, "lookup", "k2").stdout == "True\n"


def test_entries_are_group_writable_and_keep_the_root_dirs_group(lab):
    as_user(FIRST_USER, lab, "commit", "k1")
    entry = lab / "aiod_cache" / "classical" / "v1_masks" / "k1"
    for path in [entry.parent, entry, entry / "labels.ome.zarr", entry / "labels.ome.zarr" / "c0", entry / "manifest.json"]:
        st = path.stat()
        assert st.st_gid == GROUP and st.st_mode & stat.S_IWGRP, path
    assert entry.stat().st_mode & stat.S_ISGID


def test_a_second_user_can_set_aside_a_damaged_entry_of_the_first(lab):
    as_user(FIRST_USER, lab, "commit", "k1")
    (lab / "aiod_cache" / "classical" / "v1_masks" / "k1" / "labels.ome.zarr" / "c0").unlink()
    assert as_user(SECOND_USER, lab, "lookup", "k1").stdout == "False\n"
    assert len(list((lab / "aiod_cache" / ".damaged" / "classical" / "v1").iterdir())) == 1
