"""Reasons a CSM can repeat: golden sentences for every feature family, one reason per group, checked
against accounts that stayed, context apart, plays only where the facts fit."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnml.explain import DEFAULT_PLAYBOOK, Explainer, describe_feature, format_number, load_playbook
from churnml.explain.playbook import Condition
from churnml.features.btyd import BgNbd
from churnml.features.catalogue import build_catalogue
from churnml.features.definitions import FAMILIES
from churnml.features.reference import FeatureReference
from churnml.features.sets import FeatureSet
from churnml.schema import EVENT_TYPES
from churnml.spec import EventLabel

AS_OF = pd.Timestamp("2025-07-01")
TYPES = ("login", "feature_use", "onboarding_step", "onboarding_completed", "support_ticket", "nps_response",
         "payment_succeeded", "payment_failed", "seat_change", "plan_change")  # fmt: skip
FS = FeatureSet(
    event_types=TYPES,
    event_values=tuple((t, EVENT_TYPES[t].values) for t in TYPES if EVENT_TYPES[t].values.meaning != "none"),
    attributes=("industry", "employees"),
    categorical_attributes=("industry",),
    btyd=(("login", BgNbd(r=0.5, alpha=2.0, a=0.8, b=2.5)),),  # fitted for an activity type
    btyd_horizon_days=60,
)
CATALOGUE = build_catalogue(FS)
INFO = {i.name: i for i in CATALOGUE}


def sentence(column: str, row: dict, as_of: pd.Timestamp | None = AS_OF) -> str | None:
    fact = describe_feature(INFO[column], row, as_of)
    return None if fact is None else fact.text


# Constructed accounts (their feature values) and the sentences a CSM reads about them, covering every
# family of the registry (checked below).
GOLDEN: list[tuple[dict, dict[str, str | None]]] = [
    ({"login_count_7d": 1.0, "login_count_30d": 0.0, "login_count_90d": 37.0},
     {"login_count_7d": "1 login in the last 7 days", "login_count_30d": "No logins in the last 30 days",
      "login_count_90d": "37 logins in the last 90 days"}),
    ({"login_count_30d": 12.0, "login_count_trend_delta": -20.0, "login_count_trend_ratio": 12 / 32},
     {"login_count_trend_ratio": "Logins fell 62% over the last 30 days (12 vs 32 in the 30 days before)",
      "login_count_trend_delta": "Logins fell 62% over the last 30 days (12 vs 32 in the 30 days before)"}),
    ({"login_count_30d": 5.0, "login_count_trend_delta": 5.0, "login_count_trend_ratio": np.nan},
     {"login_count_trend_ratio": "Logins started: 5 in the last 30 days, none in the 30 days before"}),
    ({"login_count_30d": 0.0, "login_count_trend_delta": 0.0},
     {"login_count_trend_delta": "No logins in the last 60 days"}),
    ({"login_active_days_30d": 12.0, "days_since_last_login": 3.2, "login_count_total": 400.0},
     {"login_active_days_30d": "Logins on 12 of the last 30 days", "days_since_last_login": "The last login was 3 days ago",
      "login_count_total": "400 logins since the account started"}),
    ({"days_since_last_login": 45.5, "login_mean_gap_days": 2.5, "login_overdue_ratio": 45.5 / 2.5},
     {"days_since_last_login": "The last login was 46 days ago, on 2025-05-16",
      "login_mean_gap_days": "Logins usually come every 2.5 days",
      "login_overdue_ratio": "46 days since the last login: 18× the usual gap of 2.5 days"}),
    ({"days_since_last_payment_succeeded": 10.2, "payment_succeeded_mean_gap_days": 30.0,
      "payment_succeeded_overdue_ratio": 0.34},
     {"payment_succeeded_overdue_ratio": "10 days since the last payment, within the usual gap of 30 days"}),
    ({"login_mean_gap_days": np.nan, "login_overdue_ratio": np.nan, "days_since_last_login": np.nan,
      "login_count_total": np.nan},
     {"login_mean_gap_days": None, "login_overdue_ratio": None, "days_since_last_login": "No login yet",
      "login_count_total": "No login yet"}),
    ({"feature_use_distinct_30d": 4.0, "feature_use_distinct_90d": 1.0, "feature_use_distinct_total": 9.0},
     {"feature_use_distinct_30d": "4 different features used in the last 30 days",
      "feature_use_distinct_90d": "Different features used in the last 90 days: 1",
      "feature_use_distinct_total": "9 different features used since the account started"}),
    ({"onboarding_step_distinct_total": 3.0, "onboarding_step_distinct_30d": 0.0,
      "onboarding_completed_count_total": np.nan, "days_since_last_onboarding_completed": 515.0},
     {"onboarding_step_distinct_total": "3 different onboarding steps done since the account started",
      "onboarding_step_distinct_30d": "No onboarding steps in the last 30 days",
      "onboarding_completed_count_total": "No onboarding completion yet",
      "days_since_last_onboarding_completed": "The last onboarding completion was 17 months ago, on 2024-02-02"}),
    ({"nps_response_score_last": 4.0, "days_since_last_nps_response_score": 409.0},
     {"nps_response_score_last": "Latest NPS: 4 of 10 (detractor) on 2024-05-18, 13 months ago",
      "days_since_last_nps_response_score": "The latest NPS was given 13 months ago, on 2024-05-18"}),
    ({"nps_response_score_last": 9.0, "days_since_last_nps_response_score": 12.0, "nps_response_score_mean_90d": 8.5,
      "nps_response_score_min_90d": 8.0},
     {"nps_response_score_last": "Latest NPS: 9 of 10 (promoter) on 2025-06-19, 12 days ago",
      "nps_response_score_mean_90d": "NPS averaged 8.5 of 10 in the last 90 days",
      "nps_response_score_min_90d": "Lowest NPS in the last 90 days: 8 of 10 (passive)"}),
    ({"nps_response_score_last": np.nan, "nps_response_score_mean_30d": np.nan, "nps_response_score_min_90d": np.nan,
      "days_since_last_nps_response_score": np.nan},
     {"nps_response_score_last": "No NPS given yet", "nps_response_score_mean_30d": "No NPS given in the last 30 days",
      "nps_response_score_min_90d": "No NPS given in the last 90 days", "days_since_last_nps_response_score": None}),
    ({"support_ticket_score_min_90d": 1.0, "support_ticket_score_mean_30d": 2.5, "support_ticket_count_30d": 3.0},
     {"support_ticket_score_min_90d": "Lowest CSAT in the last 90 days: 1 of 5 (unhappy)",
      "support_ticket_score_mean_30d": "CSAT averaged 2.5 of 5 in the last 30 days",
      "support_ticket_count_30d": "3 support tickets in the last 30 days"}),
    ({"payment_failed_count_30d": 2.0, "payment_failed_amount_sum_30d": 900.0, "payment_failed_amount_mean_30d": 450.0,
      "payment_failed_amount_last": 450.0, "payment_failed_amount_sum_total": 1350.0, "payment_failed_count_total": 3.0,
      "days_since_last_payment_failed": 409.0},
     {"payment_failed_amount_sum_30d": "Failed payments totalled 900 (amount due) in the last 30 days",
      "payment_failed_amount_mean_30d": "Failed payments averaged 450 (amount due) in the last 30 days",
      "payment_failed_amount_last": "The latest failed payment, 13 months ago on 2024-05-18, was 450 (amount due)",
      "payment_failed_amount_sum_total": "Failed payments totalled 1,350 (amount due) since the account started"}),
    ({"payment_failed_count_90d": 0.0, "payment_failed_amount_sum_90d": 0.0, "payment_failed_amount_mean_90d": np.nan,
      "payment_failed_count_total": np.nan, "payment_failed_amount_sum_total": 0.0, "payment_failed_amount_last": np.nan},
     {"payment_failed_amount_sum_90d": "No failed payments in the last 90 days",
      "payment_failed_amount_mean_90d": "No failed payments in the last 90 days",
      "payment_failed_amount_sum_total": "No failed payments yet", "payment_failed_amount_last": "No failed payment yet"}),
    ({"seat_change_count_90d": 2.0, "seat_change_net_90d": -5.0, "seat_change_count_30d": 1.0, "seat_change_net_30d": 1.0,
      "seat_change_count_total": 4.0, "seat_change_net_total": 0.0, "seat_change_last_change": -1.0,
      "days_since_last_seat_change": 12.0},
     {"seat_change_net_90d": "5 seats removed (net) in the last 90 days",
      "seat_change_net_30d": "1 seat added (net) in the last 30 days",
      "seat_change_net_total": "No net change in seats since the account started",
      "seat_change_last_change": "1 seat removed in the latest change, 12 days ago on 2025-06-19"}),
    ({"plan_change_count_90d": 1.0, "plan_change_net_90d": -30.0, "plan_change_last_change": 120.0},
     {"plan_change_net_90d": "30 of MRR lost to downgrades (net) in the last 90 days",
      "plan_change_last_change": "120 of MRR gained from upgrades in the latest change"}),
    ({"active_days_30d": 0.0, "active_users_30d": 1.0, "seats_used_ratio": 1.0, "seats": 1.0},
     {"active_days_30d": "No activity in the last 30 days", "active_users_30d": "1 active user in the last 30 days",
      "seats_used_ratio": "100% of seats in use (1 active user for 1 seat)", "seats": "1 seat purchased"}),
    ({"active_days_30d": 21.0, "active_users_30d": 7.0, "seats_used_ratio": 7 / 20, "seats": 20.0},
     {"active_days_30d": "Active on 21 of the last 30 days",
      "seats_used_ratio": "35% of seats in use (7 active users for 20 seats)", "seats": "20 seats purchased"}),
    ({"mrr": 8400.0, "mrr_change_90d": -600.0, "tenure_days": 427.0, "days_to_renewal": 42.0},
     {"mrr": "MRR is 8,400", "mrr_change_90d": "MRR fell by 600 over the last 90 days",
      "tenure_days": "The account is 427 days old", "days_to_renewal": "Renewal in 42 days"}),
    ({"mrr_change_90d": 0.0, "days_to_renewal": np.nan, "seats_used_ratio": np.nan, "seats": np.nan},
     {"mrr_change_90d": "MRR unchanged over the last 90 days", "days_to_renewal": None, "seats_used_ratio": None}),
    ({"plan": "team", "segment": "SMB", "attr_industry": "finance", "attr_employees": 120.0},
     {"plan": "Plan: team", "segment": "Segment: SMB", "attr_industry": "Industry: finance",
      "attr_employees": "Employees: 120"}),
    ({"plan": None, "attr_industry": np.nan},
     {"plan": None, "attr_industry": None}),
    ({"login_active_days_total": 120.0, "days_since_first_login": 400.0, "login_p_alive": 0.35,
      "login_expected_days_ahead": 4.24},
     {"login_active_days_total": "Logins on 120 days since the account started",
      "days_since_first_login": "The first login was 13 months ago, on 2024-05-27",
      "login_p_alive": "35% chance that logins continue, judging by how often and how lately they came",
      "login_expected_days_ahead": "About 4.2 days with logins expected in the next 60 days at their usual rhythm"}),
    ({"login_active_days_total": np.nan, "days_since_first_login": np.nan, "login_p_alive": np.nan,
      "login_expected_days_ahead": np.nan},
     {"login_active_days_total": "No login yet", "days_since_first_login": "No login yet", "login_p_alive": None,
      "login_expected_days_ahead": None}),
]  # fmt: skip


@pytest.mark.parametrize("row, expected", GOLDEN, ids=[f"account-{i}" for i in range(len(GOLDEN))])
def test_golden_sentences(row: dict, expected: dict[str, str | None]) -> None:
    for column, text in expected.items():
        assert sentence(column, row) == text, column


def test_golden_accounts_cover_every_feature_family() -> None:
    covered = {INFO[c].family for _, expected in GOLDEN for c in expected}
    declared = {f.key for f in FAMILIES if f.scope != "table"}
    assert len(GOLDEN) >= 20
    assert declared - covered == set()


def quotes(text: str, value: float | str) -> bool:
    """The sentence states ``value`` as a whole token ("12" does not count as quoting 1)."""
    if isinstance(value, str):
        return value in text
    number = re.escape(format_number(abs(value)))
    return re.search(rf"(?<![\d.,]){number}(?![\d,]|\.\d)", text) is not None


def test_every_sentence_quotes_the_numbers_it_returns() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        row = {name: float(rng.integers(1, 50)) for name in INFO} | {"plan": "team", "segment": "SMB",
                                                                      "attr_industry": "retail"}  # fmt: skip
        for t in FS.event_types:  # consistent trends: the 30 days before had 5 more
            row[f"{t}_count_trend_delta"] = -5.0
        for info in CATALOGUE:
            fact = describe_feature(info, row, AS_OF)
            if fact is None:
                continue
            assert fact.text[:1].isupper() or fact.text[:1].isdigit(), (info.name, fact.text)
            assert "nan" not in fact.text.lower() and "None" not in fact.text, fact.text
            for key, v in fact.values.items():
                assert v is not None and quotes(fact.text, v), (info.name, fact.text, key, v)


def test_identifiers_are_never_summed_and_a_new_type_reads_from_its_label() -> None:
    names = {i.family for i in CATALOGUE if i.event_type == "feature_use"}
    assert not names & {"amount_sum", "amount_mean", "amount_last", "score_last", "net_change"}
    fs = FeatureSet(event_types=("webinar_attended",),
                    event_values=(("webinar_attended", EVENT_TYPES["purchase"].values),))  # fmt: skip
    labels = {"webinar_attended": EventLabel(plural="webinars", singular="webinar", value="minutes watched")}
    info = {i.name: i for i in build_catalogue(fs, labels)}
    assert (
        info["webinar_attended_amount_mean_90d"].description
        == "Average minutes watched of webinars in the last 90 days."
    )
    row = {"webinar_attended_count_30d": 2.0, "webinar_attended_amount_sum_30d": 95.0}
    assert describe_feature(info["webinar_attended_amount_sum_30d"], row).text == (
        "Webinars totalled 95 (minutes watched) in the last 30 days"
    )


# ------------------------------------------------------------------------------------------ reasons


def frame(rows: list[dict]) -> pd.DataFrame:
    base = {name: 0.0 for name in INFO} | {"plan": "team", "segment": "SMB", "attr_industry": "retail"}
    return pd.DataFrame([base | r for r in rows]).assign(observation_date=AS_OF)


def contributions(rows: int, **by_column: float) -> np.ndarray:
    names = list(INFO)
    out = np.zeros((rows, len(names)))
    for column, value in by_column.items():
        out[:, names.index(column)] = value
    return out


def test_near_duplicates_are_one_reason_and_context_has_no_play() -> None:
    row = {"login_count_7d": 0.0, "login_count_30d": 0.0, "login_count_90d": 3.0, "login_count_trend_delta": -3.0,
           "feature_use_count_30d": 0.0, "payment_failed_count_90d": 2.0, "payment_failed_count_30d": 1.0}  # fmt: skip
    contrib = contributions(1, login_count_7d=0.3, login_count_30d=0.4, login_count_90d=0.2, feature_use_count_30d=0.2,
                            payment_failed_count_30d=0.5, attr_industry=0.6, tenure_days=-0.1)  # fmt: skip
    account = Explainer(CATALOGUE).explain(frame([row]), contrib, [True], k=5)[0]
    assert [r.signal for r in account.problems] == ["usage", "billing"]
    usage = account.problems[0]
    assert usage.contribution == pytest.approx(1.1)  # 0.3 + 0.4 + 0.2 + 0.2: one reason, its SHAP summed
    assert usage.sentence == "No logins in the last 30 days" and usage.play == "Training and check-in"
    assert account.problems[1].play == "Billing fix"
    assert [r.sentence for r in account.context] == ["Industry: retail", "The account is 0 days old"]
    assert all(r.play is None and r.kind == "context" for r in account.context)


def reference(rows: list[dict]) -> FeatureReference:
    retained = frame(rows)
    numeric = [c for c in FS.columns if c not in FS.categorical_columns]
    return FeatureReference.fit(retained, numeric, list(FS.categorical_columns), "accounts that stayed")


def test_a_normal_value_is_never_a_problem() -> None:
    """A login 3 days ago raises risk in SHAP, but accounts that stayed log in about that often."""
    retained = [{"days_since_last_login": float(d), "login_count_30d": float(20 + d)} for d in range(1, 8)]
    explainer = Explainer(CATALOGUE, reference(retained))
    contrib = contributions(2, days_since_last_login=0.4)
    normal, late = explainer.explain(frame([{"days_since_last_login": 3.2}, {"days_since_last_login": 40.0}]),
                                     contrib, [True, True])  # fmt: skip
    assert normal.problems == []
    assert [r.sentence for r in late.problems] == ["The last login was 40 days ago, on 2025-05-22"]
    assert late.problems[0].comparison == "higher than 100% of accounts that stayed (median 4)"


def test_reassuring_words_never_state_a_problem() -> None:
    """'within the usual gap' raising risk read as a contradiction: another fact states it, or none."""
    retained = [{"payment_succeeded_overdue_ratio": 0.1 * k, "days_since_last_payment_succeeded": 3.0 * k,
                 "payment_succeeded_mean_gap_days": 30.0} for k in range(1, 8)]  # fmt: skip
    row = {"payment_succeeded_overdue_ratio": 0.9, "days_since_last_payment_succeeded": 27.0,
           "payment_succeeded_mean_gap_days": 30.0}  # fmt: skip
    account = Explainer(CATALOGUE, reference(retained)).explain(
        frame([row]), contributions(1, payment_succeeded_overdue_ratio=0.5), [True]
    )[0]
    assert account.problems == []


def test_an_account_needing_no_action_gets_no_play_and_shows_what_protects_it() -> None:
    row = {
        "login_count_30d": 0.0,
        "nps_response_score_last": 10.0,
        "days_since_last_nps_response_score": 20.0,
    }
    contrib = contributions(1, login_count_30d=0.4, nps_response_score_last=-0.9)
    low = Explainer(CATALOGUE).explain(frame([row]), contrib, [False])[0]
    assert low.headline == "No action needed"
    assert [r.play for r in low.problems] == [None]
    assert [r.sentence for r in low.protective] == [
        "Latest NPS: 10 of 10 (promoter) on 2025-06-11, 20 days ago"
    ]
    assert low.shown == low.protective


def test_the_contradictions_found_by_csms_cannot_happen() -> None:
    """The plays of the issue's examples, now conditioned on the facts (default playbook)."""
    cases = [  # (facts, reason feature raising risk, play that must not be given)
        ({"nps_response_score_last": np.nan, "nps_response_mean_gap_days": np.nan}, "nps_response_mean_gap_days",
         "Executive call"),
        ({"nps_response_score_last": 4.0, "days_since_last_nps_response_score": 409.0}, "nps_response_score_last",
         "Executive call"),
        ({"onboarding_completed_count_total": 1.0, "days_since_last_onboarding_completed": 515.0, "tenure_days": 600.0},
         "days_since_last_onboarding_completed", "Onboarding session"),
        ({"payment_failed_count_90d": 0.0, "days_since_last_payment_succeeded": 10.2},
         "days_since_last_payment_succeeded", "Billing fix"),
        ({"login_count_total": 400.0, "login_count_30d": 30.0, "login_count_trend_ratio": 1.1,
          "login_overdue_ratio": 0.5}, "login_count_total", "Training and check-in"),
    ]  # fmt: skip
    for facts, feature, play in cases:
        account = Explainer(CATALOGUE).explain(frame([facts]), contributions(1, **{feature: 0.8}), [True])[0]
        assert play not in [r.play for r in account.problems], (facts, account.problems)


