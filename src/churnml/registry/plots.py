"""The figures a training run logs: ROC, precision-recall, calibration, gains, and the SHAP summary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from churnml.evaluate import reliability_table  # noqa: E402
from churnml.model import ChurnModel  # noqa: E402
from churnml.modeling import TrainResult  # noqa: E402

__all__ = ["shap_summary", "training_plots"]


def training_plots(result: TrainResult, folder: Path) -> list[Path]:
    """ROC, precision-recall, calibration and cumulative gains of the out-of-time test, as PNG files."""
    y = result.test_frame["churned"].to_numpy(int)
    p = result.test_frame["probability"].to_numpy(float)
    paths = []

    def save(fig, name: str) -> None:  # noqa: ANN001
        path = folder / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(5, 4))
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label=f"model (AUC {result.test_metrics['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, out-of-time test")
    ax.legend()
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    prec, rec, _ = precision_recall_curve(y, p)
    ax.plot(rec, prec, label=f"model (AP {result.test_metrics['pr_auc']:.3f})")
    ax.axhline(y.mean(), ls="--", color="grey", label=f"base rate {y.mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, out-of-time test")
    ax.legend()
    save(fig, "pr.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    rel = reliability_table(y, p)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot(rel["predicted"], rel["observed"], "o-", label=f"model (ECE {result.test_metrics['ece']:.3f})")
    ax.set(
        xlabel="predicted churn probability", ylabel="observed churn rate", title="Calibration (reliability)"
    )
    ax.legend()
    save(fig, "calibration.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    order = np.argsort(-p, kind="stable")
    gains = np.concatenate([[0], np.cumsum(y[order]) / max(1, y.sum())])
    share = np.linspace(0, 1, len(gains))
    ax.plot(share, gains, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set(
        xlabel="share of accounts called (by risk)",
        ylabel="share of churners reached",
        title="Cumulative gains (lift)",
    )
    ax.legend()
    save(fig, "lift.png")
    return paths


def shap_summary(model: ChurnModel, features: pd.DataFrame, folder: Path) -> tuple[Path, pd.DataFrame]:
    """The mean |SHAP| of each feature on a sample of ``features`` (a table) and its top 15 (a plot)."""
    sample = features.sample(n=min(2000, len(features)), random_state=0)
    contrib, _ = model.contributions(sample)
    labels = {i.name: i.label or i.name for i in model.catalogue}
    importance = pd.DataFrame(
        {"feature": model.feature_names, "mean_abs_shap": np.abs(contrib).mean(axis=0)}
    ).sort_values("mean_abs_shap", ascending=False, kind="stable")
    top = importance.head(15).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.barh([labels.get(f, f) for f in top["feature"]], top["mean_abs_shap"])
    ax.set(xlabel="mean |SHAP| (log-odds)", title="What drives churn risk (SHAP summary)")
    path = folder / "shap_summary.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path, importance
