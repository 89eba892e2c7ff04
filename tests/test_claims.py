"""Claims per cache key: one run computes a key, a second waits for its result, a dead or silent
holder is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from aiod import claims

SRC = Path(__file__).resolve().parents[1] / "src"


def held_by(path, pid, age=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": "other", "host": socket.gethostname(), "pid": pid, "time": time.time()}))
    os.utime(path, (time.time() - age, time.time() - age))


def acquire(path, is_done=lambda: False, lines=None):
    return claims.acquire(path, is_done, (lines if lines is not None else []).append, stale_seconds=2, poll_seconds=0.05)


def test_claim_sits_in_the_claims_folder_of_the_cache():
    entry = claims.Path("/r/aiod_cache/classical/nuclei_masks/abc")
    assert claims.claim_path(entry) == claims.Path("/r/aiod_cache/.claims/classical/nuclei_masks/abc")


def test_a_free_key_is_claimed_with_who_holds_it(tmp_path):
    info = acquire(tmp_path / "k")
    assert json.loads((tmp_path / "k").read_text()) == info
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid() and len(info["token"]) == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_a_claimed_key_cannot_be_claimed_again(tmp_path):
    assert claims.try_claim(tmp_path / "k") is not None
    assert claims.try_claim(tmp_path / "k") is None


def test_second_run_waits_for_a_live_holder_until_the_result_appears(tmp_path):
    held_by(tmp_path / "k", os.getppid())
    done = threading.Event()
    threading.Timer(0.3, done.set).start()
    lines, started = [], time.time()
    assert acquire(tmp_path / "k", done.is_set, lines) is None
    assert time.time() - started >= 0.3
    assert len(lines) == 1 and lines[0].startswith(f"key k: waiting for the result that run other on {socket.gethostname()} (pid {os.getppid()}")


def test_a_holder_without_heartbeat_is_taken_over(tmp_path):
    held_by(tmp_path / "k", os.getppid(), age=3)
    lines = []
    info = acquire(tmp_path / "k", lines=lines)
    assert info is not None and claims.holder(tmp_path / "k")["token"] == info["token"]
    assert lines[0].startswith("key k: taking over the stale claim of run other")


def test_a_holder_whose_process_is_gone_from_this_host_is_taken_over_at_once(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    held_by(tmp_path / "k", gone.pid)
    assert acquire(tmp_path / "k") is not None


def test_a_released_claim_without_result_lets_the_waiting_run_claim(tmp_path):
    held_by(tmp_path / "k", os.getppid())
    threading.Timer(0.3, lambda: claims.release(tmp_path / "k", "other")).start()
    info = acquire(tmp_path / "k")
    assert info is not None and claims.holder(tmp_path / "k")["token"] == info["token"]


def test_the_same_run_does_not_wait_for_itself(tmp_path):
    held_by(tmp_path / "k", os.getpid())
    assert acquire(tmp_path / "k") is None
    assert claims.holder(tmp_path / "k")["token"] == "other"


def test_release_removes_only_the_claim_with_its_token(tmp_path):
    held_by(tmp_path / "k", os.getppid())
    claims.release(tmp_path / "k", "mine")
    assert (tmp_path / "k").exists()
    claims.release(tmp_path / "k", "other")
    assert not (tmp_path / "k").exists()


def test_heartbeat_keeps_its_claim_fresh_while_the_task_runs(tmp_path):
    held_by(tmp_path / "k", os.getppid(), age=100)
    with claims.Heartbeat(tmp_path / "k", "other", interval=0.05):
        time.sleep(0.2)
        assert time.time() - (tmp_path / "k").stat().st_mtime < 1
    assert not claims.is_stale(tmp_path / "k", stale_seconds=2)


def test_heartbeat_leaves_a_claim_taken_over_by_another_run_alone(tmp_path):
    held_by(tmp_path / "k", os.getppid(), age=100)
    with claims.Heartbeat(tmp_path / "k", "mine", interval=0.05):
        time.sleep(0.2)
    assert time.time() - (tmp_path / "k").stat().st_mtime > 99


def test_the_run_pid_is_the_nextflow_java_process_above_the_task(tmp_path):
    java = tmp_path / "java"
    java.symlink_to("/bin/sh")
    code = "from aiod.claims import run_pid; print(run_pid())"
    # like Nextflow's local executor: java (nextflow.cli.Launcher) -> shell -> the task's python
    proc = subprocess.Popen([str(java), "-c", f"{sys.executable} -c '{code}'; true", "nextflow.cli.Launcher"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
    out, _ = proc.communicate(timeout=60)
    assert int(out) == proc.pid


def test_outside_nextflow_the_run_pid_is_the_process_itself():
    assert claims.run_pid() == os.getpid()
