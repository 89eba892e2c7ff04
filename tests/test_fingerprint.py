"""aiod.fingerprint: the image's identity in the cache key (every byte by default, memoised by
file identity under root_dir; a bounded sample only when asked for)."""

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import tifffile
import zarr

from aiod import cli
from aiod import fingerprint as fingerprint_module
from aiod.errors import InputError, ParameterError
from aiod.fingerprint import fingerprint

CENTRE = (1024, 1024)


def ramp(shape, dtype="uint16"):
    return (np.arange(int(np.prod(shape))) % 65521).astype(dtype).reshape(shape)


def settle(path, seconds_ago=60):
    """Date a file (or every file of a store) in the past, as an image that is not being written."""
    t = time.time_ns() - seconds_ago * 1_000_000_000
    for p in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        os.utime(p, ns=(t, t))


@pytest.fixture
def big_tiff(tmp_path):
    """An 8 MB 2048x2048 uint16 TIFF, and a copy of it with the centre pixel changed."""
    data = ramp((2048, 2048))
    tifffile.imwrite(tmp_path / "a.tif", data)
    data[CENTRE] += 1
    tifffile.imwrite(tmp_path / "b.tif", data)
    return tmp_path / "a.tif", tmp_path / "b.tif"


@pytest.fixture
def reads(monkeypatch):
    """Paths whose content the fingerprint read, in order."""
    seen, real = [], fingerprint_module._hash_content
    monkeypatch.setattr(fingerprint_module, "_hash_content", lambda path, *a: seen.append(path) or real(path, *a))
    return seen


def _poke(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x07")


# --------------------------------------------------------------------------- what is seen


def test_one_pixel_changed_in_the_middle_of_an_8_mb_tiff_changes_the_default_fingerprint(big_tiff):
    a, b = big_tiff
    assert a.stat().st_size > 8 << 20
    assert fingerprint(a) != fingerprint(b)
    assert len(fingerprint(a)) == 32  # XXH3-128, hex


def test_sample_mode_does_not_see_that_pixel_which_is_why_it_is_opt_in(big_tiff):
    a, b = big_tiff
    assert fingerprint(a, mode="sample") == fingerprint(b, mode="sample")


def test_a_copy_at_another_path_has_the_same_fingerprint(tmp_path, big_tiff):
    a, _ = big_tiff
    (tmp_path / "other").mkdir()
    shutil.copy(a, tmp_path / "other" / "renamed.tif")
    settle(a)
    index = tmp_path / "index"
    assert fingerprint(a, index_dir=index) == fingerprint(tmp_path / "other" / "renamed.tif", index_dir=index)
    assert fingerprint(a, index_dir=index) == fingerprint(tmp_path / "other" / "renamed.tif")


def test_fingerprint_changes_with_a_pixel_of_a_small_file(tmp_path):
    data = ramp((50, 60))
    tifffile.imwrite(tmp_path / "a.tif", data)
    data[25, 30] += 1
    tifffile.imwrite(tmp_path / "b.tif", data)
    assert fingerprint(tmp_path / "a.tif") != fingerprint(tmp_path / "b.tif")


def test_an_edited_zarr_chunk_changes_the_fingerprint(tmp_path):
    arr = zarr.create_array(tmp_path / "a.zarr", shape=(400, 400), chunks=(10, 10), dtype="uint16")
    arr[...] = ramp((400, 400))
    settle(tmp_path / "a.zarr")
    index = tmp_path / "index"
    before = fingerprint(tmp_path / "a.zarr", index_dir=index)
    arr[205, 195] = 7  # one chunk of 1,600, far from any sampled one
    assert fingerprint(tmp_path / "a.zarr", index_dir=index) != before
    assert fingerprint(tmp_path / "a.zarr") != before


def test_zarr_fingerprint_is_path_independent(tmp_path):
    arr = zarr.create_array(tmp_path / "a.zarr", shape=(40, 40), chunks=(10, 10), dtype="uint16")
    arr[...] = ramp((40, 40))
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "copy.zarr")
    for mode in ("full", "sample"):
        assert fingerprint(tmp_path / "a.zarr", mode=mode) == fingerprint(tmp_path / "copy.zarr", mode=mode)


def test_fingerprint_of_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        fingerprint(tmp_path / "x.tif")


# --------------------------------------------------------------------------- the memo index


def test_an_unchanged_file_is_not_read_again(tmp_path, big_tiff, reads):
    a, _ = big_tiff
    settle(a)
    first = fingerprint(a, index_dir=tmp_path / "index")
    assert fingerprint(a, index_dir=tmp_path / "index") == first
    assert reads == [a]


def test_remembered_gives_the_memoised_fingerprint_without_reading_and_none_once_the_file_changed(tmp_path, big_tiff, reads):
    a, _ = big_tiff
    settle(a)
    assert fingerprint_module.remembered(a, "full", tmp_path / "index") is None
    first = fingerprint(a, index_dir=tmp_path / "index")
    assert fingerprint_module.remembered(a, "full", tmp_path / "index") == first
    assert fingerprint_module.remembered(a, "sample", tmp_path / "index") is None  # another mode, another memo
    settle(a, seconds_ago=30)
    assert fingerprint_module.remembered(a, "full", tmp_path / "index") is None
    assert reads == [a]