FEATURES = [name for name in INFO if not INFO[name].categorical]
value = st.one_of(
    st.none(), st.floats(-5, 400, allow_nan=False), st.sampled_from([0.0, 1.0, 2.0, 6.0, 200.0])
)


def play_violations(account, row: dict) -> list[str]:  # noqa: ANN001
    """Plays shown whose conditions, read with their own words (not the code that chose the play), do
    not hold for the account's values; and plays on anything but a problem."""
    plays = {p.name: p for p in DEFAULT_PLAYBOOK.plays}
    found = [f"play on {r.kind}: {r.sentence}" for r in account.context + account.protective if r.play]
    for reason in account.problems:
        if reason.play is None:
            continue
        play = plays[reason.play]
        s = INFO[reason.feature].event_type or ""
        if not (reason.group in play.when.groups or reason.feature in play.when.features):
            found.append(f"{play.name} does not match {reason.group}")
        if not all(_holds(c, row, s) for c in play.require):
            found.append(f"{play.name}: {play.require} fails for {reason.sentence}")
        if play.require_any and not any(_holds(c, row, s) for c in play.require_any):
            found.append(f"{play.name}: none of {play.require_any} holds for {reason.sentence}")
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(value, min_size=len(FEATURES), max_size=len(FEATURES)),
       effects=st.lists(st.floats(-1, 1), min_size=len(INFO), max_size=len(INFO)))  # fmt: skip
