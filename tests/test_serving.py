"""The real service (`churnml serve` -> BentoML) over HTTP on 127.0.0.1: answers, validation, auth."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import expected_tier, start_server, stop_server
from tests.test_explain import quotes


def _plain(v: object) -> object:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def feature_record(table: pd.DataFrame, i: int, names: list[str]) -> dict:
    return {k: _plain(v) for k, v in table.iloc[i][names].items()}


def raw_behaviour(sim_dir: Path, customer_id: str, as_of: pd.Timestamp) -> dict:
    """A customer's profile, events and subscriptions before ``as_of``, as the API takes them."""
    cust = pd.read_parquet(sim_dir / "customers.parquet").set_index("customer_id").loc[customer_id]
    events = pd.read_parquet(sim_dir / "events.parquet", filters=[("customer_id", "==", customer_id)])
    events = events[events["timestamp"] < as_of]
    subs = pd.read_parquet(sim_dir / "subscriptions.parquet", filters=[("customer_id", "==", customer_id)])
    return {
        "customer_id": customer_id,
        "as_of": str(as_of.date()),
        "profile": {
            "signup_date": cust["signup_date"].isoformat(), "plan": cust["plan"], "segment": cust["segment"],
            "mrr": float(cust["mrr"]), "csm_owner": cust["csm_owner"],
            "attributes": {"industry": cust["industry"], "country": cust["country"]},
        },
        "events": [
            {"timestamp": e.timestamp.isoformat(), "event_type": e.event_type, "value": _plain(e.value),
             "user_id": _plain(e.user_id)}
            for e in events.itertuples()
        ],
        "subscriptions": [
            {"start": s.start_date.isoformat(), "end": None if pd.isna(s.end_date) else s.end_date.isoformat(),
             "mrr": float(s.mrr), "plan": s.plan, "seats": float(s.seats)}
            for s in subs.itertuples()
        ],
    }  # fmt: skip


def test_probes_and_model_info(served) -> None:
    assert served.get("/livez", headers={}).status_code == 200
    assert served.get("/readyz", headers={}).status_code == 200
    info = served.post("/model", {}).json()
    assert info["name"] == "churn" and info["alias"] == "champion" and info["version"] == "1"
    assert info["bento_tag"].startswith("churn:v1-")
    assert info["horizon_days"] == 60
    served.post("/predict", {"customers": []})  # counted by the metrics below
    metrics = served.get("/metrics", headers={}).text
    assert 'churnml_http_requests_total{method="POST",route="/predict",status="400"}' in metrics


