"""From a probability to what a CSM acts on: health score, risk tier, revenue at risk, reasons, play.

- :mod:`.rows`: one scored row (``score_features``, ``explain_scored``), shared by the online endpoint,
  batch scoring and the Spark partitions, so the API and the account page say the same thing;
- :mod:`.partitions`: scores and reasons where the features are, here or inside Spark's customer
  partitions (``score_and_explain``);
- :mod:`.batch`: ``score_customers``, every active customer at a date with their history and what
  changed, and ``write_workspace``, the DuckDB file the CSM pages read.
"""

from churnml.score.batch import (
    REASON_COLUMNS,
    ScoreResult,
    reason_records,
    score_customers,
    usage_by_month,
    write_workspace,
)
from churnml.score.partitions import ScoredRows, score_and_explain
from churnml.score.rows import (
    DAYS_PER_MONTH,
    RiskPolicy,
    explain_scored,
    health_score,
    revenue_at_risk,
    score_features,
    top_play,
    with_expected_saving,
)  # fmt: skip

__all__ = [
    "DAYS_PER_MONTH", "REASON_COLUMNS", "RiskPolicy", "ScoreResult", "ScoredRows", "explain_scored", "health_score",
    "reason_records", "revenue_at_risk", "score_and_explain", "score_customers", "score_features", "top_play",
    "usage_by_month", "with_expected_saving", "write_workspace",
]  # fmt: skip
