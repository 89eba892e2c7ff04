"""Fetching model artifacts into the cache: once, verified, resumable, safe when runs race."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import zipfile

import numpy as np
import pytest

from aiod import artifacts
from aiod.artifacts import FetchError, fetch
from artifact_server import ArtifactServer


def weights_file() -> bytes:
    """A real artifact: random weights saved by numpy, ~0.4 MB."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, conv1=rng.normal(size=(32, 1, 3, 3)), dense=rng.normal(size=(200, 256)))
    return buffer.getvalue()


def model_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("my_model/config.json", json.dumps({"n_rays": 32}))
        zf.writestr("my_model/weights.npz", weights_file())
    return buffer.getvalue()


WEIGHTS = weights_file()
SHA = hashlib.sha256(WEIGHTS).hexdigest()


@pytest.fixture
def server():
    with ArtifactServer() as s:
        s.files["weights.npz"] = WEIGHTS
        s.files["model.zip"] = model_zip()
        yield s


def spec(*locations, family="fam", version="v1"):
    return {"family": family, "version": version, "task": "nuclei", "locations": list(locations)}


def fast(s, root):
    return fetch(s, root, attempts=3, backoff=0.01, timeout=5)


@pytest.mark.parametrize("mode", ["plain", "nolength"])
def test_a_url_is_downloaded_verified_and_placed_in_the_cache(tmp_path, server, mode):
    got = fast(spec({"url": f"{server.url}/{mode}/weights.npz", "sha256": SHA}), tmp_path)
    path = tmp_path / "aiod_cache" / "fam" / "checkpoints"
    assert got["path"].startswith(str(path)) and got["path"].endswith("weights.npz")
    assert open(got["path"], "rb").read() == WEIGHTS and got["sha256"] == SHA
    assert not list((path / ".partial").iterdir())


def test_a_second_fetch_uses_the_cached_artifact_without_a_request(tmp_path, server):
    s = spec({"url": f"{server.url}/plain/weights.npz"})
    first = fast(s, tmp_path)
    second = fast(s, tmp_path)
    assert first == second and len(server.requests) == 1
    assert first["sha256"] == SHA  # computed when the manifest gives none


def test_a_dropped_connection_is_retried_and_resumed_with_a_range_request(tmp_path, server):
    got = fast(spec({"url": f"{server.url}/flaky/weights.npz", "sha256": SHA}), tmp_path)
    assert open(got["path"], "rb").read() == WEIGHTS
    ranges = server.gets("/flaky/weights.npz")
    assert ranges[0] is None and len(ranges) == 3
    assert all(r and r.startswith("bytes=") and int(r[6:-1]) > 0 for r in ranges[1:])


def test_a_partial_download_left_by_a_killed_run_is_resumed_by_the_next(tmp_path, server):
    server.flaky_failures = 10
    s = spec({"url": f"{server.url}/flaky/weights.npz", "sha256": SHA})
    with pytest.raises(FetchError, match="unreachable after 1 attempt"):
        fetch(s, tmp_path, attempts=1, backoff=0.01)
    server.flaky_failures = 0
    got = fast(s, tmp_path)
    assert open(got["path"], "rb").read() == WEIGHTS
    assert server.gets("/flaky/weights.npz")[-1] == f"bytes={len(WEIGHTS) // 2}-"


def test_http_404_stops_at_once_and_names_the_model_and_location(tmp_path, server):
    url = f"{server.url}/plain/nothing.npz"
    with pytest.raises(FetchError) as err:
        fast(spec({"url": url}), tmp_path)
    assert str(err.value) == f"fam/v1/nuclei: no location gave the artifact: {url}: HTTP error 404 no such artifact"
    assert len(server.requests) == 1


def test_server_errors_are_retried_then_reported(tmp_path, server):
    with pytest.raises(FetchError, match=r"unreachable after 3 attempt\(s\) \(HTTP 503"):
        fast(spec({"url": f"{server.url}/status/503"}), tmp_path)
    assert len(server.requests) == 3


def test_an_unreachable_host_is_retried_then_reported(tmp_path):
    with pytest.raises(FetchError, match=r"http://127.0.0.1:9/w.npz: unreachable after 3 attempt\(s\) \(.*refused"):
        fast(spec({"url": "http://127.0.0.1:9/w.npz"}), tmp_path)


def test_a_checksum_mismatch_removes_the_file_and_says_both_sums(tmp_path, server):
    wrong = "0" * 64
    with pytest.raises(FetchError, match=f"checksum mismatch: expected sha256 {wrong}, got {SHA}"):
        fast(spec({"url": f"{server.url}/plain/weights.npz", "sha256": wrong}), tmp_path)
    folder = tmp_path / "aiod_cache" / "fam" / "checkpoints"
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == [".partial"]
    assert not list((folder / ".partial").iterdir())


