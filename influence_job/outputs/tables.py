"""influence_rows.parquet: the token influence rows as one flat table that pandas, Polars, DuckDB and Hugging
Face `datasets` open as they are (the npz beside it keeps the columnar arrays for numpy users).

One row per response, in input order; the per-token values are list columns (a response's tokens in order).
NaN marks what has no value: the scores of a skipped prompt's responses and their score_sum.
"""

from __future__ import annotations

import io

import numpy as np


def influence_rows_table(rows: dict[str, np.ndarray], token_strings: list[list[str]] | None):
    import pyarrow as pa

    offsets = pa.array(np.asarray(rows["token_offsets"], dtype=np.int64), type=pa.int64())

    def per_token(values, value_type):
        return pa.LargeListArray.from_arrays(offsets, pa.array(values, type=value_type))

    columns = {
        "response_index": pa.array(rows["response_index"], type=pa.int64()),
        "prompt_index": pa.array(rows["prompt_index"], type=pa.int64()),
        "prompt_id": pa.array(rows["prompt_id"].tolist(), type=pa.string()),
        "response_id": pa.array(rows["response_id"].tolist(), type=pa.string()),
        "reward": pa.array(rows["reward"], type=pa.float64()),
        "accepted": pa.array(rows["accepted"], type=pa.bool_()),
        "skipped": pa.array(rows["skipped"], type=pa.bool_()),
        "n_tokens": pa.array(rows["n_tokens"], type=pa.int64()),
        "score_sum": pa.array(rows["score_sum"], type=pa.float64()),
        "metadata": pa.array(rows["metadata_json"].tolist(), type=pa.string()),
        "token_ids": per_token(rows["token_ids"], pa.int64()),
        "tokens": (per_token([t for r in token_strings for t in r], pa.string()) if token_strings is not None
                   else pa.nulls(len(rows["response_index"]), type=pa.large_list(pa.string()))),
        "scores": per_token(rows["scores"], pa.float64()),
        "entropy": per_token(rows["entropy"], pa.float64()),
    }
    return pa.table(columns)


def parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
