"""Using the Delta history: SQL over the tables (DuckDB over their Arrow datasets)."""

from __future__ import annotations

from typing import Any

from schemas.tables import TABLES
from streams.delta_sink import DeltaTables


def query(tables: DeltaTables, sql: str, *, versions: dict[str, int] | None = None) -> Any:
    """Run ``sql`` with every existing table as a view of its name; returns a ``pyarrow.Table``.

    Args:
        versions: Read these tables at a past Delta version (time travel), e.g. ``{"lineage": 3}``.
    """
    import duckdb
    from deltalake import DeltaTable

    con = duckdb.connect()
    datasets = {}  # DuckDB does not keep the registered datasets alive: this does, until the query is done
    try:
        for name in TABLES:
            dt = tables.open(name)
            if dt is None:
                continue
            if versions and name in versions:
                dt = DeltaTable(tables.path(name), version=versions[name])
            datasets[name] = dt.to_pyarrow_dataset()
            con.register(name, datasets[name])
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()
