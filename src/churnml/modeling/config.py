"""Model and search parameters (training/config.yaml), validated when they load."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from churnml.evaluate import comparable_metric

__all__ = ["TrainConfig", "load_train_config"]


class TrainConfig(BaseModel):
    """Model and search parameters (training/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    # defaults are training/config.yaml's, so `churnml train` without --config runs the same search
    trials: int = Field(15, ge=1)
    timeout_seconds: float | None = Field(600, gt=0)
    seed: int = 0
    backtest_folds: int = Field(3, ge=1)
    test_dates: int = Field(1, ge=1, description="Latest observation dates held out as the out-of-time test.")
    max_depth: int = Field(
        6, ge=2, le=12, description="Upper bound of the depth search (explanation cost grows with depth)."
    )
    max_rounds: int = Field(2000, ge=10)
    early_stopping_rounds: int = Field(50, ge=5)
    min_improvement: float = Field(
        1e-5, ge=0,
        description="A boosting round must lower the validation loss by at least this to count as progress for "
        "early stopping: a perfect fit keeps gaining a little forever, and would never stop.",
    )  # fmt: skip
    capacity: int = Field(
        100, ge=1, description="Accounts a CSM team can call: revenue captured in the top K."
    )
    promotion_metric: str = Field(
        "pr_auc", description="roc_auc, pr_auc, log_loss, brier, ece, lift_top_decile, capture_top_decile "
        "or revenue_captured_top_K.",
    )  # fmt: skip
    promotion_margin: float = Field(0.005, ge=0)
    calibration: list[str] = Field(default_factory=lambda: ["isotonic", "sigmoid"])
    table_holdout: float = Field(
        0.2, ge=0.05, le=0.5,
        description="Share of customers (a stable hash of the id) held out as the test set: with --table, and "
        "with --spec when customers are held out instead of the latest dates.",
    )  # fmt: skip
    customer_folds: int = Field(
        5, ge=2, le=20, description="Cross-validation folds over customers when customers are held out."
    )

    @field_validator("promotion_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        comparable_metric(value)
        return value


def load_train_config(path: Path | None) -> TrainConfig:
    if path is None:
        return TrainConfig()
    if not Path(path).is_file():
        raise ValueError(f"training config {path} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"training config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"training config {path}: expected a mapping of fields, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k != "monitor"}  # that section is `churnml.monitor`'s
    try:
        return TrainConfig.model_validate(data)
    except Exception as err:  # pydantic's message names the field
        raise ValueError(f"training config {path} is invalid: {err}") from None
