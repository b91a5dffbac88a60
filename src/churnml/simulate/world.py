"""The simulated business's fixed catalogue: segments, plans and prices, industries, names, event types,
the planted churn drivers and their weights, and what each event's value means."""

from __future__ import annotations

import numpy as np

__all__ = [
    "BLOCK_SIZE",
    "CONCEPT_DRIFT_WEIGHTS",
    "DRIVERS",
    "LAPSE_SHARE",
    "SIMULATED_EVENT_VALUES",
    "account_names",
]

BLOCK_SIZE = 5_000  # customers per independently seeded block; fixed so output is per-seed deterministic
DAY_US = 86_400_000_000

SEGMENTS = np.array(["SMB", "Mid-Market", "Enterprise"])
SEGMENT_P = [0.6, 0.3, 0.1]
PLANS = np.array(
    ["starter", "team", "business", "enterprise", "growth"]
)  # growth: the covariate-drift scenario's
PRICE_PER_SEAT = np.array([15.0, 30.0, 50.0, 80.0, 40.0])
GROWTH = 4
INDUSTRIES = np.array(
    ["software", "retail", "finance", "healthcare", "education", "media", "manufacturing", "services"]
)
COUNTRIES = np.array(["US", "GB", "DE", "FR", "NL", "CA", "AU", "BR"])
CSMS = np.array(
    ["Ana Souza", "Ben Carter", "Chloe Martin", "David Kim", "Elena Rossi", "Farid Haddad",
     "Grace Liu", "Hugo Weber", "Isla Brown", "Jonas Berg", "Keiko Sato", "Liam Walsh"]
)  # fmt: skip

# account names, made from the account's number (no random draw: the rest of the output is unchanged)
NAME_FIRST = np.array(
    ["Acme", "Blue", "Bright", "Cedar", "Delta", "Ember", "Fjord", "Granite", "Harbor", "Iris", "Juniper", "Kestrel",
     "Lumen", "Maple", "Nimbus", "Orbit", "Pine", "Quartz", "River", "Summit", "Tidal", "Umber", "Vertex", "Willow",
     "Xenon", "Yarrow", "Zephyr", "Atlas", "Beacon", "Copper", "Drift", "Echo", "Falcon", "Glacier", "Helix"]
)  # fmt: skip
NAME_SECOND = np.array(
    ["Analytics", "Labs", "Logistics", "Health", "Foods", "Media", "Robotics", "Energy", "Studio", "Works",
     "Systems", "Partners", "Retail", "Finance", "Learning", "Travel", "Security", "Bio", "Cloud", "Print",
     "Motors", "Design", "Legal", "Farms", "Games", "Textiles", "Capital", "Clinics", "Networks", "Tools"]
)  # fmt: skip
NAME_SUFFIX = np.array(["Inc", "Ltd", "GmbH", "SA", "BV", "Co", "LLC", "AG", "Group", "Oy", "AB", "SAS"])


def account_names(numbers: np.ndarray) -> np.ndarray:
    """A company-like name per account number, distinct for the first 12,600 accounts."""
    sizes = (len(NAME_FIRST), len(NAME_SECOND), len(NAME_SUFFIX))
    k = (np.asarray(numbers, np.int64) * 7919) % (
        sizes[0] * sizes[1] * sizes[2]
    )  # 7919: a prime, spreads them
    first, rest = k % sizes[0], k // sizes[0]
    return np.char.add(np.char.add(np.char.add(NAME_FIRST[first], " "), NAME_SECOND[rest % sizes[1]]),
                       np.char.add(" ", NAME_SUFFIX[(rest // sizes[1]) % sizes[2]]))  # fmt: skip


EVENT_TYPES = np.array(
    ["login", "feature_use", "onboarding_step", "onboarding_completed", "support_ticket", "nps_response",
     "payment_succeeded", "payment_failed", "seat_change", "plan_change"]
)  # fmt: skip
(LOGIN, FEATURE, ONB_STEP, ONB_DONE, TICKET, NPS, PAY_OK, PAY_FAIL, SEAT, PLAN) = range(len(EVENT_TYPES))

BASE_LOGIT = -4.6
# driver -> (weight on the monthly churn logit, plain description)
DRIVERS: dict[str, tuple[float, str]] = {
    "engagement_decline": (0.85, "usage falling month over month (value = months of decline, capped at 3)"),
    "seat_contraction": (1.1, "seats removed in the last 2 months"),
    "support_friction": (1.0, "a support ticket rated CSAT <= 2 in the last 2 months"),
    "detractor_nps": (1.0, "latest NPS answer (last 6 months) was a detractor (0-6)"),
    "failed_payment": (1.8, "an invoice failed last month and was not recovered"),
    "incomplete_onboarding": (1.2, "onboarding not completed, account younger than 6 months"),
}
# what each simulated event's value is (the spec declares them, so nothing about them is inferred)
SIMULATED_EVENT_VALUES = {
    "login": "none",
    "feature_use": "identifier",  # which feature (1-11)
    "onboarding_step": "category",  # which step (1-5)
    "onboarding_completed": "none",
    "support_ticket": {"meaning": "score", "scale": [1, 5], "bands": {"unhappy": [1, 2], "neutral": [3, 3],
                                                                      "happy": [4, 5]}},
    "nps_response": {"meaning": "score", "scale": [0, 10], "bands": {"detractor": [0, 6], "passive": [7, 8],
                                                                    "promoter": [9, 10]}},
    "payment_succeeded": "amount",
    "payment_failed": "amount",
    "seat_change": {"meaning": "quantity", "unit": "seats"},
    "plan_change": {"meaning": "quantity", "unit": "of MRR", "up": "gained from upgrades", "down": "lost to downgrades"},
}  # fmt: skip
LAPSE_SHARE = 0.06  # churn decisions that are really a lapse: resubscribe within 3-20 days (not churn)


# The concept-drift scenario's driver weights from its month on: what used to matter most (failed payments,
# detractors, seat cuts) matters little, and an unfinished onboarding and declining use matter far more
CONCEPT_DRIFT_WEIGHTS = {"engagement_decline": 1.7, "seat_contraction": 0.2, "support_friction": 0.3,
                         "detractor_nps": 0.2, "failed_payment": 0.3, "incomplete_onboarding": 2.6}  # fmt: skip
GROWTH_SHARE = 0.5  # of the signups from the covariate-drift month on, on the new growth plan
