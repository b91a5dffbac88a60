"""How accounts that stayed look: per feature, the distribution a single account is compared with.

A reason is only a problem if the account's value is unusual for an account that stayed: a login 3
days ago is normal, 40 days is not, whatever the SHAP value says (`churnml.explain`). The reference is
fitted at training time on the retained (non-churned) rows of the latest development date and saved
with the model: 101 quantiles and the missing share per numeric column, level shares per category.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ColumnReference", "FeatureReference", "QUANTILES"]

QUANTILES = 101  # the 0th to the 100th percentile
TOP_LEVELS = 50


@dataclass(frozen=True)
class ColumnReference:
    """One column among retained accounts: quantiles of its values, missing share, category shares."""

    quantiles: tuple[float, ...] = ()
    missing: float = 0.0
    levels: tuple[tuple[str, float], ...] = ()  # categories: (level, share), most common first

    def shares(self, x: float) -> tuple[float, float]:
        """(share of retained accounts with a value below ``x``, share with a value above), among those
        with a value."""
        q = np.asarray(self.quantiles)
        if not len(q):
            return 0.0, 0.0
        below = np.searchsorted(q, x, side="left") / len(q)
        above = (len(q) - np.searchsorted(q, x, side="right")) / len(q)
        return float(below), float(above)

    @property
    def median(self) -> float | None:
        return self.quantiles[len(self.quantiles) // 2] if self.quantiles else None

    def level_share(self, level: str) -> float | None:
        return next((s for name, s in self.levels if name == level), 0.0 if self.levels else None)


@dataclass(frozen=True)
class FeatureReference:
    """The retained accounts' reference for every column, and how many rows it was fitted on."""

    columns: dict[str, ColumnReference]
    rows: int
    description: str  # "accounts that stayed at 2025-04-01"

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str], description: str
    ) -> FeatureReference:
        out: dict[str, ColumnReference] = {}
        for col in numeric:
            values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            present = values[~np.isnan(values)]
            missing = 1 - len(present) / len(values) if len(values) else 0.0
            q = (
                np.quantile(present, np.linspace(0, 1, QUANTILES), method="inverted_cdf")
                if len(present)
                else []
            )
            out[col] = ColumnReference(tuple(float(v) for v in q), float(missing))
        for col in categorical:
            counts = frame[col].astype("object").where(frame[col].notna(), None).value_counts(dropna=False)
            total = max(int(counts.sum()), 1)
            levels = tuple(
                (str(k), float(v / total)) for k, v in counts.head(TOP_LEVELS).items() if k is not None
            )
            out[col] = ColumnReference(
                levels=levels, missing=float(frame[col].isna().mean()) if len(frame) else 0.0
            )
        return cls(out, len(frame), description)

    def get(self, column: str) -> ColumnReference | None:
        return self.columns.get(column)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "description": self.description,
                "columns": {c: {"quantiles": list(r.quantiles), "missing": r.missing, "levels": [list(lv) for lv in r.levels]}
                            for c, r in self.columns.items()}}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> FeatureReference:
        columns = {
            c: ColumnReference(tuple(float(v) for v in r.get("quantiles", ())), float(r.get("missing", 0.0)),
                               tuple((str(n), float(s)) for n, s in r.get("levels", ())))
            for c, r in data.get("columns", {}).items()
        }  # fmt: skip
        return cls(columns, int(data.get("rows", 0)), str(data.get("description", "")))
