"""A full disk stops a step with one line: the path, its filesystem's free and total space, and
what the step meant to write. The filesystem is real: a 64 KiB tmpfs mounted for the test and
filled before the step runs (root in a container that allows mounts; skipped elsewhere)."""

from __future__ import annotations

import errno
import subprocess

import numpy as np
import pytest
import tifffile

from aiod import cli, diskspace, planner
from aiod.errors import EXIT_CODE
from aiod.steps import plan as plan_step


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs with no space left."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        with open(mnt / "filler", "wb", buffering=0) as fh:
            with pytest.raises(OSError) as err:
                while True:
                    fh.write(b"\0" * 4096)
            assert err.value.errno == errno.ENOSPC
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_demo_data_on_a_full_disk_says_which_filesystem_is_full(full_disk, capsys):
    code = cli.main(["demo-data", str(full_disk / "demo")])
    lines = capsys.readouterr().err.splitlines()
    assert code == EXIT_CODE and len(lines) == 1
    assert lines[0].startswith(f"AIOD ERROR: {full_disk / 'demo'}")
    assert lines[0].endswith(f": no space left on device: the filesystem at {full_disk} has 0 B free of 64.0 KiB; "
                             "free space there or choose a --root_dir/--outdir on a larger filesystem")


def test_segment_on_a_full_disk_says_how_much_it_writes(tmp_path, full_disk, capsys):
    tifffile.imwrite(tmp_path / "img.tif", np.full((96, 96), 5, np.uint16))
    assert cli.main(["resolve-model", "--model", "classical", "--version", "nuclei", "--out", str(tmp_path / "model.json")]) == 0
    job = plan_step.plan(image_path=tmp_path / "img.tif", sample_id="img", axes=None, channel=None,
                         model_json=tmp_path / "model.json", num_substacks="2", overlap="24", substack_memory="2 GB",
                         root_dir=tmp_path / "root", fingerprint_mode="sample", out=tmp_path / "plan.json")
    box = planner.Plan.from_dict(job["plan"]).substacks[0].box
    labels_bytes = 4 * int(np.prod([b - a for a, b in box]))
    capsys.readouterr()
    code = cli.main(["segment", "--plan", str(tmp_path / "plan.json"), "--image", str(tmp_path / "img.tif"),
                     "--index", "0", "--out", str(full_disk / "s0.zarr")])
    lines = capsys.readouterr().err.splitlines()
    assert code == EXIT_CODE and len(lines) == 1
    assert lines[0].startswith(f"AIOD ERROR: {full_disk / 's0.zarr'}")
    assert lines[0].endswith(f": no space left on device: the filesystem at {full_disk} has 0 B free of 64.0 KiB; "
                             f"this step writes up to {diskspace.human(labels_bytes)}; free space there or choose a "
                             "--root_dir/--outdir on a larger filesystem")


def test_a_wrapped_quota_error_is_found_and_named(tmp_path):
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "x"))
        except OSError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as outer:
        full = diskspace.full_error(outer)
    assert full is not None and full.errno == errno.EDQUOT
    assert diskspace.message(full).startswith(f"{tmp_path / 'x'}: disk quota exceeded: the filesystem at ")


def test_other_os_errors_are_not_taken_for_a_full_disk():
    assert diskspace.full_error(OSError(errno.EACCES, "Permission denied")) is None


@pytest.mark.parametrize("n, text", [(512, "512 B"), (65536, "64.0 KiB"), (3 << 29, "1.5 GiB")])
def test_sizes_are_written_in_powers_of_1024(n, text):
    assert diskspace.human(n) == text

