"""The online path: one customer's raw behaviour (frames) to the same features as training and batch.

The frames are loaded into a private in-memory DuckDB as the contract tables, and `build_features`
runs on them: the same code as the batch paths, so a test can prove the three agree exactly.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from churnml.config import Settings
from churnml.data.tables import ContractTables
from churnml.engine import connect, quote_ident
from churnml.features.engine import build_features
from churnml.features.sets import FeatureSet

__all__ = ["features_from_frames", "load_contract_frames"]

_FRAME_TYPES = {
    "customers": {"customer_id": "VARCHAR", "signup_date": "TIMESTAMP", "plan": "VARCHAR", "segment": "VARCHAR",
                  "mrr": "DOUBLE", "csm_owner": "VARCHAR"},
    "events": {"customer_id": "VARCHAR", "timestamp": "TIMESTAMP", "event_type": "VARCHAR", "value": "DOUBLE",
               "user_id": "VARCHAR"},
    "subscriptions": {"customer_id": "VARCHAR", "start": "TIMESTAMP", "end": "TIMESTAMP", "mrr": "DOUBLE",
                      "plan": "VARCHAR", "seats": "DOUBLE"},
}  # fmt: skip


def load_contract_frames(
    con: duckdb.DuckDBPyConnection,
    customers: pd.DataFrame | None,
    events: pd.DataFrame,
    subscriptions: pd.DataFrame | None = None,
    attributes: tuple[str, ...] = (),
) -> ContractTables:
    """The contract tables in ``con``, from already-clean frames (missing columns become NULL)."""
    frames = {"customers": customers, "events": events, "subscriptions": subscriptions}
    for table, frame in frames.items():
        types = dict(_FRAME_TYPES[table])
        if table == "customers":
            types |= {a: "" for a in attributes}
        if frame is None:
            cols = ", ".join(f"{quote_ident(c)} {t or 'VARCHAR'}" for c, t in types.items())
            con.execute(f"CREATE OR REPLACE TABLE {table} ({cols})")
            continue
        name = f"_{table}_frame"
        # a copy: DuckDB cannot read a column that is a view with a negative stride (a reversed slice,
        # `df.iloc[::-1]`), and fails with a bare "std::bad_cast"
        con.register(name, frame.copy())
        try:
            cols = ", ".join(
                (f"CAST({quote_ident(c)} AS {t})" if t else quote_ident(c)) + f" AS {quote_ident(c)}"
                if c in frame.columns else f"CAST(NULL AS {t or 'VARCHAR'}) AS {quote_ident(c)}"
                for c, t in types.items()
            )  # fmt: skip
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT {cols} FROM {name}")
        finally:
            con.unregister(name)
    return ContractTables(con)


def features_from_frames(
    feature_set: FeatureSet,
    as_of: pd.Timestamp,
    events: pd.DataFrame,
    customers: pd.DataFrame | None = None,
    subscriptions: pd.DataFrame | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Features for customers given their raw behaviour (the online path): same code as training.

    Every customer in ``customers`` (or, without it, in ``events``) gets a row as of ``as_of``.
    """
    settings = settings or Settings(duckdb_memory_limit="512MB", duckdb_threads=1)
    con = connect(settings, spill=False)
    try:
        tables = load_contract_frames(con, customers, events, subscriptions, feature_set.attributes)
        ids = customers["customer_id"] if customers is not None else pd.Series(events["customer_id"].unique())
        rows = pd.DataFrame(
            {"customer_id": ids.astype(str).to_numpy(), "observation_date": pd.Timestamp(as_of)}
        )
        return build_features(tables, rows, feature_set)
    finally:
        con.close()
