"""One monitoring run: the population scored at a date against the champion's training population.

`monitor_at` scores every account active at the date, measures drift (`drift`), estimates performance
from the probabilities (`estimate`), and, for every earlier observation date whose labels have matured
since the model's test date, sets the realised figures beside what the probabilities estimated then.
It recommends retraining when estimated or realised performance falls below the configured floors,
when realised performance falls below what was estimated (the probabilities no longer mean what they
say: concept drift, which no estimate can see), or when drift passes its thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from churnml.data import ContractTables
from churnml.features.batch import scoring_rows
from churnml.features.btyd import with_fitted_columns
from churnml.features.definitions import family
from churnml.features.engine import build_features
from churnml.features.profile import volume_columns
from churnml.features.windows import LOOKBACK
from churnml.labels import build_labels, label_margin, observation_dates
from churnml.model import ChurnModel
from churnml.monitor.drift import DriftSettings, drift_table, volume_table
from churnml.monitor.estimate import CHECKED, Estimate, estimate_performance, realised_performance
from churnml.spec import DatasetSpec

__all__ = ["MonitorConfig", "MonitorReport", "estimate_for", "load_monitor_config", "monitor_at"]


class MonitorConfig(BaseModel):
    """Floors and drift bars (the ``monitor:`` section of training/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    min_roc_auc: float = Field(
        0.65, ge=0, le=1, description="Retrain below this estimated or realised ROC-AUC."
    )
    min_pr_auc: float = Field(0.0, ge=0, le=1, description="Retrain below this estimated or realised PR-AUC.")
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="False-alarm rate of a run: half for the drift tests (Bonferroni over the columns), half "
        "for realised performance against its estimate (over its checks).",
    )
    min_psi: float = Field(0.1, ge=0, description="A number's drift is reported from this PSI ...")
    alarm_psi: float = Field(0.25, ge=0, description="... and raises an alarm from this one ('major').")
    min_js: float = Field(0.1, ge=0)
    min_missing: float = Field(0.05, ge=0, le=1)
    min_volume_change: float = Field(0.25, ge=0)
    min_importance: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Drift in a feature under this share of the model's split gain is reported, not alarmed.",
    )
    max_drifted_features: int = Field(0, ge=0, description="Retrain when more features than this drift.")
    history_dates: int = Field(
        6, ge=0, description="Matured observation dates to measure realised performance on."
    )

    @property
    def performance_alpha(self) -> float:
        """Each check of realised performance against its estimate (`estimate.CHECKED`)."""
        return self.alpha / 2 / len(CHECKED)

    def drift_settings(self) -> DriftSettings:
        return DriftSettings(self.alpha / 2, self.min_psi, self.min_js, self.min_missing, self.min_volume_change,
                             min_importance=self.min_importance, alarm_psi=self.alarm_psi)  # fmt: skip