def test_the_first_location_that_works_wins(tmp_path, server):
    got = fast(spec({"filepath": str(tmp_path / "missing.npz")}, {"url": f"{server.url}/plain/weights.npz"}), tmp_path)
    assert got["location"].endswith("/plain/weights.npz")


def test_a_zip_artifact_is_unpacked_to_its_model_folder(tmp_path, server):
    got = fast(spec({"url": f"{server.url}/plain/model.zip", "unpack": "zip", "config": {"k": 1}}), tmp_path)
    assert os.path.isdir(got["path"]) and got["path"].endswith("/model/my_model")
    assert json.load(open(os.path.join(got["path"], "config.json"))) == {"n_rays": 32}
    assert got["config"] == {"k": 1}


def test_a_filepath_file_and_a_filepath_directory_are_copied(tmp_path):
    (tmp_path / "w.npz").write_bytes(WEIGHTS)
    (tmp_path / "model_dir").mkdir()
    (tmp_path / "model_dir" / "weights.npz").write_bytes(WEIGHTS)
    one = fast(spec({"filepath": str(tmp_path / "w.npz"), "sha256": SHA}), tmp_path / "root")
    two = fast(spec({"filepath": str(tmp_path / "model_dir")}), tmp_path / "root")
    assert open(one["path"], "rb").read() == WEIGHTS
    assert open(os.path.join(two["path"], "weights.npz"), "rb").read() == WEIGHTS


def test_fetched_gives_what_fetch_gave_once_it_is_in_the_cache_and_fetches_nothing(tmp_path):
    (tmp_path / "w.npz").write_bytes(WEIGHTS)
    s = spec({"filepath": str(tmp_path / "missing.npz")}, {"filepath": str(tmp_path / "w.npz"), "sha256": SHA,
                                                          "config": {"diam_mean": 17}})
    assert artifacts.fetched(s, tmp_path / "root") is None
    assert not (tmp_path / "root").exists()
    got = fast(s, tmp_path / "root")
    assert artifacts.fetched(s, tmp_path / "root") == got and got["config"] == {"diam_mean": 17}


def test_an_edited_filepath_artifact_is_fetched_again(tmp_path):
    source = tmp_path / "w.npz"
    source.write_bytes(WEIGHTS)
    first = fast(spec({"filepath": str(source)}), tmp_path / "root")
    source.write_bytes(WEIGHTS + b"more")
    second = fast(spec({"filepath": str(source)}), tmp_path / "root")
    assert first["path"] != second["path"] and second["sha256"] == hashlib.sha256(WEIGHTS + b"more").hexdigest()


def _race(url, root, queue):
    queue.put(fast(spec({"url": url, "sha256": SHA}), root))


def test_concurrent_runs_download_an_artifact_once(tmp_path, server):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(f"{server.url}/slow/weights.npz", tmp_path, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    assert len(server.gets("/slow/weights.npz")) == 1
    assert all(r == results[0] for r in results) and open(results[0]["path"], "rb").read() == WEIGHTS


def as_user(uid: int, func, *args):
    """Run func(*args) in a forked child with another user id; return (result, error text)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            os.setgid(uid)
            os.setuid(uid)
            out = {"result": func(*args)}
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            out = {"error": f"{exc.__class__.__name__}: {exc}"}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.waitpid(pid, 0)
    out = json.loads(data)
    return out.get("result"), out.get("error")


NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI runs as root)")


@pytest.fixture
def shared_dir():
    """A folder every user can enter (pytest's tmp_path is private to root)."""
    folder = tempfile.mkdtemp(prefix="aiod-shared-")
    os.chmod(folder, 0o755)
    yield pathlib.Path(folder)
    shutil.rmtree(folder)


@needs_root
def test_a_filepath_the_user_cannot_read_is_refused_by_name(shared_dir):
    secret = shared_dir / "secret.npz"
    secret.write_bytes(WEIGHTS)
    secret.chmod(0o600)
    root = shared_dir / "root"
    root.mkdir()
    root.chmod(0o777)
    _, error = as_user(NOBODY, fast, spec({"filepath": str(secret)}), root)
    assert error == f"FetchError: fam/v1/nuclei: no location gave the artifact: {secret}: permission denied: you cannot read this file"
    secret.chmod(0o644)
    result, error = as_user(NOBODY, fast, spec({"filepath": str(secret)}), root)
    assert error is None and open(result["path"], "rb").read() == WEIGHTS


def test_checkpoint_names_are_content_addressed_when_the_sha256_is_known(tmp_path):
    a = artifacts._entry_name("v1", {"url": "http://a/x", "sha256": SHA})
    b = artifacts._entry_name("v1", {"filepath": "/elsewhere/x", "sha256": SHA})
    assert a == b == f"v1-{SHA[:16]}"
