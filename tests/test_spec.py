from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from churnml.config import repo_root
from churnml.simulate import SimulationConfig, simulation_spec
from churnml.spec import CancellationChurn, InactivityChurn, SpecError, load_spec, parse_spec
from tests.conftest import tiny_spec_dict

SPECS = repo_root() / "training" / "specs"


def test_shipped_completejourney_spec_parses() -> None:
    spec = load_spec(SPECS / "completejourney.yaml")
    assert isinstance(spec.churn, InactivityChurn)
    assert spec.churn.activity_event_types == ["purchase"]
    assert spec.observation.horizon_days == 60
    assert [e.event_type for e in spec.events] == ["purchase", "coupon_redemption"]
    assert spec.customers is not None and spec.customers.complete is False
    # relative source paths resolve against the spec's folder
    assert spec.source_path == (SPECS / "../../../shared/data/completejourney").resolve()


def test_shipped_simulated_spec_and_simulator_spec_parse() -> None:
    spec = load_spec(SPECS / "simulated.yaml")
    assert isinstance(spec.churn, CancellationChurn)
    assert spec.source_path == (repo_root() / "data" / "simulated").resolve()
    generated = parse_spec(simulation_spec(SimulationConfig()), base_dir=Path("/x"))
    assert generated.churn == spec.churn
    assert generated.events == spec.events


def test_observation_offset() -> None:
    spec = parse_spec(tiny_spec_dict())
    assert spec.observation.offset.kwds == {"months": 1}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["churn"].update(definition="vibes"), "churn"),
        (lambda s: s.pop("subscriptions"), "'cancellation' needs a 'subscriptions' table"),
        (lambda s: s["events"][0]["columns"].update(colour="c"), "unknown contract column(s) ['colour']"),
        (lambda s: s["events"][0]["columns"].pop("timestamp"), "required contract column(s) ['timestamp']"),
        (lambda s: s["observation"].update(lead_days=40), "lead_days (40) must be below horizon_days (30)"),
        (lambda s: s["observation"].update(every="fortnightly"), "observation.every"),
        (lambda s: s["events"][0].update(table="ev"), "exactly one of 'file'"),
        (lambda s: s["events"][0].update(event_type="login"), "exactly one"),
        (lambda s: s.update(events=[]), "events"),
        (lambda s: s.update(colour="blue"), "colour"),
        (lambda s: s["validation"].update(max_quarantine_fraction=2), "validation.max_quarantine_fraction"),
    ],
)
def test_bad_specs_name_the_field(change, expected: str) -> None:
    data = tiny_spec_dict()
    change(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, origin="tiny.yaml")
    assert "tiny.yaml" in str(err.value)
    assert expected in str(err.value)


def test_load_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(listy)


def test_duckdb_source_needs_tables() -> None:
    data = tiny_spec_dict()
    data["source"] = {"kind": "duckdb", "path": "x.duckdb"}
    with pytest.raises(SpecError, match="a 'duckdb' source needs 'table'"):
        parse_spec(data)


def test_duplicates_policy_and_observed_until_are_checked_fields() -> None:
    spec = tiny_spec_dict()
    spec["events"][0]["duplicates"] = "drop"
    with pytest.raises(SpecError, match=r"events\.0\.duplicates: Input should be 'quarantine' or 'keep'"):
        parse_spec(spec)
    spec["events"][0]["duplicates"] = "keep"
    spec["observation"]["observed_until"] = "2024-06-30"
    parsed = parse_spec(spec)
    assert parsed.events[0].duplicates == "keep" and str(parsed.observation.observed_until) == "2024-06-30"
    assert parse_spec(tiny_spec_dict()).events[0].duplicates == "quarantine"
