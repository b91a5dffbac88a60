"""Raw sources -> validated contract tables: the ``data`` stage.

- `sources`: each mapped file or table opened as a raw DuckDB view (nothing read yet);
- `mapping`: source columns typed onto the contract's (missing columns and impossible types are errors);
- `staging`: every source's rows loaded once, typed, with the flags the checks read;
- `checks`: column errors, row checks, duplicate hashes, volume spikes;
- `quarantine`: the rows that fail leave the table, counted, reported and written aside;
- `load`: the entry point, returning `ContractTables` (`tables`), the typed handle every stage takes;
- `report`: what validation found.
"""

from __future__ import annotations

from churnml.data.load import load_dataset, validate_dataset
from churnml.data.report import DataValidationError, Issue, TableSummary, ValidationReport
from churnml.data.sources import CSV_SUFFIXES, PARQUET_SUFFIXES, DataError, RawTable, register_raw_tables
from churnml.data.tables import ContractTables, DataWindow, EventTypeStats

__all__ = [
    "CSV_SUFFIXES",
    "PARQUET_SUFFIXES",
    "ContractTables",
    "DataError",
    "DataValidationError",
    "DataWindow",
    "EventTypeStats",
    "Issue",
    "RawTable",
    "TableSummary",
    "ValidationReport",
    "load_dataset",
    "register_raw_tables",
    "validate_dataset",
]
