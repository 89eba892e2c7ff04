"""Tables as Parquet and CSV: what `aiod measure` and `aiod count` write and read back.

A `Table` is named, equal-length numpy columns plus metadata; `write_tables` writes both files
a slice of rows at a time, under temporary names renamed when both are complete, with the
metadata as the Parquet file's "aiod" key (JSON). numpy and pyarrow are imported only when a
table is written or read: the command line, which every pipeline step imports, stays light.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

WRITE_ROWS = 1 << 16  # rows converted to Arrow at a time by write_tables


@dataclass
class Table:
    """A table as named, equal-length numpy columns (masked arrays for nullable ones), plus
    metadata written into the Parquet file (`meta["format"]` says which table it is)."""

    columns: dict
    meta: dict

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def _arrow(col):
    """A numpy column as an Arrow array, built from its buffers: `pa.array` imports pandas
    where it is installed (1.5 s and 50 MB). NaN, and masked entries, become nulls."""
    import numpy as np
    import pyarrow as pa

    data = np.ma.getdata(col)
    missing = np.ma.getmaskarray(col) if isinstance(col, np.ma.MaskedArray) else (
        np.isnan(data) if data.dtype.kind == "f" else np.zeros(len(data), bool))
    valid = pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None
    nulls = int(missing.sum())
    if data.dtype == object:  # text
        encoded = [str(v).encode() for v in data]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in encoded], dtype=np.int64)]).astype(np.int32)
        return pa.Array.from_buffers(pa.string(), len(data), [valid, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
                                     null_count=nulls)
    data = np.ascontiguousarray(data)
    return pa.Array.from_buffers(pa.from_numpy_dtype(data.dtype), len(data), [valid, pa.py_buffer(data)], null_count=nulls)


def write_tables(table: Table, out_prefix, inputs=()) -> tuple[Path, Path]:
    """Write `<out_prefix>.parquet` (with `table.meta` as its "aiod" metadata) and
    `<out_prefix>.csv` side by side in two threads, a slice of rows at a time; each under a
    temporary name, renamed when both are complete. A path that is, or lies in, one of `inputs` is refused."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    prefix = Path(out_prefix)
    if prefix.suffix in (".parquet", ".csv"):
        prefix = prefix.with_suffix("")
    paths = [prefix.with_name(prefix.name + ext) for ext in (".parquet", ".csv")]
    for path in paths:
        for source in (Path(i).resolve() for i in inputs if i is not None):
            if path.resolve() == source or path.resolve().is_relative_to(source):
                raise InputError(f"{path}: would overwrite the input {source}; choose another --out")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    temps = [p.with_name(f".{p.name}.partial-{os.getpid()}") for p in paths]
    names = list(table.columns)
    n = len(table)
    first = pa.record_batch([_arrow(table.columns[k][:1]) for k in names], names=names)
    schema = first.schema.with_metadata({"aiod": json.dumps(table.meta)})

    def write(writer, tmp):
        with writer(tmp, schema) as out:
            for start in range(0, n, WRITE_ROWS) if n else [0]:
                rows = slice(start, start + WRITE_ROWS)
                out.write_batch(pa.record_batch([_arrow(table.columns[k][rows]) for k in names], schema=schema))

    try:
        with ThreadPoolExecutor(2) as pool:  # both at once: pyarrow's writers let go of the GIL
            list(pool.map(write, (pq.ParquetWriter, pacsv.CSVWriter), temps))
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return paths[0], paths[1]


def read_table(path, columns=None) -> Table:
    """A table written by write_tables, back from its Parquet file (numpy columns): all, or
    those named in `columns` (missing ones are refused; [] reads the metadata only)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        file = pq.ParquetFile(path)  # one file, not pq.read_table's dataset: a report reads thousands
        names = file.schema_arrow.names
    except Exception as e:  # pyarrow raises several types for files that are not Parquet
        raise InputError(f"{path}: cannot be read as Parquet ({type(e).__name__}: {e})".splitlines()[0]) from None
    missing = [c for c in columns or () if c not in names]
    if missing:
        raise InputError(f"{path}: no column(s) {', '.join(missing)}")
    with file:
        data = file.read(columns=columns)
    meta = json.loads((data.schema.metadata or {}).get(b"aiod", b"{}"))
    return Table({k: data.column(k).to_numpy(zero_copy_only=False) for k in data.column_names}, meta)
