"""churnml.service.parsing and .schemas on their own: strict JSON, limits applied while parsing, and
the route labels of /metrics. (Against a real server: tests/reliability/test_abuse_*.py.)"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from churnml.service.metrics import UNMATCHED, RouteLabels
from churnml.service.parsing import ExplainRequest, PredictRequest, parse_json


def locs(err: pytest.ExceptionInfo) -> list[tuple]:
    return [tuple(e["loc"]) for e in err.value.errors()]


def test_duplicate_keys_are_refused_where_they_are() -> None:
    with pytest.raises(ValidationError) as err:
        parse_json(b'{"customers": [{"customer_id": "a", "events": []}, {"customer_id": "b", "as_of": "2025-01-01", '
                   b'"as_of": "2026-01-01", "events": []}]}')  # fmt: skip
    assert locs(err) == [("customers", 1, "as_of")]
    assert parse_json(b'{"a": {"b": 1}, "c": {"b": 2}}') == {
        "a": {"b": 1},
        "c": {"b": 2},
    }  # same key, other objects


def test_the_parse_stops_at_the_object_limit() -> None:
    body = json.dumps([{"i": i} for i in range(1000)]).encode()
    with pytest.raises(ValidationError, match="more than 999 JSON objects"):
        parse_json(body, max_objects=999)
    assert len(parse_json(body, max_objects=1000)) == 1000
    with pytest.raises(ValidationError, match="nested too deeply"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ValidationError, match="malformed JSON"):
        parse_json(b'{"customers": [')


def test_arrays_and_values_are_counted_before_the_parse() -> None:
    """Arrays never reach the parser's object hook and cost it more than objects: a body of empty arrays
    (or of numbers) is refused from its bytes, before the parser holds the interpreter lock for seconds."""
    customer = b'{"customer_id": "a", "events": []}'
    arrays = b'{"customers": [' + customer + b'], "junk": [' + b",".join([b"[]"] * 400_000) + b"]}"
    with pytest.raises(ValidationError, match="400,00[0-9] JSON arrays and objects in one request") as err:
        parse_json(arrays)
    assert locs(err) == [("body",)]
    numbers = b'{"customers": [' + customer + b'], "junk": [' + b",".join([b"1"] * 4_000_000) + b"]}"
    with pytest.raises(ValidationError, match="JSON values in one request"):
        parse_json(numbers)
    # the largest requests the schema allows pass: 100 customers of 2,000 features, 200,000 events
    features = {"customers": [{"customer_id": str(i), "features": {f"f{j}": j for j in range(2000)}}
                              for i in range(100)]}  # fmt: skip
    assert len(parse_json(json.dumps(features).encode())["customers"]) == 100
    event = {"timestamp": "2025-01-01T00:00:00Z", "event_type": "login", "value": 1.5, "user_id": "u"}
    events = {"customers": [{"customer_id": str(i), "events": [event] * 20_000} for i in range(10)]}
    assert len(parse_json(json.dumps(events).encode())["customers"]) == 10


def test_counts_are_checked_before_any_model_is_built() -> None:
    events = [{"timestamp": "2025-01-01T00:00:00Z", "event_type": "login"}] * 20_000
    body = json.dumps({"customers": [{"customer_id": str(i), "events": events} for i in range(11)]}).encode()
    with pytest.raises(ValidationError, match="220,000 events in one request; at most 200,000") as err:
        PredictRequest.parse(body)
    assert locs(err) == [("customers",)]
    many = json.dumps({"customers": [{"customer_id": str(i), "events": []} for i in range(1001)]}).encode()
    with pytest.raises(ValidationError, match="1,001 customers"):
        PredictRequest.parse(many)


@pytest.mark.parametrize(
    ("customer", "field"),
    [
        ({"customer_id": "a", "as_of": 0, "events": []}, "as_of"),
        ({"customer_id": "a", "events": [{"timestamp": 1700000000, "event_type": "login"}]}, "timestamp"),
        ({"customer_id": "a", "events": [{"timestamp": "2025-01-01T00:00:00", "event_type": "x", "value": True}]},
         "value"),
        ({"customer_id": "a", "events": [{"timestamp": "2025-01-01T00:00:00", "event_type": "x", "user_id": True}]},
         "user_id"),
        ({"customer_id": "a", "features": {"logins": True}}, "logins"),
        ({"customer_id": "a", "features": {"logins": "12"}}, None),  # text: the model's check names it
        ({"customer_id": "a", "events": [], "profile": {"mrr": True}}, "mrr"),
    ],
)  # fmt: skip
def test_booleans_are_not_numbers_and_numbers_are_not_dates(customer: dict, field: str | None) -> None:
    body = json.dumps({"customers": [customer]}).encode()
    if field is None:
        assert PredictRequest.parse(body).customers[0].features == {"logins": "12"}
        return
    with pytest.raises(ValidationError) as err:
        PredictRequest.parse(body)
    assert all(loc[0] == "customers" and loc[1] == 0 for loc in locs(err))
    assert any(field in loc for loc in locs(err)), locs(err)


def test_the_request_itself_is_strict() -> None:
    ok = {"customers": [{"customer_id": "a", "events": []}]}
    assert ExplainRequest.parse(json.dumps(ok | {"top_k": 5}).encode()).top_k == 5
    for bad, field in ((ok | {"top_k": True}, "top_k"), (ok | {"colour": 1}, "colour")):
        with pytest.raises(ValidationError) as err:
            ExplainRequest.parse(json.dumps(bad).encode())
        assert field in {str(p) for loc in locs(err) for p in loc}
    with pytest.raises(ValidationError, match="expected a JSON object"):
        PredictRequest.parse(b"[1, 2]")


def test_metrics_label_paths_by_their_route_template() -> None:
    labels = RouteLabels(
        ["/predict", "/readyz", "/ui/", "/ui/accounts/{customer_id:path}", "/static_content/{path:path}"]
    )
    assert labels("/predict") == "/predict"
    assert labels("/ui/accounts/ACME-42/x") == "/ui/accounts/{customer_id}"
    assert labels("/static_content/a.css") == "/static_content/{path}"
    assert labels("/predict/../etc") == UNMATCHED and labels("/" + "a" * 2000) == UNMATCHED
