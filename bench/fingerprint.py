#!/usr/bin/env python
"""Benchmark of the image fingerprint (issue 11); a script, not a test.

    python bench/fingerprint.py                      # a 512 MB TIFF, a 512 MB Zarr, 10,000 small images
    python bench/fingerprint.py --mb 256 --images 2000 --workdir /tmp/aiod-bench-fp

In one run, on generated data (random uint16, so nothing compresses or is sparse on disk):

- full-hash throughput (`fingerprint(mode="full")` without its memo) against a plain read of the
  same bytes (every file, in the same order, `readinto` 1 MiB blocks: the fastest block size here), for one TIFF and for a Zarr
  array of the same size stored as many uncompressed chunks, with the page cache cold (each
  file's pages dropped with posix_fadvise(DONTNEED) before each pass: the reads go to the
  disk, or to whatever cache sits below this machine) and warm (one untimed read first);
  target: hashing at >= 0.8x the read speed;
- XXH3-128 alone on bytes already in memory (the ceiling of the hash on this CPU);
- the memoised lookup for 10,000 images (10,000 small TIFFs, each hashed once to fill the
  memo): the time to fingerprint all of them again, none read.

Each figure is the median of --repeat passes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import xxhash
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from aiod import fingerprint as fp  # noqa: E402

TARGET = 0.8
PLANE = (4096, 4096)  # uint16: 32 MiB a plane


def generate(workdir: Path, mb: int) -> tuple[Path, Path]:
    planes = max(1, mb // 32)
    rng = np.random.default_rng(0)
    tiff, store = workdir / "image.tif", workdir / "image.zarr"
    if not tiff.exists():
        out = tifffile.memmap(tiff, shape=(planes, *PLANE), dtype="uint16")
        for z in range(planes):
            out[z] = rng.integers(0, 65535, PLANE, dtype=np.uint16)
        out.flush()
        del out
    if not store.exists():
        arr = zarr.create_array(store, shape=(planes, *PLANE), chunks=(1, 512, 512), dtype="uint16",
                                compressors=None, fill_value=0)
        for z in range(planes):
            arr[z] = rng.integers(0, 65535, PLANE, dtype=np.uint16)
    return tiff, store


def drop_cache(files) -> None:
    for _, _, p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_read(files) -> int:
    buf, total = bytearray(fp._BLOCK), 0
    for _, _, p in files:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def timed(fn, files, cold: bool, repeat: int) -> float:
    seconds = []
    for _ in range(repeat):
        if cold:
            drop_cache(files)
        else:
            plain_read(files)
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def throughput(path: Path, repeat: int) -> list[tuple[str, float, float]]:
    files = fp._store_files(path)
    nbytes = sum(st.st_size for _, st, _ in files)
    rows = []
    for cache in ("cold", "warm"):
        read_s = timed(lambda: plain_read(files), files, cache == "cold", repeat)
        hash_s = timed(lambda: fp._hash_content(path, "full", files), files, cache == "cold", repeat)
        rows.append((f"{path.name} ({len(files)} file(s), {nbytes / 2**20:.0f} MiB), page cache {cache}",
                     nbytes / read_s / 1e9, nbytes / hash_s / 1e9))
    return rows


def hash_in_memory(repeat: int) -> float:
    data = np.random.default_rng(1).integers(0, 255, 256 << 20, dtype=np.uint8).tobytes()
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        h = xxhash.xxh3_128()
        for i in range(0, len(data), fp._BLOCK):
            h.update(memoryview(data)[i:i + fp._BLOCK])
        seconds.append(time.perf_counter() - started)
    return len(data) / statistics.median(seconds) / 1e9


def memo_lookup(workdir: Path, n: int, repeat: int) -> tuple[float, float]:
    folder, index = workdir / "small", workdir / "index"
    if not folder.exists():
        tmp = workdir / "small.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        past = time.time_ns() - 60 * 10**9
        for i in range(n):
            p = tmp / f"img_{i:05d}.tif"
            tifffile.imwrite(p, np.full((16, 16), i % 65535, np.uint16))
            os.utime(p, ns=(past, past))
        tmp.rename(folder)
    images = sorted(folder.iterdir())[:n]
    shutil.rmtree(index, ignore_errors=True)
    started = time.perf_counter()
    for p in images:
        fp.fingerprint(p, index_dir=index)
    first = time.perf_counter() - started
    assert sum(1 for _ in index.rglob("*.json")) == len(images), "every image memoised"
    reads = []
    real = fp._hash_content
    fp._hash_content = lambda *a: reads.append(a) or real(*a)
    try:
        again = timed(lambda: [fp.fingerprint(p, index_dir=index) for p in images], [], False, repeat)
    finally:
        fp._hash_content = real
    assert not reads, f"{len(reads)} image(s) read again"
    return first, again


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=512, help="size of the generated TIFF and Zarr (MB)")
    ap.add_argument("--images", type=int, default=10_000, help="small images for the memo lookup")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, help="kept between runs (default: a temporary folder, removed)")
    a = ap.parse_args()
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="aiod-bench-fp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        tiff, store = generate(workdir, a.mb)
        print(f"# {os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.1f}; xxhash {xxhash.VERSION} (XXH3-128); "
              f"files over {fp._BLOCK >> 20} MiB hashed through {fp._MAP >> 20} MiB memory maps")
        print(f"{'data':58s} {'read GB/s':>10s} {'hash GB/s':>10s} {'ratio':>6s}  target >= {TARGET}")
        for path in (tiff, store):
            for label, read, hashed in throughput(path, a.repeat):
                ratio = hashed / read
                print(f"{label:58s} {read:10.2f} {hashed:10.2f} {ratio:6.2f}  {'met' if ratio >= TARGET else 'NOT met'}")
        print(f"{'XXH3-128 alone on 256 MiB in memory':58s} {'':10s} {hash_in_memory(a.repeat):10.2f}")
        first, again = memo_lookup(workdir, a.images, a.repeat)
        print(f"memo, {a.images} small images: first pass (read + hash + memo written) {first:.2f} s; "
              f"lookup of all {again:.3f} s = {again / a.images * 1e6:.0f} us per image, none read")
    finally:
        if a.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