def test_every_play_shown_satisfies_its_conditions(values: list, effects: list) -> None:
    """Accounts with any values and any SHAP: each play shown holds for that account's values."""
    row = {c: (np.nan if v is None else v) for c, v in zip(FEATURES, values, strict=True)}
    account = Explainer(CATALOGUE).explain(frame([row]), np.array([effects]), [True], k=10)[0]
    assert all(r.contribution > 0 and r.kind == "problem" for r in account.problems)
    assert play_violations(account, row) == []


def test_plays_are_given_when_the_facts_fit_and_the_check_catches_a_play_that_ignores_them(
    monkeypatch,
) -> None:  # noqa: ANN001
    fitting = {
        "Billing fix": ({"payment_failed_count_90d": 1.0}, "payment_failed_count_90d"),
        "Executive call": ({"nps_response_score_last": 3.0, "days_since_last_nps_response_score": 20.0},
                           "nps_response_score_last"),
        "Onboarding session": ({"onboarding_completed_count_total": np.nan, "tenure_days": 40.0},
                               "onboarding_completed_count_total"),
        "Support escalation": ({"support_ticket_score_min_90d": 1.0}, "support_ticket_score_min_90d"),
        "Seat and plan review": ({"seat_change_net_90d": -4.0, "seat_change_count_90d": 1.0}, "seat_change_net_90d"),
        "Training and check-in": ({"login_count_30d": 0.0}, "login_count_30d"),
        "Adoption review": ({"seats_used_ratio": 0.1, "seats": 10.0, "active_users_30d": 1.0}, "seats_used_ratio"),
    }  # fmt: skip
    for play, (facts, feature) in fitting.items():
        account = Explainer(CATALOGUE).explain(frame([facts]), contributions(1, **{feature: 0.8}), [True])[0]
        assert [r.play for r in account.problems] == [play], (play, account.problems)
    # control: a playbook that ignores its conditions is caught by the same check
    monkeypatch.setattr(type(DEFAULT_PLAYBOOK.plays[0]), "conditions_hold", lambda self, row, s="": True)
    row = {"nps_response_score_last": 4.0, "days_since_last_nps_response_score": 409.0}  # a stale detractor
    account = Explainer(CATALOGUE).explain(
        frame([row]), contributions(1, nps_response_score_last=0.8), [True]
    )[0]
    assert account.problems[0].play == "Executive call"
    assert play_violations(account, frame([row]).iloc[0].to_dict()) != []


