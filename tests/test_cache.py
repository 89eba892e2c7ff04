"""The result cache: stable keys, atomic commits, one winner for concurrent commits."""

from __future__ import annotations

import hashlib
import json
import os
import threading

from aiod.cache import Cache, cache_key


def make_result(folder, marker):
    folder.mkdir(parents=True)
    (folder / "labels.ome.zarr").mkdir()
    (folder / "labels.ome.zarr" / "data").write_text(marker)
    (folder / "manifest.json").write_text(json.dumps({"marker": marker}))
    return folder


def test_key_is_independent_of_dict_order_and_changes_with_any_value():
    a = cache_key({"image": {"fingerprint": "f", "shape": [2, 3]}, "model": {"params": {"x": 1, "y": 2}}})
    b = cache_key({"model": {"params": {"y": 2, "x": 1}}, "image": {"shape": [2, 3], "fingerprint": "f"}})
    c = cache_key({"model": {"params": {"y": 2, "x": 1.5}}, "image": {"shape": [2, 3], "fingerprint": "f"}})
    assert a == b != c and len(a) == 64


def test_commit_makes_the_result_visible_under_its_key(tmp_path):
    cache = Cache(tmp_path / "root")
    assert cache.lookup("classical", "nuclei", "k1") is None
    entry = cache.commit(make_result(tmp_path / "r", "one"), "classical", "nuclei", "k1")
    assert entry == tmp_path / "root" / "aiod_cache" / "classical" / "nuclei_masks" / "k1"
    assert cache.lookup("classical", "nuclei", "k1") == entry
    assert (entry / "labels.ome.zarr" / "data").read_text() == "one"
    assert (tmp_path / "r" / "manifest.json").exists()  # the source is copied, not consumed


def test_a_folder_without_manifest_is_not_a_result(tmp_path):
    cache = Cache(tmp_path)
    cache.entry("classical", "nuclei", "k").mkdir(parents=True)
    assert cache.lookup("classical", "nuclei", "k") is None


def test_second_commit_of_a_key_keeps_the_first_and_leaves_no_temporary(tmp_path):
    cache = Cache(tmp_path / "root")
    cache.commit(make_result(tmp_path / "a", "first"), "classical", "nuclei", "k")
    entry = cache.commit(make_result(tmp_path / "b", "second"), "classical", "nuclei", "k")
    assert (entry / "labels.ome.zarr" / "data").read_text() == "first"
    assert [p.name for p in entry.parent.iterdir()] == ["k"]


def test_concurrent_commits_give_one_complete_result(tmp_path):
    cache = Cache(tmp_path / "root")
    sources = [make_result(tmp_path / f"s{i}", f"v{i}") for i in range(6)]
    threads = [threading.Thread(target=cache.commit, args=(s, "classical", "nuclei", "k")) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entry = cache.lookup("classical", "nuclei", "k")
    marker = json.loads((entry / "manifest.json").read_text())["marker"]
    assert (entry / "labels.ome.zarr" / "data").read_text() == marker
    assert [p.name for p in entry.parent.iterdir()] == ["k"]


def test_stale_temporaries_are_removed_on_the_next_commit(tmp_path):
    cache = Cache(tmp_path / "root")
    stale = cache.entry("classical", "nuclei", "x").parent / ".tmp-x-dead"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))
    cache.commit(make_result(tmp_path / "a", "a"), "classical", "nuclei", "k")
    assert not stale.exists()


def test_ensure_writes_the_root_readme_once(tmp_path):
    cache = Cache(tmp_path / "root")
    cache.ensure()
    readme = tmp_path / "root" / "README.md"
    assert "aiod_cache/<family>/<version>_masks/<key>/" in readme.read_text()
    readme.write_text("edited by the lab")
    cache.ensure()
    assert readme.read_text() == "edited by the lab"


# Damaged entries: never a hit, moved aside (never deleted), never blocking their key.

def committed(tmp_path, key="k"):
    cache = Cache(tmp_path / "root")
    entry = cache.commit(make_result(tmp_path / f"r-{key}", "one"), "classical", "nuclei", key)
    return cache, entry


def damaged_copies(cache):
    return sorted((cache.dir / ".damaged" / "classical" / "nuclei").iterdir())


def test_commit_records_size_and_checksum_of_every_file_but_the_manifest(tmp_path):
    _cache, entry = committed(tmp_path)
    files = json.loads((entry / "manifest.json").read_text())["files"]
    assert files == {"labels.ome.zarr/data": {"size": 3, "blake2b": hashlib.blake2b(b"one").hexdigest()}}


def test_commit_keeps_the_results_manifest_fields(tmp_path):
    _cache, entry = committed(tmp_path)
    assert json.loads((entry / "manifest.json").read_text())["marker"] == "one"


def test_entry_with_a_missing_file_is_a_miss_and_is_moved_aside_with_a_warning(tmp_path, capsys):
    cache, entry = committed(tmp_path)
    (entry / "labels.ome.zarr" / "data").unlink()
    assert cache.lookup("classical", "nuclei", "k") is None
    assert not entry.exists()
    [moved] = damaged_copies(cache)
    assert moved.name.startswith("k-") and (moved / "manifest.json").is_file()
    err = capsys.readouterr().err.splitlines()
    assert err == [f"AIOD WARNING: damaged cache entry {entry}: labels.ome.zarr/data is missing; "
                   f"moved to {moved}, the result will be computed again"]


def test_entry_with_a_short_file_is_a_miss(tmp_path, capsys):
    cache, entry = committed(tmp_path)
    (entry / "labels.ome.zarr" / "data").write_text("on")
    assert cache.lookup("classical", "nuclei", "k") is None
    assert "labels.ome.zarr/data has 2 bytes, the manifest says 3" in capsys.readouterr().err


def test_entry_with_a_changed_byte_is_a_hit_without_verify_and_a_miss_with_it(tmp_path, capsys):
    cache, entry = committed(tmp_path)
    (entry / "labels.ome.zarr" / "data").write_text("ONE")
    assert cache.lookup("classical", "nuclei", "k") == entry
    assert cache.lookup("classical", "nuclei", "k", verify=True) is None
    assert "labels.ome.zarr/data does not match its blake2b checksum" in capsys.readouterr().err
    assert len(damaged_copies(cache)) == 1


def test_entry_with_a_truncated_manifest_is_a_miss(tmp_path, capsys):
    cache, entry = committed(tmp_path)
    text = (entry / "manifest.json").read_text()
    (entry / "manifest.json").write_text(text[: len(text) // 2])
    assert cache.lookup("classical", "nuclei", "k") is None
    assert "manifest.json cannot be read (JSONDecodeError; truncated?)" in capsys.readouterr().err


def test_entry_with_a_manifest_without_checksums_is_a_miss(tmp_path, capsys):
    cache = Cache(tmp_path / "root")
    make_result(cache.entry("classical", "nuclei", "k"), "old")
    assert cache.lookup("classical", "nuclei", "k") is None
    assert "manifest.json lists no files with checksums" in capsys.readouterr().err


def test_entry_without_manifest_does_not_block_the_next_commit(tmp_path, capsys):
    cache, entry = committed(tmp_path)
    (entry / "manifest.json").unlink()
    again = cache.commit(make_result(tmp_path / "again", "two"), "classical", "nuclei", "k")
    assert again == entry and cache.lookup("classical", "nuclei", "k") == entry
    assert (entry / "labels.ome.zarr" / "data").read_text() == "two"
    assert "manifest.json is missing" in capsys.readouterr().err
    [moved] = damaged_copies(cache)
    assert (moved / "labels.ome.zarr" / "data").read_text() == "one"
