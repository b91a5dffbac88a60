"""The promotion gate: ``champion`` moves to the challenger only if it wins on the same test rows."""

from __future__ import annotations

import fcntl
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from churnml.evaluate import churn_metrics, comparable_metric, paired_win_share
from churnml.registry.models import load_model
from churnml.registry.tracking import MODEL_NAME

__all__ = ["PromotionResult", "alias_version", "file_lock", "promote_challenger", "promotion_lock"]


def alias_version(client: MlflowClient, alias: str) -> str | None:
    """The ``churn`` version behind ``alias``, or None when no version has it."""
    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


@dataclass(frozen=True)
class PromotionResult:
    promoted: bool
    challenger: str | None
    champion_before: str | None
    champion_after: str | None
    metric: str
    challenger_score: float | None = None
    champion_score: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def file_lock(path: Path, timeout: float = 120.0, purpose: str = "promotion") -> Iterator[None]:
    """One process at a time: an exclusive lock on the local file ``path`` for the ``with`` block.

    Promotion: two `churnml promote` started together would otherwise both read "champion = v1",
    both win and race to set the alias; the second now waits, then finds the challenger already
    champion (promotions against a shared tracking server must run from one host). Model import:
    service workers starting together would otherwise race to write the same BentoML model.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"another {purpose} holds {path} for more than {timeout:.0f} s"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


promotion_lock = file_lock


def _evaluation(meta: dict) -> str:
    """How a model was tested: out of time, or on held-out customers (older models: by their mode)."""
    return str(meta.get("evaluation") or ("customers" if meta.get("mode") == "table" else "time"))


def _held_out_mismatch(challenger: dict, champion: dict) -> str | None:
    """Why the champion cannot be compared with the challenger on the challenger's test rows, if so.

    Only models evaluated the same way compare: a model tested out of time trained on every customer
    through its development dates (the held-out customers of the other kind of model included), and a
    model tested on held-out customers trained on every labelled date (the other's test date included).
    Two held-out-customer models compare when the champion never trained on the challenger's test
    customers: same id column, same share.
    """
    kinds = {"time": "out of time (latest dates)", "customers": "on held-out customers"}
    mine, theirs = _evaluation(challenger), _evaluation(champion)
    if mine != theirs:
        return (
            f"the challenger was evaluated {kinds.get(mine, mine)} and the champion {kinds.get(theirs, theirs)}: "
            "models evaluated differently are not compared (either may have trained on the other's test rows)"
        )
    if mine != "customers":
        return None
    if (challenger.get("mode") == "table") != (champion.get("mode") == "table"):
        source = {True: "a ready table (--table)", False: "behaviour (--spec)"}
        return (
            f"the challenger was trained on {source[challenger.get('mode') == 'table']} and the champion on "
            f"{source[champion.get('mode') == 'table']}: their held-out customers were chosen apart"
        )
    if "table_holdout" not in champion:
        return "the champion was trained on every row of its table (an older churnml): no held-out customers to compare on"
    for key in ("table_holdout", "id_column"):
        if challenger.get(key) != champion.get(key):
            return (
                f"the champion held out customers by another {key} ({champion.get(key)!r} vs {challenger.get(key)!r}): "
                "it may have trained on the challenger's test rows"
            )
    return None


def promote_challenger(
    client: MlflowClient, metric: str = "pr_auc", margin: float = 0.005
) -> PromotionResult:
    """Move ``champion`` to the challenger if it beats the champion by ``margin`` on the same test rows.

    Both models score the challenger run's out-of-time test table; lower-is-better metrics (log loss,
    Brier, ECE) are compared the other way round. The first model becomes champion directly.
    """
    capacity = comparable_metric(metric)
    challenger = alias_version(client, "challenger")
    champion = alias_version(client, "champion")
    if challenger is None:
        return PromotionResult(
            False, None, champion, champion, metric, reason="no challenger: train a model first"
        )
    if champion is None:
        client.set_registered_model_alias(MODEL_NAME, "champion", challenger)
        return PromotionResult(
            True, challenger, None, challenger, metric, reason="first model: becomes champion"
        )
    if champion == challenger:
        return PromotionResult(
            False, challenger, champion, champion, metric, reason="challenger is already champion"
        )
    run_id = client.get_model_version(MODEL_NAME, challenger).run_id
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "evaluation/test_features.parquet", tmp)
        test = pd.read_parquet(path)
    models = {alias: load_model(f"models:/{MODEL_NAME}/{version}", client)
              for alias, version in (("challenger", challenger), ("champion", champion))}  # fmt: skip
    unfair = _held_out_mismatch(models["challenger"].metadata, models["champion"].metadata)
    if unfair:
        return PromotionResult(False, challenger, champion, champion, metric, reason=unfair)
    scores, probabilities = {}, {}
    for alias, version in (("challenger", challenger), ("champion", champion)):
        model = models[alias]
        missing = [c for c in model.feature_names if c not in test.columns]
        if missing:
            return PromotionResult(False, challenger, champion, champion, metric,
                                   reason=f"{alias} v{version} needs features the test table lacks: {missing[:5]}")  # fmt: skip
        mrr = test["mrr"].to_numpy(float) if "mrr" in test else None
        if capacity and mrr is None:
            return PromotionResult(False, challenger, champion, champion, metric,
                                   reason=f"{metric} needs MRR, and the challenger's test rows have none")  # fmt: skip
        probabilities[alias] = model.predict_proba(test)
        scores[alias] = churn_metrics(
            test["churned"].to_numpy(int), probabilities[alias], mrr, capacity or 100
        )[metric]
    lower_is_better = metric in {"log_loss", "brier", "ece"}
    gain = (
        (scores["champion"] - scores["challenger"])
        if lower_is_better
        else (scores["challenger"] - scores["champion"])
    )
    # how often the challenger wins on paired resamples of the test rows: the margin decides, this tells
    # whether the gap is larger than the test set's noise
    wins = paired_win_share(
        test["churned"].to_numpy(int), probabilities["challenger"], probabilities["champion"], metric
    )
    odds = f" (better in {wins:.0%} of paired bootstrap resamples)" if np.isfinite(wins) else ""
    if gain > margin:
        client.set_registered_model_alias(MODEL_NAME, "champion", challenger)
        return PromotionResult(True, challenger, champion, challenger, metric, scores["challenger"], scores["champion"],
                               f"challenger better by {gain:.4f} > margin {margin}{odds}")  # fmt: skip
    return PromotionResult(False, challenger, champion, champion, metric, scores["challenger"], scores["champion"],
                           f"challenger better by {gain:.4f}, needs > {margin}{odds}")  # fmt: skip