def test_a_touched_file_is_read_again_and_keeps_its_fingerprint(tmp_path, big_tiff, reads):
    a, _ = big_tiff
    settle(a, seconds_ago=60)
    first = fingerprint(a, index_dir=tmp_path / "index")
    settle(a, seconds_ago=30)  # same bytes, a new mtime
    assert fingerprint(a, index_dir=tmp_path / "index") == first
    assert reads == [a, a]


def test_an_edited_file_is_read_again(tmp_path, big_tiff, reads):
    a, _ = big_tiff
    settle(a)
    first = fingerprint(a, index_dir=tmp_path / "index")
    _poke(a, a.stat().st_size // 2)  # same size and inode, a new mtime
    assert fingerprint(a, index_dir=tmp_path / "index") != first
    assert reads == [a, a]


def test_a_file_written_moments_ago_is_not_memoised(tmp_path, big_tiff, reads):
    """Timestamps are coarse: a second edit within the same tick would keep the memo's identity."""
    a, _ = big_tiff
    fingerprint(a, index_dir=tmp_path / "index")
    fingerprint(a, index_dir=tmp_path / "index")
    assert reads == [a, a]
    assert not list((tmp_path / "index").rglob("*.json"))


def test_a_corrupt_index_file_is_ignored_and_rewritten(tmp_path, big_tiff, reads):
    a, _ = big_tiff
    settle(a)
    first = fingerprint(a, index_dir=tmp_path / "index")
    (memo,) = (tmp_path / "index").rglob("*.json")
    memo.write_text('{"path": "' + str(a.resolve())[:5])  # cut in half
    assert fingerprint(a, index_dir=tmp_path / "index") == first
    assert json.loads(memo.read_text())["fingerprint"] == first
    assert reads == [a, a]


def test_a_memo_of_another_shape_is_ignored(tmp_path, big_tiff):
    a, _ = big_tiff
    settle(a)
    first = fingerprint(a, index_dir=tmp_path / "index")
    (memo,) = (tmp_path / "index").rglob("*.json")
    memo.write_text("[1, 2]")
    assert fingerprint(a, index_dir=tmp_path / "index") == first


def test_concurrent_writers_leave_one_whole_memo(tmp_path, big_tiff):
    a, _ = big_tiff
    settle(a)
    results = []
    threads = [threading.Thread(target=lambda: results.append(fingerprint(a, index_dir=tmp_path / "index")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert [json.loads(p.read_text())["fingerprint"] for p in (tmp_path / "index").rglob("*")
            if p.is_file()] == results[:1]


def test_a_memo_is_kept_per_mode(tmp_path, big_tiff):
    a, _ = big_tiff
    settle(a)
    full = fingerprint(a, index_dir=tmp_path / "index")
    assert fingerprint(a, mode="sample", index_dir=tmp_path / "index") == fingerprint(a, mode="sample") != full


# --------------------------------------------------------------------------- sample mode


def _big_sparse_tiff(path, planes=200):
    tifffile.imwrite(path, shape=(planes, 1000, 1000), dtype="uint8")  # sparse on disk
    return path.stat().st_size


def test_sample_fingerprint_of_a_200_mb_file_reads_a_bounded_sample(tmp_path):
    path = tmp_path / "big.tif"
    size = _big_sparse_tiff(path)
    assert size > 200e6
    started = time.perf_counter()
    before = fingerprint(path, mode="sample")
    assert time.perf_counter() - started < 2.0
    _poke(path, size // 2 + 12345)  # between two sampled windows: not seen by "sample"
    assert fingerprint(path, mode="sample") == before


def test_sample_fingerprint_sees_a_change_inside_a_sampled_window(tmp_path):
    path = tmp_path / "big.tif"
    size = _big_sparse_tiff(path, planes=50)
    before = fingerprint(path, mode="sample")
    window = 8 * (size - fingerprint_module._WINDOW) // (fingerprint_module._N_WINDOWS + 1)
    _poke(path, window + 100)
    assert fingerprint(path, mode="sample") != before


def test_zarr_sample_fingerprint_samples_at_most_16_chunks_and_marks_missing_ones(tmp_path):
    arr = zarr.create_array(tmp_path / "s.zarr", shape=(100, 100), chunks=(10, 10), dtype="u1")
    assert len(fingerprint_module._sample_chunk_coords((10, 10))) == 16
    fp = fingerprint(tmp_path / "s.zarr", mode="sample")  # no chunk written: all are missing markers
    arr[0:10, 0:10] = 1  # chunk (0, 0) is always sampled
    assert fingerprint(tmp_path / "s.zarr", mode="sample") != fp


# --------------------------------------------------------------------------- the mode


def test_an_unknown_mode_is_refused_in_one_line(big_tiff):
    with pytest.raises(ParameterError) as e:
        fingerprint(big_tiff[0], mode="fast")
    assert str(e.value) == "--fingerprint 'fast': expected one of full, sample"


def test_aiod_plan_refuses_an_unknown_mode_with_one_aiod_error_line(tmp_path, capsys):
    code = cli.main(["plan", "--id", "a", "--image", str(tmp_path / "a.tif"), "--model", str(tmp_path / "m.json"),
                     "--root-dir", str(tmp_path / "root"), "--fingerprint", "fast", "--out", str(tmp_path / "p.json")])
    assert code == 65
    assert capsys.readouterr().err == "AIOD ERROR: --fingerprint 'fast': expected one of full, sample\n"
    assert not (tmp_path / "root").exists()