def load_monitor_config(path: Path | None) -> MonitorConfig:
    """The ``monitor:`` section of a training config file (defaults without one)."""
    if path is None or not Path(path).is_file():
        return MonitorConfig()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return MonitorConfig.model_validate((data.get("monitor") if isinstance(data, dict) else None) or {})
    except yaml.YAMLError as err:
        raise ValueError(f"config {path} is not valid YAML: {err}") from None
    except ValidationError as err:
        first = err.errors()[0]
        raise ValueError(
            f"config {path}: monitor.{'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None


@dataclass
class MonitorReport:
    as_of: pd.Timestamp
    rows: int
    drift: pd.DataFrame
    volume: pd.DataFrame
    new_event_types: list[str]
    estimates: dict[str, Estimate]
    history: pd.DataFrame  # per matured date: metric, estimated (value, low, high), realised
    reasons: list[str] = field(default_factory=list)  # why retraining is recommended

    @property
    def retrain(self) -> bool:
        return bool(self.reasons)


def score_rows(
    tables: ContractTables, model: ChurnModel, rows: pd.DataFrame
) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows' features, with the columns fitted at training (BG/NBD) that drift is also measured on,
    and their calibrated probabilities."""
    fs = model.feature_set
    features = with_fitted_columns(build_features(tables, rows, fs), fs.btyd, fs.btyd_horizon_days)
    return features, model.predict_proba(features, num_threads=0)


def estimate_for(
    model: ChurnModel, p: np.ndarray, capacity: int, tiers: dict[str, float]
) -> dict[str, Estimate]:
    """CBPE on the probabilities recalibrated on the rows the model did not learn from, with that
    recalibration's own uncertainty in the band."""
    profile = model.profile
    assert profile is not None
    return estimate_performance(p, capacity, tiers, chance=profile.recalibrate(p),
                                chance_draws=profile.recalibrate_draws(p), chance_clusters=profile.calibration_dates)  # fmt: skip


def _history(
    tables: ContractTables, spec: DatasetSpec, model: ChurnModel, as_of: pd.Timestamp,
    config: MonitorConfig, capacity: int, tiers: dict[str, float],
) -> pd.DataFrame:  # fmt: skip
    """Estimated and realised metrics at each matured observation date from the model's test date on."""
    first = pd.Timestamp(max(model.metadata.get("test_dates") or ["1900-01-01"]))
    margin = label_margin(spec)  # a date's labels are known once its horizon (and grace) has passed
    dates = [d for d in observation_dates(spec, tables.window) if first <= d and d + margin <= as_of]
    dates = dates[-config.history_dates :] if config.history_dates else []
    records = []
    if not dates:
        return pd.DataFrame(
            columns=["as_of", "metric", "estimated", "low", "high", "realised", "rows", "churners"]
        )
    labels = build_labels(tables, spec, dates=dates)
    labels = labels[labels["churned"].notna()].reset_index(drop=True)
    for date, rows in labels.groupby("observation_date"):
        _, p = score_rows(tables, model, rows[["customer_id", "observation_date"]].reset_index(drop=True))
        y = rows["churned"].to_numpy(int)
        estimated = estimate_for(model, p, capacity, tiers)
        realised = realised_performance(y, p, capacity, tiers)
        for metric, e in estimated.items():
            records.append(
                (pd.Timestamp(date), metric, e.value, e.low, e.high, realised[metric], len(y), int(y.sum()))
            )
    return pd.DataFrame(
        records, columns=["as_of", "metric", "estimated", "low", "high", "realised", "rows", "churners"]
    )


def _reasons(report: MonitorReport, config: MonitorConfig) -> list[str]:
    out = []
    for metric, floor in (("roc_auc", config.min_roc_auc), ("pr_auc", config.min_pr_auc)):
        e = report.estimates[metric]
        if e.value < floor:
            out.append(f"estimated {metric} {e.value:.3f} is below the floor {floor}")
    latest = (
        report.history[report.history["as_of"] == report.history["as_of"].max()]
        if len(report.history)
        else None
    )
    for r in latest.itertuples() if latest is not None else []:
        floor = {"roc_auc": config.min_roc_auc, "pr_auc": config.min_pr_auc}.get(r.metric)
        if floor is not None and r.realised < floor:
            out.append(f"realised {r.metric} {r.realised:.3f} at {r.as_of.date()} is below the floor {floor}")
        if r.metric in CHECKED and Estimate(r.metric, r.estimated, r.low, r.high).contradicted_by(
            r.realised, config.performance_alpha
        ):
            out.append(f"realised {r.metric} {r.realised:.3f} at {r.as_of.date()} is further from its estimate "
                       f"{r.estimated:.3f} (95% band {r.low:.3f}-{r.high:.3f}) than chance allows: the probabilities no "
                       "longer mean what they say (concept drift?)")  # fmt: skip
    drifted = report.drift[report.drift["alarm"]]
    if len(drifted) > config.max_drifted_features:
        names = ", ".join(drifted["column"].head(8))
        out.append(f"{len(drifted)} column(s) drifted beyond their thresholds: {names}")
    if report.new_event_types:
        out.append(f"new event types the model has never seen: {', '.join(report.new_event_types)}")
    moved = report.volume[report.volume["drifted"]] if len(report.volume) else report.volume
    if len(moved):
        out.append(
            "event volume changed: "
            + ", ".join(f"{t} {c:+.0%}" for t, c in zip(moved["event_type"], moved["change"], strict=True))
        )
    return out


def _recent_event_types(tables: ContractTables, as_of: pd.Timestamp) -> set[str]:
    """The event types of the behaviour the features read at ``as_of`` (its last LOOKBACK days): a type
    that first appears after the date is not new at it."""
    return tables.event_types_between(as_of - pd.Timedelta(days=LOOKBACK), as_of)


def monitor_at(
    tables: ContractTables, spec: DatasetSpec, model: ChurnModel, as_of: pd.Timestamp,
    config: MonitorConfig | None = None, capacity: int = 100, tiers: dict[str, float] | None = None,
) -> MonitorReport:  # fmt: skip
    """Drift, estimated performance and realised history for the population active at ``as_of``."""
    config = config or MonitorConfig()
    if model.profile is None:
        raise ValueError(
            "the model has no training population profile (trained before monitoring existed): retrain it"
        )
    tiers = tiers or {"high": 0.5, "medium": 0.2}
    as_of = pd.Timestamp(as_of).normalize()
    rows = scoring_rows(tables, spec, as_of)
    if rows.empty:
        raise ValueError(f"monitor: no active customers at {as_of.date()}")
    features, p = score_rows(tables, model, rows)
    calendar = {i.name for i in model.catalogue if family(i.family).grows_with_time}
    settings = config.drift_settings()
    fs = model.feature_set
    report = MonitorReport(
        as_of=as_of, rows=len(rows), drift=drift_table(model.profile, features, p, settings, calendar, as_of),
        volume=volume_table(model.profile, features, volume_columns(fs), settings),
        new_event_types=sorted(_recent_event_types(tables, as_of) - set(fs.event_types)),
        estimates=estimate_for(model, p, capacity, tiers),
        history=_history(tables, spec, model, as_of, config, capacity, tiers),
    )  # fmt: skip
    report.reasons = _reasons(report, config)
    return report
