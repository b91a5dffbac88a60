"""The relational feature definitions (churnml.buckets, churnml.accounts) run unchanged on a distributed
engine: PySpark, locally.

The same Ibis expressions are compiled for DuckDB (the embedded default) and executed by Spark on the
same data; the keyed events, the distinct users, the account state and the features built from them
must be the same.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnml.accounts import CUSTOMERS, ROWS, SUBSCRIPTIONS, account_table
from churnml.buckets import (
    DAYS,
    EVENTS,
    KEYS,
    TYPES,
    USER_EVENTS,
    duckdb_event_sql,
    event_table,
    user_table,
    value_table,
)
from churnml.data import load_dataset
from churnml.engine import connect, quote_literal
from churnml.features.definitions import WINDOWS, column_name, slug
from churnml.features.engine import build_features
from churnml.features.inference import infer_feature_set
from churnml.features.runs import count_features, prepare_events, value_features
from churnml.spec import load_spec


def _naive_us(values: pd.Series) -> np.ndarray:
    """Timestamps as naive UTC microseconds (Spark hands them back zone-aware)."""
    values = pd.to_datetime(values)
    if values.dt.tz is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values.to_numpy().astype("datetime64[us]")


pytestmark = [
    pytest.mark.slow,
    # py4j leaves its gateway sockets to the garbage collector when the session stops
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

TIED = pd.Timestamp("2024-06-03 09:30:00.123456")
TIED_VALUES = (3.0, 9.5, -2.0, None)  # same microsecond: the largest value is the last value


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if shutil.which("java") is None:
        pytest.skip("PySpark needs a Java runtime and `java` is not on PATH (.ci/run installs one)")
    from pyspark.sql import SparkSession

    folder = tmp_path_factory.mktemp("spark")
    session = (
        SparkSession.builder.master("local[1]")
        .appName("churnml-portability")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.local.dir", str(folder))
        .config("spark.sql.warehouse.dir", str(folder / "warehouse"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_keyed_events_and_event_features_agree_on_duckdb_and_spark(
    sim_dir: Path, spark, settings, tmp_path
) -> None:  # noqa: ANN001
    import ibis

    ibis.pyspark  # noqa: B018 - loading the backend registers its SQL compiler's options

    con = connect(settings)
    tables = load_dataset(con, load_spec(sim_dir / "spec.yaml"))
    fs = infer_feature_set(tables, load_spec(sim_dir / "spec.yaml"))
    valued = "nps_response"  # a score: its last value is the latest, the largest on a tie
    assert valued in fs.valued_types
    customer = con.execute("SELECT min(customer_id) FROM events").fetchall()[0][0]
    for v in TIED_VALUES:
        con.execute(
            'INSERT INTO events (customer_id, "timestamp", event_type, value) VALUES (?, ?, ?, ?)',
            [customer, TIED.to_pydatetime(), valued, v],
        )

    ids = [r[0] for r in con.execute("SELECT DISTINCT customer_id FROM events ORDER BY 1").fetchall()]
    keys = pd.DataFrame({"customer_id": ids, "ck": np.arange(len(ids), dtype=np.int64)})
    types = pd.DataFrame({"event_type": list(fs.event_types), "ti": np.arange(len(fs.event_types))})
    dates = pd.to_datetime(["2024-05-01", "2024-06-04", "2024-09-01"])
    before = dates.max()
    t_days = dates.to_numpy().astype("datetime64[D]").astype(np.int64)
    origin = con.execute(
        f"""SELECT min(CAST("timestamp" AS DATE) - DATE '1970-01-01') FROM events
            WHERE "timestamp" < TIMESTAMP {quote_literal(str(before))}"""
    ).fetchall()[0][0]
    span = int(t_days.max() - origin) + 1
    shape = {"n_keys": len(ids), "span": span, "origin_day": int(origin)}

    # DuckDB: the compiled definition, as build_features runs it
    con.register("keys_df", keys)
    con.register("types_df", types)
    con.execute("CREATE TEMP TABLE _keys AS SELECT * FROM keys_df")
    con.execute("CREATE TEMP TABLE _types AS SELECT * FROM types_df")
    con.execute(
        'CREATE TEMP VIEW _events_before AS SELECT customer_id, "timestamp", event_type, value FROM events '
        f'WHERE "timestamp" < TIMESTAMP {quote_literal(str(before))}'
    )
    duck_raw = [con.execute(duckdb_event_sql(**shape, valued=v)).fetchnumpy() for v in (False, True)]
    duck = prepare_events(*duck_raw)

    # Spark: the same expression on the same events (through Parquet, as a cluster would read them)
    path = tmp_path / "events.parquet"
    con.execute(
        f"""COPY (SELECT customer_id, "timestamp", event_type, value FROM events)
            TO {quote_literal(str(path))} (FORMAT parquet)"""
    )
    spark.read.parquet(str(path)).createOrReplaceTempView("events")
    spark.createDataFrame(keys).createOrReplaceTempView("_keys")
    spark.createDataFrame(types).createOrReplaceTempView("_types")
    events = ibis.table(EVENTS, name="events")
    spk_raw = []
    for definition in (event_table, value_table):
        expr = definition(
            events.filter(events.timestamp < before), ibis.table(KEYS, name="_keys"),
            ibis.table(TYPES, name="_types"), **shape,
        )  # fmt: skip
        table = spark.sql(ibis.to_sql(expr, dialect="pyspark")).toArrow()
        spk_raw.append({c: table.column(c).to_numpy() for c in table.column_names})
    spk = prepare_events(*spk_raw)

    assert len(duck["key"]) > 1000 and len(duck["value_key"]) > 100 and set(spk) == set(duck)
    for name in duck:  # the same events in the same order: equal, not just close
        np.testing.assert_array_equal(spk[name], duck[name], err_msg=name)
    tied_key = (list(fs.event_types).index(valued) * len(ids) + ids.index(customer)) * span + (
        TIED.to_datetime64().astype("datetime64[D]").astype(np.int64) - origin
    )
    tied = np.flatnonzero(duck["value_key"] == tied_key)
    inserted = [v for v in duck["values"][tied] if v in TIED_VALUES]  # other events may share the day
    assert inserted[-3:] == [-2.0, 3.0, 9.5]  # a tied time orders by value: 9.5 is the last value

    # distinct users in the 30 days before each date, both ways (monthly-like dates: raw events joined)
    days = pd.DataFrame(
        [(t, (t - pd.Timedelta(days=k)).date(), k) for t in dates for k in range(1, 91)],
        columns=["t", "day", "age"],
    )
    first = dates.min() - pd.Timedelta(days=30)
    con.register("days_df", days)
    con.execute("CREATE TEMP TABLE _daymap AS SELECT t::TIMESTAMP AS t, day::DATE AS day, age FROM days_df")
    con.execute(
        'CREATE TEMP VIEW _user_events AS SELECT customer_id, "timestamp", user_id FROM events WHERE '
        f'"timestamp" >= TIMESTAMP {quote_literal(str(first))} AND "timestamp" < TIMESTAMP {quote_literal(str(before))}'
    )
    order = ["ck", "t"]

    def users_on_duckdb(distinct_first: bool) -> pd.DataFrame:
        expr = user_table(
            ibis.table(USER_EVENTS, name="_user_events"), ibis.table(KEYS, name="_keys"),
            ibis.table(DAYS, name="_daymap"), window=30, distinct_first=distinct_first,
        )  # fmt: skip
        return con.execute(ibis.to_sql(expr, dialect="duckdb")).df().sort_values(order, ignore_index=True)

    duck_users = users_on_duckdb(False)
    assert users_on_duckdb(True).equals(duck_users)
    con.execute(
        f"""COPY (SELECT customer_id, "timestamp", user_id FROM _user_events) TO {quote_literal(str(tmp_path / "u.parquet"))}
            (FORMAT parquet)"""
    )
    spark.read.parquet(str(tmp_path / "u.parquet")).createOrReplaceTempView("_user_events")
    spark.createDataFrame(days).createOrReplaceTempView("_daymap")
    users_expr = user_table(
        ibis.table(USER_EVENTS, name="_user_events"), ibis.table(KEYS, name="_keys"),
        ibis.table(DAYS, name="_daymap"), window=30, distinct_first=False,
    )  # fmt: skip
    spark_users = spark.sql(ibis.to_sql(users_expr, dialect="pyspark")).toArrow().to_pandas()
    spark_users = spark_users.sort_values(order, ignore_index=True)
    assert len(duck_users) > 100
    np.testing.assert_array_equal(spark_users["ck"].to_numpy(), duck_users["ck"].to_numpy())
    np.testing.assert_array_equal(_naive_us(spark_users["t"]), _naive_us(duck_users["t"]))
    np.testing.assert_array_equal(spark_users["users"].to_numpy(), duck_users["users"].to_numpy())

    # the event features computed from Spark's buckets are build_features' own
    rows = pd.DataFrame(
        {"customer_id": np.repeat(ids, len(dates)), "observation_date": np.tile(dates, len(ids))}
    )
    expected = build_features(tables, rows, fs)
    ck = np.repeat(np.arange(len(ids)), len(dates))
    rel = np.tile(t_days - origin, len(ids))
    t_us = rows["observation_date"].to_numpy().astype("datetime64[us]").astype(np.int64)
    checked = 0
    for ti, event_type in enumerate(fs.event_types):
        base = (ti * len(ids) + ck) * span
        computed = count_features(spk, base, rel, t_us, WINDOWS)
        computed |= value_features(spk, base, rel, fs.value(event_type).meaning, span)
        for (key, window), values in computed.items():
            column = column_name(key, slug(event_type), window)
            if column in expected:
                np.testing.assert_allclose(
                    values, expected[column].to_numpy(float), rtol=1e-12, err_msg=column
                )
                checked += 1
    assert checked >= 10 * len(fs.event_types)
    users = dict(
        zip(
            zip(spark_users["ck"], _naive_us(spark_users["t"]), strict=True),
            spark_users["users"],
            strict=True,
        )
    )
    expected_users = [
        users.get((c, t), np.nan) for c, t in zip(ck, _naive_us(rows["observation_date"]), strict=True)
    ]
    np.testing.assert_array_equal(
        expected["active_users_30d"].to_numpy(float), np.asarray(expected_users, float)
    )
    assert expected.loc[(rows["customer_id"] == customer) & (rows["observation_date"] == dates[1]),
                        f"{slug(valued)}_score_last"].item() == 9.5  # fmt: skip

    # the account state (plan, MRR, seats, renewal, tenure, users): the same definition on Spark
    for table in ("customers", "subscriptions"):
        target = tmp_path / f"{table}.parquet"
        con.execute(f"COPY {table} TO {quote_literal(str(target))} (FORMAT parquet)")
        spark.read.parquet(str(target)).createOrReplaceTempView(table)
    spark.createDataFrame(
        pd.DataFrame({"_ri": np.arange(len(rows)), "ck": ck, "customer_id": rows["customer_id"],
                      "t": rows["observation_date"]})
    ).createOrReplaceTempView("_rows")  # fmt: skip
    categorical = set(fs.categorical_attributes)
    profile = {a: "string" if a in categorical else "float64" for a in fs.attributes}
    accounts_expr = account_table(
        ibis.table(ROWS, name="_rows"), ibis.table(ibis.schema({**CUSTOMERS, **profile}), name="customers"),
        ibis.table(SUBSCRIPTIONS, name="subscriptions"), users_expr, attributes=fs.attributes,
        attribute_columns=tuple(f"attr_{slug(a)}" for a in fs.attributes), term_months=fs.term_months,
    )  # fmt: skip
    accounts = spark.sql(ibis.to_sql(accounts_expr, dialect="pyspark")).toArrow().to_pandas()
    np.testing.assert_array_equal(accounts["_ri"].to_numpy(), np.arange(len(rows)))
    numeric = ["active_users_30d", "mrr", "mrr_change_90d", "seats", "seats_used_ratio", "days_to_renewal"]
    for column in [*numeric, *fs.numeric_attribute_columns]:
        np.testing.assert_allclose(
            accounts[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-12, err_msg=column
        )
    # tenure from signup or the first subscription (build_features falls back to the first event after)
    has_since = accounts["tenure_days"].notna().to_numpy()
    assert has_since.sum() > len(rows) // 2
    np.testing.assert_allclose(
        accounts["tenure_days"].to_numpy(float)[has_since],
        expected["tenure_days"].to_numpy(float)[has_since],
        rtol=1e-12,
    )
    for column in fs.categorical_columns:
        assert accounts[column].tolist() == expected[column].tolist(), column
    assert expected["mrr_change_90d"].notna().sum() > 100 and expected["days_to_renewal"].notna().sum() > 100
