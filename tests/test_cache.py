"""The result cache: stable keys, atomic commits, one winner for concurrent commits."""

from __future__ import annotations

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
