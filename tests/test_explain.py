"""Sentences for CSMs: the numbers they quote are the feature values, and they read as English."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from churnml.catalogue import build_catalogue
from churnml.explain import describe_feature, explain_rows, format_number, top_reasons
from churnml.features import FeatureSet


def quotes(sentence: str, value: float) -> bool:
    """The sentence states ``value`` as a whole number token ("12" does not count as quoting 1)."""
    number = re.escape(format_number(abs(value)))
    return re.search(rf"(?<![\d.,]){number}(?![\d,]|\.\d)", sentence) is not None


FS = FeatureSet(
    event_types=("login", "nps_response", "support_ticket"),
    valued_types=("nps_response", "support_ticket"),
    attributes=(),
)
CATALOGUE = {i.name: i for i in build_catalogue(FS)}


def test_trend_sentence_quotes_both_periods_and_the_change() -> None:
    row = {"login_count_30d": 12.0, "login_count_trend_delta": -20.0, "login_count_trend_ratio": 12 / 32}
    sentence, values = describe_feature(CATALOGUE["login_count_trend_ratio"], row)
    assert sentence == "Logins fell 62% over the last 30 days (12 vs 32 in the 30 days before)"
    assert values == {"current": 12.0, "previous": 32.0, "change_percent": -62.0}
    rose, _ = describe_feature(
        CATALOGUE["login_count_trend_delta"], {"login_count_30d": 30.0, "login_count_trend_delta": 10.0}
    )
    assert rose.startswith("Logins rose 50%")
    none, _ = describe_feature(
        CATALOGUE["login_count_trend_ratio"], {"login_count_30d": 0.0, "login_count_trend_delta": 0.0}
    )
    assert none == "No logins in the last 60 days"


def test_sentences_for_missing_values_say_so_instead_of_printing_nan() -> None:
    for name in (
        "days_since_last_login",
        "support_ticket_value_mean_30d",
        "login_overdue_ratio",
        "nps_detractor",
    ):
        sentence, _ = describe_feature(CATALOGUE[name], {name: np.nan})
        assert "nan" not in sentence.lower(), sentence
    assert describe_feature(CATALOGUE["days_since_last_login"], {})[0] == "No login yet"
    # tickets without a score may exist: the sentence says no score, not no ticket
    last = describe_feature(CATALOGUE["support_ticket_last_value"], {"support_ticket_last_value": np.nan})[0]
    assert last == "No CSAT score on any support ticket yet"
    mean = describe_feature(CATALOGUE["support_ticket_value_mean_30d"], {})[0]
    assert mean == "No CSAT score on any support ticket in the last 30 days"
    scored = describe_feature(CATALOGUE["support_ticket_last_value"], {"support_ticket_last_value": 2.0})[0]
    assert scored == "Latest CSAT score of support tickets: 2"


def test_singular_and_plural() -> None:
    assert (
        describe_feature(CATALOGUE["login_count_7d"], {"login_count_7d": 1.0})[0]
        == "1 login in the last 7 days"
    )
    assert (
        describe_feature(CATALOGUE["login_count_7d"], {"login_count_7d": 3.0})[0]
        == "3 logins in the last 7 days"
    )
    assert (
        describe_feature(CATALOGUE["login_count_7d"], {"login_count_7d": 0.0})[0]
        == "No logins in the last 7 days"
    )


def test_seat_usage_sentence_agrees_with_its_inputs() -> None:
    row = {"seats_used_ratio": 7 / 20, "active_users_30d": 7.0, "seats": 20.0}
    sentence, values = describe_feature(CATALOGUE["seats_used_ratio"], row)
    assert sentence == "35% of seats in use (7 active users for 20 seats)"
    assert values == {"percent": 35.0, "users": 7.0, "seats": 20.0}


def test_every_catalogue_feature_gets_a_sentence_quoting_its_numbers() -> None:
    rng = np.random.default_rng(0)
    row = {name: float(rng.integers(1, 50)) for name in CATALOGUE}
    row |= {"plan": "team", "segment": "SMB", "nps_detractor": 1.0}
    for t in FS.event_types:  # consistent trends: the 30 days before had 5 more
        row[f"{t}_count_trend_delta"] = -5.0
    for info in CATALOGUE.values():
        sentence, values = describe_feature(info, row)
        assert sentence and (sentence[0].isupper() or sentence[0].isdigit()), (info.name, sentence)
        for key, v in values.items():
            if isinstance(v, float) and key != "flag":  # a flag is stated in words
                assert quotes(sentence, v), (info.name, sentence, values)


def test_top_reasons_are_ordered_by_effect_and_carry_direction() -> None:
    names = list(CATALOGUE)
    contrib = np.zeros(len(names))
    contrib[names.index("login_count_30d")] = -0.2
    contrib[names.index("days_since_last_login")] = 0.9
    contrib[names.index("support_ticket_count_7d")] = 0.3
    row = {n: 1.0 for n in names} | {"plan": "team", "segment": "SMB"}
    reasons = top_reasons(row, contrib, list(CATALOGUE.values()), k=3)
    assert [r.feature for r in reasons] == [
        "days_since_last_login",
        "support_ticket_count_7d",
        "login_count_30d",
    ]
    assert [r.direction for r in reasons] == ["raises risk", "raises risk", "lowers risk"]
    assert reasons[0].strength == "strong" and reasons[2].strength == "moderate"
    raising = top_reasons(row, contrib, list(CATALOGUE.values()), k=5, only_raising=True)
    assert [r.feature for r in raising] == ["days_since_last_login", "support_ticket_count_7d"]


def test_explain_rows_uses_each_rows_own_values() -> None:
    names = list(CATALOGUE)
    frame = pd.DataFrame([{n: 1.0 for n in names} | {"plan": "a", "segment": "b"}] * 2)
    frame.loc[1, "login_count_7d"] = 9.0
    contrib = np.zeros((2, len(names)))
    contrib[:, names.index("login_count_7d")] = 1.0
    reasons = explain_rows(frame, contrib, list(CATALOGUE.values()), k=1)
    assert reasons[0][0].sentence == "1 login in the last 7 days"
    assert re.match(r"9 logins", reasons[1][0].sentence)
