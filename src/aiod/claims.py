"""One run computes a key at a time: a claim file per cache key, beside its entry.

When PLAN finds a miss it claims the key (`aiod_cache/.claims/<family>/<version>_masks/<key>`, a
file created atomically
with what says who holds it: run token, host, pid of the run, time). A second PLAN that finds the
key claimed by another live run waits, polling, until the entry appears (a hit) or the claim is
released or goes stale (then it claims the key itself). Stale: no heartbeat for `stale_seconds`
(the holder's SEGMENT, MERGE and FINALIZE tasks touch the claim while they run), or the holding
run's process is gone from this host. FINALIZE releases the claim after committing.

Correctness never depends on claims (commits are atomic and one wins); they only save the
second run the work.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

STALE_SECONDS = 600.0
POLL_SECONDS = 5.0


CLAIMS_DIR = ".claims"


def claim_path(entry: Path) -> Path:
    """`aiod_cache/<family>/<version>_masks/<key>` -> `aiod_cache/.claims/<family>/<version>_masks/<key>`."""
    entry = Path(entry)
    return entry.parents[2] / CLAIMS_DIR / entry.parent.parent.name / entry.parent.name / entry.name


def run_pid() -> int:
    """The pid of the Nextflow run that started this task when it runs on this host (its Java
    process, found among this process's ancestors), else this process's own pid."""
    pid = os.getpid()
    while pid > 1:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        if b"nextflow" in cmdline.lower() and b"java" in cmdline.split(b"\0")[0]:
            return pid
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return os.getpid()


def holder(path: Path) -> dict | None:
    """Who holds a claim (its JSON), or None when there is no claim or it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def describe(info: dict | None) -> str:
    if not info:
        return "an unknown run"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("time", 0)))
    return f"run {info.get('token', '?')[:8]} on {info.get('host', '?')} (pid {info.get('pid', '?')}, since {since})"


def try_claim(path: Path, pid: int | None = None) -> dict | None:
    """Claim atomically (the file appears with its content, or not at all); the claim, or None
    when someone else holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": pid or run_pid(), "time": time.time()}
    tmp = path.with_name(f"{path.name}.{info['token']}")
    tmp.write_text(json.dumps(info))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return None
    finally:
        tmp.unlink(missing_ok=True)
    return info


def same_run(info: dict | None, pid: int) -> bool:
    return bool(info) and info.get("host") == socket.gethostname() and info.get("pid") == pid


def is_stale(path: Path, stale_seconds: float = STALE_SECONDS) -> bool:
    """No heartbeat for stale_seconds, or its run's process is gone from this host."""
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return False
    if age > stale_seconds:
        return True
    info = holder(path)
    if info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def release(path: Path, token: str | None) -> None:
    """Remove a claim if it is still the one with this token."""
    info = holder(path)
    if token and info and info.get("token") == token:
        Path(path).unlink(missing_ok=True)


def acquire(path: Path, is_done: Callable[[], bool], log: Callable[[str], None], *,
            stale_seconds: float = STALE_SECONDS, poll_seconds: float = POLL_SECONDS) -> dict | None:
    """Claim the key, waiting while another live run holds it. Returns the claim, or None when
    the result appeared meanwhile (`is_done()`), or when this same run already holds the key
    (two images of one run with the same content: both compute, as without claims)."""
    pid = run_pid()
    announced = None
    while True:
        info = try_claim(path, pid)
        if info is not None:
            return info
        current = holder(path)
        if same_run(current, pid):
            return None
        if is_done():
            return None
        if is_stale(path, stale_seconds):
            log(f"key {path.name[:12]}: taking over the stale claim of {describe(current)}")
            _remove_if_unchanged(path, current)
            continue
        if current != announced and current is not None:
            log(f"key {path.name[:12]}: waiting for the result that {describe(current)} is computing")
            announced = current
        time.sleep(poll_seconds)


def _remove_if_unchanged(path: Path, seen: dict | None) -> None:
    """Remove a stale claim, unless another run replaced it since we read it (then keep waiting)."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if holder(aside) != seen:
        try:
            os.link(aside, path)  # it was a fresh claim: put it back
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


class Heartbeat:
    """Touch a claim every `interval` seconds from a daemon thread while a task runs (only while
    the claim still has this run's token). A context manager; `None` paths do nothing."""

    def __init__(self, path: str | Path | None = None, token: str | None = None, interval: float = STALE_SECONDS / 10):
        self.path, self.token, self.interval = (Path(path) if path else None), token, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def beat(self) -> None:
        info = holder(self.path) if self.path else None
        if info and info.get("token") == self.token:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self):
        if self.path and self.token:
            self.beat()
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        return False