def _holds(condition: str, row: dict, s: str) -> bool:
    text = condition.replace("{s}", s)
    if "{s}" in condition and not s:
        return False
    missing = re.fullmatch(r"(\w+) is missing", text)
    if missing:
        return missing[1] in row and np.isnan(row[missing[1]])
    left, op, right = re.fullmatch(r"(\w+) (<=|>=|==|<|>) (\S+)", text).groups()
    x = row.get(left, np.nan)
    return not np.isnan(x) and eval(f"{x!r} {op} {float(right)!r}")  # noqa: S307 - the test's own literals


def test_conditions_parse_and_a_bad_one_names_itself(tmp_path) -> None:  # noqa: ANN001
    assert Condition("nps_response_score_last <= 6").holds({"nps_response_score_last": 6.0})
    assert not Condition("seat_change_net_90d < 0").holds({})  # a column the model lacks never holds
    assert Condition("x is missing").holds({"x": np.nan}) and not Condition("x is missing").holds({"x": 1.0})
    assert Condition("a < b").holds({"a": 1.0, "b": 2.0})
    path = tmp_path / "playbook.yaml"
    path.write_text(
        "plays:\n- name: X\n  action: Y\n  when: {groups: [usage]}\n  require: ['logins are low']\n"
    )
    with pytest.raises(ValueError, match="logins are low"):
        load_playbook(path)


