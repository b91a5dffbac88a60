"""CSV cells safe to open in a spreadsheet, shared by the risk list's and the alerts' exports."""

from __future__ import annotations

from typing import Any

__all__ = ["BOM", "csv_cell"]

BOM = "\ufeff"  # UTF-8 with a BOM: spreadsheets then read names and arrows right
# CSV cells a spreadsheet would run as a formula (OWASP "CSV injection"); text cells starting so get a quote.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value
