"""The output row: one (image, prompt) item -> one Parquet row. Pure data, no IO."""

from __future__ import annotations

import datetime as dt
import importlib.abc
import json
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

import pyarrow as pa

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_INVALID = "invalid"

_UTC_US = pa.timestamp("us", tz="UTC")

SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string()),
        pa.field("prompt_name", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("finish_reason", pa.string()),
        pa.field("error", pa.string()),
        pa.field("http_status", pa.int16()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
        pa.field("response_model", pa.string()),
        pa.field("attempts", pa.int16(), nullable=False),
        pa.field("queue_wait_s", pa.float64()),
        pa.field("encode_s", pa.float64()),
        pa.field("latency_s", pa.float64()),
        pa.field("ttft_s", pa.float64()),
        pa.field("concurrency", pa.int32()),
        pa.field("started_at", _UTC_US),
        pa.field("finished_at", _UTC_US, nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("endpoint", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
)
COLUMNS = tuple(SCHEMA.names)


def schema_with_job(
    job: dict[str, Any], columns: Sequence[tuple[str, pa.DataType]] = ()
) -> pa.Schema:
    """The row schema with the job's own ``columns`` after the built-in ones (a schema'd
    prompt's properties, a manifest's kept columns) and the resolved job (no secrets) in its
    metadata under ``caption.job``."""
    fields = [*SCHEMA, *(pa.field(name, type_) for name, type_ in columns)]
    meta = {"caption.job": json.dumps(job, ensure_ascii=False, default=str)}
    return pa.schema(fields, metadata=meta)


def own_columns(schema: pa.Schema) -> list[pa.Field]:
    """The fields of ``schema`` that are not built-in columns."""
    return [f for f in schema if f.name not in COLUMNS]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts with the schema's names; missing names are null) -> a typed Arrow table."""
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ImportError("caption: pandas is not needed to write rows")
        return None


def skip_pandas_probe() -> None:
    """Keep pyarrow from importing pandas when the run builds its first table.

    The first time pyarrow converts Python objects it checks whether pandas is installed by
    importing it: ~1.2 s of CPU holding the GIL, in the middle of a run (py-spy; it was a
    quarter of a 1,000-image benchmark run). The CLI answers that probe "no" once, at start;
    pyarrow tries again for real when pandas is actually asked for (``to_pandas``), so nothing
    is lost. Process-wide, hence only called by the command line, not on import.
    """
    if "pandas" in sys.modules:
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)