def test_online_raw_behaviour_matches_batch_scores(served, champion_home: Path, sim_dir: Path) -> None:
    """Batch scoring (`churnml score`) and the endpoint given raw behaviour agree exactly."""
    scores = pd.read_parquet(champion_home / "reports" / "scores.parquet")
    picked = scores.iloc[[0, len(scores) // 2, len(scores) - 1]]
    as_of = pd.Timestamp(picked["as_of"].iloc[0])
    body = {"customers": [raw_behaviour(sim_dir, cid, as_of) for cid in picked["customer_id"]]}
    late = {"event_type": "support_ticket", "value": 1.0}
    for c in body["customers"]:  # on or after as_of (also with offsets): must change nothing
        c["events"] += [{**late, "timestamp": f"{as_of.date()}T00:00:00Z"},
                        {**late, "timestamp": f"{as_of.date()}T01:30:00+01:00"},
                        {**late, "timestamp": f"{(as_of - pd.Timedelta(days=1)).date()}T20:00:00-05:00"}]  # fmt: skip
        first = c["events"][0]
        stamp = pd.Timestamp(first["timestamp"])  # the same instant written with an offset
        first["timestamp"] = (stamp.tz_localize("UTC").tz_convert("Asia/Kolkata")).isoformat()
    r = served.post("/predict", body)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [p["customer_id"] for p in got] == list(picked["customer_id"])
    np.testing.assert_allclose([p["churn_probability"] for p in got], picked["probability"], rtol=1e-9)
    np.testing.assert_allclose([p["revenue_at_risk"] for p in got], picked["revenue_at_risk"], rtol=1e-9)
    assert [p["risk_tier"] for p in got] == list(picked["risk_tier"])
    assert [p["health_score"] for p in got] == list(picked["health_score"])
    assert all(p["as_of"] == str(as_of.date()) and p["model_version"] == "1" for p in got)


def test_feature_records_are_scored_like_the_model_does(served, trained) -> None:
    table, _, result = trained
    model = result.model
    rows = [feature_record(table, i, model.feature_names) for i in range(0, 400, 40)]
    body = {"customers": [{"customer_id": f"c{i}", "features": r} for i, r in enumerate(rows)]}
    r = served.post("/predict", body)
    assert r.status_code == 200, r.text
    expected = model.predict_proba(table.iloc[list(range(0, 400, 40))])
    np.testing.assert_allclose([p["churn_probability"] for p in r.json()["predictions"]], expected, rtol=1e-9)
    for p in r.json()["predictions"]:
        assert p["risk_tier"] == expected_tier(p["churn_probability"])  # CHURNML_RISK_* of the service
        assert p["health_score"] == round(100 * (1 - p["churn_probability"]))
        assert p["revenue_at_risk"] == pytest.approx(p["churn_probability"] * p["mrr"] * 60 / (365.25 / 12))


def test_explain_says_what_the_account_page_says(served, trained, champion_home: Path, sim_dir: Path) -> None:
    """/explain, given an account's features at the workspace's date, returns the page's reasons: the same
    sentences, groups, comparisons with accounts that stayed, and plays, problems apart from context."""
    from churnml.config import Settings
    from churnml.data import load_dataset
    from churnml.engine import connect
    from churnml.features.engine import build_features
    from churnml.spec import load_spec

    model = trained[2].model
    reports = champion_home / "reports"
    scores = pd.read_parquet(reports / "scores.parquet")
    reasons = pd.read_parquet(reports / "reasons.parquet")
    as_of = pd.Timestamp(scores["as_of"].iloc[0])
    picked = list(scores[scores["risk_tier"] == "high"]["customer_id"].iloc[:3])
    picked += list(scores[scores["risk_tier"] == "low"]["customer_id"].iloc[:2])
    with connect(Settings(home=sim_dir, duckdb_memory_limit="1GB")) as con:
        tables = load_dataset(con, load_spec(sim_dir / "spec.yaml"))
        rows = pd.DataFrame({"customer_id": picked, "observation_date": as_of})
        features = build_features(tables, rows, model.feature_set)
    body = {"customers": [{"customer_id": c, "as_of": str(as_of.date()),
                           "features": feature_record(features, i, model.feature_names)} for i, c in enumerate(picked)]}  # fmt: skip
    # no top_k: by default the API gives as many reasons as the page shows
    r = served.post("/explain", body)
    assert r.status_code == 200, r.text
    contrib, base = model.contributions(features)
    signal = np.array([i.signal for i in model.catalogue])
    keys = ["signal", "feature", "sentence", "group", "comparison", "play", "play_action"]
    for k, e in enumerate(r.json()["explanations"]):
        tier = scores.set_index("customer_id").loc[e["customer_id"]]
        assert e["action_needed"] == (tier["risk_tier"] != "low") and e["summary"] == tier["top_reason"]
        assert e["raw_log_odds"] == pytest.approx(base[k] + contrib[k].sum())
        page = reasons[reasons["customer_id"] == e["customer_id"]]
        for kind, field in (("problem", "reasons"), ("protective", "protective"), ("context", "context")):
            expected = page[page["kind"] == kind].sort_values("rank")[keys].astype(object)
            expected = expected.where(expected.notna(), None).to_dict("records")
            assert [{key: x[key] for key in keys} for x in e[field]] == expected, (e["customer_id"], kind)
            for reason in e[field]:  # a reason's SHAP is its group's, summed
                assert reason["contribution"] == pytest.approx(contrib[k][signal == reason["signal"]].sum())
                for v in reason["values"].values():
                    assert quotes(reason["sentence"], v), reason
        assert all(x["contribution"] > 0 and x["kind"] == "problem" for x in e["reasons"])
        assert all(x["play"] is None for x in e["protective"] + e["context"])
    assert any(x["play"] for e in r.json()["explanations"] for x in e["reasons"])


BAD_INPUTS = [
    ("malformed JSON", b'{"customers": [', None),
    ("empty batch", {"customers": []}, "customers"),
    ("oversized batch", {"customers": [{"customer_id": str(i), "events": []} for i in range(1001)]}, "customers"),
    ("missing field", {"customers": [{"events": []}]}, "customer_id"),
    ("unknown field", {"customers": [{"customer_id": "a", "events": [], "colour": "red"}]}, "colour"),
    ("wrong type", {"customers": [{"customer_id": "a", "events": "lots"}]}, "events"),
    ("neither kind", {"customers": [{"customer_id": "a"}]}, "customers"),
    ("bad timestamp", {"customers": [{"customer_id": "a", "events": [{"timestamp": "yesterday", "event_type": "login"}]}]},
     "timestamp"),
    ("out-of-range date", {"customers": [{"customer_id": "a", "as_of": "0037-02-13", "events": []}]}, "as_of"),
    ("timestamp overflowing with its offset", {"customers": [{"customer_id": "a", "events": [
        {"timestamp": "0001-01-01T00:00:00+00:03", "event_type": "login"}]}]}, "timestamp"),
    ("unknown event type", {"customers": [{"customer_id": "a", "events": [{"timestamp": "2025-01-01T00:00:00",
                                                                         "event_type": "teleport"}]}]}, "event_type"),
    ("unknown category", {"customers": [{"customer_id": "a", "events": [], "profile": {"plan": "platinum"}}]}, "plan"),
    ("negative MRR", {"customers": [{"customer_id": "a", "events": [], "profile": {"mrr": -5}}]}, "mrr"),
    ("end before start", {"customers": [{"customer_id": "a", "events": [], "subscriptions": [
        {"start": "2025-02-01T00:00:00", "end": "2025-01-01T00:00:00"}]}]}, "end"),
    ("duplicate ids", {"customers": [{"customer_id": "a", "events": []}, {"customer_id": "a", "events": []}]},
     "customer_id"),
    ("overflowing value", {"customers": [{"customer_id": "a", "events": [
        {"timestamp": "2025-01-01T00:00:00", "event_type": "payment_failed", "value": 1e308}]}]}, "value"),
    ("fractional seats", {"customers": [{"customer_id": "a", "events": [], "subscriptions": [
        {"start": "2025-01-01T00:00:00", "seats": 1e-320}]}]}, "subscriptions"),
    ("unknown attribute category", {"customers": [{"customer_id": "a", "events": [],
                                                   "profile": {"attributes": {"industry": "piracy"}}}]}, "industry"),
    ("unknown subscription plan", {"customers": [{"customer_id": "a", "events": [], "subscriptions": [
        {"start": "2025-01-01T00:00:00", "plan": "platinum"}]}]}, "plan"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_400_naming_the_field(served, case: str, body: object, field: str | None) -> None:
    for route in ("/predict", "/explain"):
        if isinstance(body, bytes):
            r = served.post(route, content=body, headers={"content-type": "application/json"})
        else:
            r = served.post(route, body)
        assert r.status_code == 400, (case, route, r.status_code, r.text)
        payload = r.json()
        assert "error" in payload
        if field:
            locs = [str(p) for d in payload.get("detail", []) for p in d["loc"]]
            assert field in locs, (case, payload)


def test_bad_feature_records_are_refused_field_by_field(served, trained) -> None:
    table, _, result = trained
    names = result.model.feature_names
    record = feature_record(table, 0, names)
    count = next(n for n in names if n.endswith("_count_30d"))
    cases = {
        "nan": (record | {count: float("nan")}, count),
        "negative count": (record | {count: -3}, count),
        "text for a number": (record | {count: "many"}, count),
        "unknown category": (record | {"plan": "platinum"}, "plan"),
        "unknown feature": (record | {"shoe_size": 44}, "shoe_size"),
        "missing feature": ({k: v for k, v in record.items() if k != count}, "features"),
    }
    for case, (features, field) in cases.items():
        body = {"customers": [{"customer_id": "a", "features": features}]}
        import json

        text = json.dumps(body)  # NaN goes out as the JSON extension token NaN
        r = served.post("/predict", content=text.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400, (case, r.text)
        locs = [str(p) for d in r.json()["detail"] for p in d["loc"]]
        assert field in locs, (case, r.json())
    r = served.post("/explain", {"customers": [{"customer_id": "a", "features": record}], "top_k": 0})
    assert r.status_code == 400 and "top_k" in r.text
    r = served.post(
        "/predict", content=b"customers=1", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415


def test_token_is_required_except_on_probes(served) -> None:
    for route in ("/predict", "/explain", "/model"):
        assert served.post(route, {}, headers={"Authorization": ""}).status_code == 401
        assert served.post(route, {}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert served.get("/docs.json", headers={"Authorization": ""}).status_code == 401
    assert served.get("/ui/", headers={"Authorization": ""}).status_code == 401
    for probe in ("/livez", "/readyz", "/metrics"):
        assert served.get(probe, headers={"Authorization": ""}).status_code == 200


def test_openapi_documents_the_real_error_shape(served) -> None:
    spec = served.get("/docs.json").json()
    error = spec["components"]["schemas"]["InvalidArgument"]
    assert error["properties"]["detail"]["type"] == "array"
    assert "401" in spec["paths"]["/predict"]["post"]["responses"]


def test_serve_without_a_champion_fails_with_a_clear_message(tmp_path: Path) -> None:
    server = start_server(tmp_path, wait_ready=False)
    try:
        assert server.process.wait(timeout=60) == 2
        assert "no model 'models:/churn@champion' in the registry" in server.log()
    finally:
        stop_server(server)


def test_service_without_a_model_refuses_to_become_ready(tmp_path: Path) -> None:
    """The service itself (as a built bento runs it), with no champion: alive, never ready, says why."""
    server = start_server(tmp_path, wait_ready=False, direct=True)
    try:
        assert server.process.poll() is None, server.log()
        assert server.get("/livez").status_code == 200
        assert server.get("/readyz").status_code == 503
        r = server.post("/predict", {"customers": [{"customer_id": "a", "events": []}]})
        assert r.status_code == 503
        assert "NOT READY" in server.log() and "churn@champion" in server.log()
    finally:
        stop_server(server)
    shutil.rmtree(tmp_path / "bentoml", ignore_errors=True)
