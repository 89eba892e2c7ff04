"""Model artifacts: fetched once into `<root_dir>/aiod_cache/<family>/checkpoints/`, verified, shared.

A task's locations are tried in order; the first that yields the artifact wins. A URL is
streamed into a partial file (kept between attempts and runs, so a retry resumes with an HTTP
Range request where the server allows it), retried with backoff on network errors and on 408,
429 and 5xx answers, never trusted for its Content-Length alone, checked against the manifest's
sha256 when it has one, unpacked when it is an archive, and renamed into place. A filepath is
copied the same way. Concurrent runs wait on one lock per artifact: one of them fetches, the
others find it done.

Each artifact is a folder `checkpoints/<name>/` holding the file (or the unpacked directory) and
`artifact.json` (where it came from, its sha256). It appears by atomic rename, complete or not
at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from . import __version__
from .errors import AiodError

RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 1 << 20


class FetchError(AiodError):
    """An artifact that could not be had from any of its locations."""


def checkpoints_dir(root_dir: Path, family: str) -> Path:
    return Path(root_dir) / "aiod_cache" / family / "checkpoints"


def fetch(spec: dict, root_dir: Path, *, attempts: int = 5, backoff: float = 2.0, timeout: float = 60.0) -> dict:
    """The artifact of a resolved model spec, fetched if needed: {path, sha256, location, config}."""
    name = f"{spec['family']}/{spec['version']}/{spec['task']}"
    failures = []
    for loc in spec["locations"]:
        where = loc.get("url") or loc.get("filepath")
        try:
            return _fetch_one(loc, checkpoints_dir(root_dir, spec["family"]), spec["version"],
                              attempts=attempts, backoff=backoff, timeout=timeout)
        except FetchError as exc:
            failures.append(f"{where}: {exc}")
    raise FetchError(f"{name}: no location gave the artifact: " + "; ".join(failures))


def fetched(spec: dict, root_dir: Path) -> dict | None:
    """The artifact of a resolved model spec when one of its locations is already in the
    checkpoints (the first such, in the order `fetch` tries them), as `fetch` gives it; None
    when none is. Fetches nothing."""
    folder = checkpoints_dir(root_dir, spec["family"])
    for loc in spec["locations"]:
        entry = folder / _entry_name(spec["version"], loc)
        if (entry / "artifact.json").exists():
            return _artifact(entry, loc)
    return None


def _artifact(entry: Path, loc: dict) -> dict:
    record = json.loads((entry / "artifact.json").read_text())
    return {"path": str(entry / record["file"]), "sha256": record["sha256"], "location": record["location"],
            "config": loc.get("config", {})}


def _entry_name(version: str, loc: dict) -> str:
    """Content-addressed when the sha256 is known; else by location (and, for a file, its size
    and modification time, so an edited file is fetched again)."""
    if loc.get("sha256"):
        ident = loc["sha256"]
    elif loc.get("url"):
        ident = hashlib.sha256(loc["url"].encode()).hexdigest()
    else:
        path = Path(os.path.expanduser(loc["filepath"]))
        stat = path.stat() if path.exists() else None
        ident = hashlib.sha256(f"{path.resolve()}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}".encode()).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in version)
    return f"{safe}-{ident[:16]}{'-' + loc['unpack'] if loc.get('unpack') else ''}"


def _fetch_one(loc: dict, folder: Path, version: str, *, attempts: int, backoff: float, timeout: float) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".partial").mkdir(exist_ok=True)
    entry = folder / _entry_name(version, loc)
    with _locked(folder / f".{entry.name}.lock"):
        if not (entry / "artifact.json").exists():
            _build(entry, loc, attempts=attempts, backoff=backoff, timeout=timeout)
    return _artifact(entry, loc)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(entry: Path, loc: dict, *, attempts: int, backoff: float, timeout: float) -> None:
    partial = entry.parent / ".partial" / f"{entry.name}.part"
    source = Path(os.path.expanduser(loc["filepath"])) if loc.get("filepath") else None
    staging = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
    try:
        if source is not None and source.is_dir():
            filename = source.name
            _copy_tree(source, staging / filename)
            digest = tree_sha256(staging / filename)
        else:
            if source is None:
                _download(loc["url"], partial, attempts=attempts, backoff=backoff, timeout=timeout)
                filename = Path(urllib.parse.urlparse(loc["url"]).path).name or "artifact"
            else:
                _copy_file(source, partial)
                filename = source.name
            digest = _sha256(partial)
        if loc.get("sha256") and digest != loc["sha256"]:
            _remove(partial)
            raise FetchError(f"checksum mismatch: expected sha256 {loc['sha256']}, got {digest}; the fetched copy was removed")
        if partial.exists() and loc.get("unpack") == "zip":
            filename = _unzip(partial, staging / Path(filename).stem)
            _remove(partial)
        elif partial.exists():
            os.replace(partial, staging / filename)
        record = {"file": filename, "sha256": digest, "location": loc.get("url") or loc.get("filepath"),
                  "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "aiod_version": __version__}
        (staging / "artifact.json").write_text(json.dumps(record, indent=2))
        os.chmod(staging, 0o755)
        os.replace(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _download(url: str, partial: Path, *, attempts: int, backoff: float, timeout: float) -> None:
    last = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        offset = partial.stat().st_size if partial.exists() else 0
        headers = {"User-Agent": f"aiod/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as answer:
                resumed = offset and answer.status == 206 and _range_start(answer) == offset
                expected = answer.headers.get("Content-Length")
                received = 0
                with open(partial, "ab" if resumed else "wb") as out:
                    while chunk := answer.read(CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                if expected is not None and received != int(expected):
                    raise http.client.IncompleteRead(b"", int(expected) - received)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the partial file is not a prefix the server knows: start over
                _remove(partial)
                last = exc
                continue
            if exc.code not in RETRY_HTTP:
                raise FetchError(f"HTTP error {exc.code} {exc.reason}") from None
            last = exc
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as exc:
            last = exc
    raise FetchError(f"unreachable after {attempts} attempt(s) ({_describe(last)}); "
                     f"{partial.stat().st_size if partial.exists() else 0} bytes kept to resume from")


def _range_start(answer) -> int | None:
    value = answer.headers.get("Content-Range", "")  # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _describe(exc) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed with {exc.expected} bytes missing"
    return f"{exc.__class__.__name__}: {exc}"


def _readable(source: Path) -> None:
    if not source.exists():
        raise FetchError("file not found")
    if not os.access(source, os.R_OK | (os.X_OK if source.is_dir() else 0)):
        raise FetchError("permission denied: you cannot read this file")


def _copy_file(source: Path, partial: Path) -> None:
    _readable(source)
    try:
        shutil.copyfile(source, partial)
    except OSError as exc:
        _remove(partial)
        raise FetchError(f"cannot read: {exc.strerror or exc}") from None


def _copy_tree(source: Path, target: Path) -> None:
    _readable(source)
    try:
        shutil.copytree(source, target)
    except (OSError, shutil.Error) as exc:
        raise FetchError(f"cannot read the directory: {exc}") from None


def tree_sha256(folder: Path) -> str:
    """A directory's sha256: of the lines '<relative path> <sha256 of the file>' of its files, sorted."""
    lines = sorted(f"{p.relative_to(folder).as_posix()} {_sha256(p)}\n" for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _unzip(archive: Path, target: Path) -> str:
    """Unpack into `target` (refusing members that would land outside it); returns the name of
    the model directory: the archive's single top folder, or the target itself."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (target / member).resolve().is_relative_to(target.resolve()):
                    raise FetchError(f"archive member '{member}' would be written outside the artifact folder")
            zf.extractall(target)
    except zipfile.BadZipFile:
        raise FetchError("not a zip archive, but the manifest says 'unpack: zip'") from None
    tops = [p for p in target.iterdir() if not p.name.startswith(("__MACOSX", "."))]
    inner = tops[0] if len(tops) == 1 and tops[0].is_dir() else target
    return str(inner.relative_to(target.parent))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