def test_the_lint_catches_each_kind_of_sentence_a_csm_would_not_trust() -> None:
    from churnml.explain.lint import lint_reasons

    def row(
        feature: str, sentence: str, kind: str = "problem", percentile: float | None = 95.0, **play
    ) -> dict:
        return {"customer_id": "c1", "kind": kind, "feature": feature, "sentence": sentence, "percentile": percentile,
                "play": play.get("play"), "play_condition": play.get("condition"), "play_facts": play.get("facts", "{}")}  # fmt: skip

    good = row("payment_failed_count_90d", "2 failed payments in the last 90 days", play="Billing fix",
               condition="payment_failed_count_90d > 0", facts='{"payment_failed_count_90d": 2}')  # fmt: skip
    cases = {
        "sums_identifier": row("feature_use_distinct_30d", "Total feature id of feature uses: 31"),
        "doubled_label": row("nps_response_count_30d", "NPS score of NPS answers: 6"),
        "unknown": row("login_count_30d", "nan logins in the last 30 days"),
        "stale_without_date": row("nps_response_score_last", "Latest NPS: 4 of 10 (detractor)"),
        "normal_as_problem": row("days_since_last_login", "The last login was 3 days ago", percentile=40.0),
        "play_on_non_problem": row("attr_industry", "Industry: finance", kind="context", percentile=None,
                                   play="Usage check-in", condition=""),
        "play_contradicts": row("payment_failed_count_90d", "The last failed payment was 40 days ago",
                                play="Billing fix", condition="payment_failed_count_90d > 0",
                                facts='{"payment_failed_count_90d": 0}'),
    }  # fmt: skip
    assert lint_reasons(pd.DataFrame([good]), CATALOGUE) == []
    for rule, bad in cases.items():
        found = {v.rule for v in lint_reasons(pd.DataFrame([good, bad]), CATALOGUE)}
        assert rule in found, (rule, found)
    low = pd.Series({"c1": False})  # an account needing no action: a play on it is a violation too
    assert {v.rule for v in lint_reasons(pd.DataFrame([good]), CATALOGUE, low)} == {"play_on_non_problem"}
