"""How a partition is cut into chunks, and how a worker reads one chunk's rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.partitions import _cut
from batchscore.scoring import _batches


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("chunk_rows", [999, 2_000, 5_000, 100_000])
def test_chunks_cover_every_row_once_in_order_and_no_batch_exceeds_chunk_rows(
    tmp_path, chunk_rows, workers
):
    groups = [5_000, 1_200, 800, 7_001, 3, 2_000]
    path = tmp_path / "part.parquet"
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("x", pa.float64())])) as w:
        start = 0
        for n in groups:
            ids = np.arange(start, start + n)
            w.write_table(pa.table({"id": ids, "x": ids * 0.5}), row_group_size=n)
            start += n
    parquet = pq.ParquetFile(path)
    assert [parquet.metadata.row_group(i).num_rows for i in range(len(groups))] == groups

    chunks = _cut("2026-01-01", "part.parquet", parquet.metadata, chunk_rows, 0, workers)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    ids = []
    for chunk in chunks:
        tables = list(_batches(pq.ParquetFile(path), chunk, chunk_rows))
        assert all(t.num_rows <= chunk_rows for t in tables)
        got = np.concatenate([t.column("id").to_numpy() for t in tables])
        assert len(got) == chunk.rows
        ids.append(got)
    assert np.array_equal(np.concatenate(ids), np.arange(sum(groups)))
    for i, n in enumerate(groups):  # a group larger than chunk_rows: one range per worker
        ranges = [c for c in chunks if c.row_groups == (i,) and n > chunk_rows]
        assert len(ranges) == (min(workers, -(-n // chunk_rows)) if n > chunk_rows else 0)
        assert sum(c.rows for c in ranges) == (n if ranges else 0)
