"""`aiod cache ls|info|verify|clear`: what a person sees and what is deleted (only what was asked)."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from aiod import cli
from aiod.cache import Cache


def result(folder, sample_id, *, family="classical", payload=b"labels"):
    (folder / "labels.ome.zarr").mkdir(parents=True)
    (folder / "labels.ome.zarr" / "c0").write_bytes(payload)
    (folder / "manifest.json").write_text(json.dumps({
        "id": sample_id, "image": {"path": f"/data/{sample_id}.tif", "shape": [8, 8]},
        "model": {"family": family, "version": "v1", "task": "nuclei", "params": {"sigma": 1.5}},
        "plan": {"grid": [2, 2], "overlap": [24, 24], "substacks": [{}, {}, {}, {}]}, "n_objects": 7,
        "timings": {"merge_seconds": 1.234, "substacks": {"0": {"segment_seconds": 2.0, "read_seconds": 0.5}}},
        "created": "2026-11-29T10:00:00+0000"}))
    return folder


@pytest.fixture
def root(tmp_path):
    cache = Cache(tmp_path / "root")
    cache.commit(result(tmp_path / "a", "img_a"), "classical", "v1", "aa11" + "0" * 60)
    cache.commit(result(tmp_path / "b", "img_b"), "classical", "v1", "aa22" + "0" * 60)
    cache.commit(result(tmp_path / "c", "img_c", family="stardist"), "stardist", "v1", "cc33" + "0" * 60)
    (tmp_path / "root" / "aiod_cache" / "classical" / "checkpoints").mkdir()
    (tmp_path / "root" / "aiod_cache" / "classical" / "checkpoints" / "w.bin").write_bytes(b"w" * 2048)
    (tmp_path / "root" / "work").mkdir()
    (tmp_path / "root" / "work" / "f").write_bytes(b"x" * 3072)
    return tmp_path / "root"


def entry(root, key4, family="classical"):
    return root / "aiod_cache" / family / "v1_masks" / (key4 + "0" * 60)


def aiod(capsys, *args):
    code = cli.main(["cache", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_ls_lists_each_result_with_its_size_and_totals_per_kind(root, capsys):
    code, lines, _ = aiod(capsys, "ls", "--root-dir", str(root))
    assert code == 0
    assert [ln.split()[:3] for ln in lines[1:4]] == [["aa1100000000", "classical/v1", "img_a"],
                                                     ["aa2200000000", "classical/v1", "img_b"],
                                                     ["cc3300000000", "stardist/v1", "img_c"]]
    size = sum(p.stat().st_size for p in entry(root, "aa11").rglob("*") if p.is_file())
    assert f"{size} B" in lines[1]
    assert lines[-1].endswith("checkpoints 2.0 KiB, damaged 0 B, conda envs 0 B, work 3.0 KiB")


def test_ls_filters_by_family_and_image(root, capsys):
    _, lines, _ = aiod(capsys, "ls", "--root-dir", str(root), "--family", "classical", "--image", "img_b")
    assert [ln.split()[0] for ln in lines[1:-2]] == ["aa2200000000"]


def test_ls_filters_by_age(root, capsys):
    os.utime(entry(root, "aa11"), (time.time() - 3 * 86400, time.time() - 3 * 86400))
    _, lines, _ = aiod(capsys, "ls", "--root-dir", str(root), "--older-than", "2d")
    assert [ln.split()[0] for ln in lines[1:-2]] == ["aa1100000000"]


def test_an_age_without_unit_is_refused_in_one_line(root, capsys):
    code, _, err = aiod(capsys, "ls", "--root-dir", str(root), "--older-than", "30")
    assert code == 65
    assert err == "AIOD ERROR: --older-than: '30' is not an age (expected a number and a unit: s, m, h, d or w, e.g. '30d')\n"


def test_info_shows_the_manifest_of_the_entry_a_unique_prefix_names(root, capsys):
    code, lines, _ = aiod(capsys, "info", "--root-dir", str(root), "cc")
    assert code == 0
    assert lines[0] == f"key: cc33{'0' * 60}"
    assert "state: complete (sizes checked; 'aiod cache verify' reads every byte)" in lines
    assert "  params: {sigma: 1.5}" in lines and "id: img_c" in lines
    assert "timings: {merge_seconds: 1.23, segment_seconds: 2.0, read_seconds: 0.5}" in lines


def test_info_refuses_a_prefix_of_two_keys(root, capsys):
    code, _, err = aiod(capsys, "info", "--root-dir", str(root), "aa")
    assert (code, err) == (65, f"AIOD ERROR: {root / 'aiod_cache'}: key prefix 'aa' matches 2 entries; give more characters\n")


def test_info_refuses_an_unknown_key(root, capsys):
    code, _, err = aiod(capsys, "info", "--root-dir", str(root), "ff")
    assert (code, err) == (65, f"AIOD ERROR: {root / 'aiod_cache'}: no cache entry has a key starting with 'ff' (see 'aiod cache ls')\n")


def test_verify_all_passes_whole_entries(root, capsys):
    code, lines, _ = aiod(capsys, "verify", "--root-dir", str(root), "--all")
    assert code == 0 and lines[-1] == "3 entries checked, 0 damaged"


def test_verify_moves_an_entry_with_a_changed_byte_aside_and_fails(root, capsys):
    (entry(root, "aa22") / "labels.ome.zarr" / "c0").write_bytes(b"LABELS")
    code, lines, err = aiod(capsys, "verify", "--root-dir", str(root), "aa2", "cc")
    assert code == 1
    assert not entry(root, "aa22").exists()
    [moved] = (root / "aiod_cache" / ".damaged" / "classical" / "v1").iterdir()
    assert lines == [f"DAMAGED  aa2200000000  classical/v1  img_b: labels.ome.zarr/c0 does not match its blake2b checksum; moved to {moved}",
                     "ok       cc3300000000  stardist/v1  img_c", "2 entries checked, 1 damaged"]
    assert err.startswith(f"AIOD WARNING: damaged cache entry {entry(root, 'aa22')}")


def test_verify_needs_keys_or_all(root, capsys):
    code, _, err = aiod(capsys, "verify", "--root-dir", str(root))
    assert (code, err) == (65, "AIOD ERROR: aiod cache verify: give the keys to check, or --all (not both)\n")


def test_clear_without_yes_only_lists_what_would_go(root, capsys):
    code, lines, _ = aiod(capsys, "clear", "--root-dir", str(root), "--family", "classical")
    assert code == 0 and lines[-1] == "2 would be deleted; run again with --yes to delete"
    assert lines[0].startswith("would delete aa1100000000  classical/v1  img_a")
    assert entry(root, "aa11").exists() and entry(root, "aa22").exists()


def test_clear_yes_deletes_only_the_chosen_results(root, capsys):
    code, lines, _ = aiod(capsys, "clear", "--root-dir", str(root), "--family", "classical", "--yes")
    assert code == 0 and lines[-1] == "2 deleted"
    assert sorted(p.name for p in (root / "aiod_cache" / "classical" / "v1_masks").iterdir()) == []
    assert entry(root, "cc33", "stardist").exists()
    assert (root / "aiod_cache" / "classical" / "checkpoints" / "w.bin").exists() and (root / "work" / "f").exists()


def test_clear_keeps_an_entry_a_live_run_holds(root, capsys):
    claim = root / "aiod_cache" / ".claims" / "classical" / "v1_masks" / ("aa11" + "0" * 60)
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"token": "t" * 32, "host": socket.gethostname(), "pid": os.getppid(), "time": time.time()}))
    _, lines, _ = aiod(capsys, "clear", "--root-dir", str(root), "--family", "classical", "--yes")
    assert lines[0].startswith(f"kept     aa1100000000  classical/v1  img_a: held by run tttttttt on {socket.gethostname()}")
    assert entry(root, "aa11").exists() and not entry(root, "aa22").exists()


def test_clear_leaves_a_linked_folder_outside_the_cache_alone(root, tmp_path, capsys):
    outside = result(tmp_path / "outside", "img_x")
    Cache(root).commit(outside, "classical", "v1", "ee55" + "0" * 60)
    real = entry(root, "ee55")
    os.rename(real, tmp_path / "moved")
    os.symlink(tmp_path / "moved", real)
    aiod(capsys, "clear", "--root-dir", str(root), "--yes")
    assert (tmp_path / "moved" / "manifest.json").exists()


def test_clear_damaged_deletes_the_copies_set_aside(root, capsys):
    (entry(root, "aa11") / "manifest.json").unlink()
    assert Cache(root).lookup("classical", "v1", "aa11" + "0" * 60) is None
    _, lines, _ = aiod(capsys, "clear", "--root-dir", str(root), "--damaged", "--yes")
    assert lines[-1] == "1 deleted"
    assert list((root / "aiod_cache" / ".damaged" / "classical" / "v1").iterdir()) == []
    assert entry(root, "aa22").exists()
