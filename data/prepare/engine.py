"""The out-of-core engine of the build: DuckDB over Parquet files, with a memory budget.

DuckDB (an embedded analytical database) runs the steps that need a whole source at once (grouping by
user, counting, sorting histories, joins for the leakage rules, the audit) on columnar files, and spills
to `<work_dir>/tmp` when its state outgrows `memory_limit`: grouping, joining, sorting and windowing are
out of core there, so the memory of these steps is set by the budget, not by the corpus. Python touches
one batch of rows at a time (`rows`, `ParquetColumns`).
"""
import os
import pathlib
from typing import Iterator, Optional

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq


def connect(work_dir, memory_limit: str, threads: Optional[int] = None,
            database=None) -> duckdb.DuckDBPyConnection:
    """A DuckDB whose buffers stay under `memory_limit` and spill to <work_dir>/tmp/<pid>; in memory, or in
    the `database` file (whose tables the engine can then move out of memory)."""
    tmp = pathlib.Path(work_dir) / "tmp" / str(os.getpid())  # a folder per process: jobs run side by side
    tmp.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(database) if database else ":memory:", config={
        "memory_limit": str(memory_limit), "temp_directory": str(tmp),
        "preserve_insertion_order": False})  # results that need no order may come in any order: less to buffer
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def quote(path) -> str:
    """A file path or glob as an SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def parquet(path) -> str:
    """`read_parquet(...)` of a file, or of every Parquet file under a folder."""
    path = pathlib.Path(path)
    return f"read_parquet({quote(path / '**' / '*.parquet' if path.is_dir() else path)})"


def rows(con, sql: str, batch_rows: int = 65536) -> Iterator[dict[str, list]]:
    """The result of `sql` as column lists, one batch of rows at a time (never the whole result)."""
    for batch in con.sql(sql).to_arrow_reader(batch_rows):
        yield batch.to_pydict()


class ParquetColumns:
    """A Parquet file written from Python values: append to `columns` (one list per field of `schema`, in order),
    then call `flush_if_full()`; written in row groups of about `batch_rows`."""

    def __init__(self, path, schema: pa.Schema, batch_rows: int = 65536):
        self.path, self.schema, self.batch_rows = pathlib.Path(path), schema, batch_rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[list] = [[] for _ in schema]
        self._writer = pq.ParquetWriter(self.path, schema, compression="zstd")
        self.rows = 0

    def flush_if_full(self) -> None:
        if len(self.columns[0]) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self.columns[0]:
            self.rows += len(self.columns[0])
            self._writer.write_table(pa.table([pa.array(c, f.type) for c, f in zip(self.columns, self.schema)],
                                              schema=self.schema))
            for c in self.columns:
                c.clear()

    def close(self) -> int:
        self._flush()
        self._writer.close()
        return self.rows
