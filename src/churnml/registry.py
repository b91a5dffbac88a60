"""MLflow tracking and registry: one run per training, the model registered as ``churn``.

A training run logs parameters, out-of-time metrics beside the baselines', dataset digests, the
feature catalogue, plots, the Optuna trial history, the test feature table (so a later promotion
compares models on the same rows) and the model: LightGBM text + JSON metadata, wrapped as an MLflow
pyfunc with a signature and an input example. The new version gets the alias ``challenger``;
``champion`` moves only through :func:`promote_challenger`, so a failed training never touches it.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import logging
import os
import signal
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from churnml.config import Settings  # noqa: E402
from churnml.evaluate import churn_metrics, comparable_metric, paired_win_share, reliability_table  # noqa: E402
from churnml.features.btyd import with_fitted_columns  # noqa: E402
from churnml.features.catalogue import catalogue_frame  # noqa: E402
from churnml.model import ChurnModel  # noqa: E402
from churnml.modeling import TrainConfig, TrainResult, holdout_mask  # noqa: E402

__all__ = [
    "MODEL_NAME",
    "download_model",
    "tracking_uri",
    "check_tracking_server",
    "log_training",
    "experiment_id",
    "load_model",
    "promote_challenger",
    "promotion_lock",
    "file_lock",
    "close_unfinished_runs",
    "PromotionResult",
]

log = logging.getLogger(__name__)
MODEL_NAME = "churn"
EXPERIMENT = "churnml"


def _requirements() -> list[str]:
    """churnml's own pinned dependencies (extras excluded): what the logged model's code imports."""
    return [r for r in importlib.metadata.requires("churnml") or [] if "extra ==" not in r]


def tracking_uri(settings: Settings) -> str:
    """$MLFLOW_TRACKING_URI, else an absolute-path SQLite store under the churnml home."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env else f"sqlite:///{(settings.home / 'mlflow.db').resolve()}"


def check_tracking_server(uri: str) -> MlflowClient:
    """Fail fast, before any expensive work, if the tracking store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        # one quick probe instead of MLflow's retry loop with backoff (minutes against a dead server)
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
                response.read()
        except (OSError, ValueError) as err:
            raise RuntimeError(f"MLflow tracking server {uri} is not reachable: {err}") from None
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as err:  # connection refused, bad URI, locked database...
        raise RuntimeError(
            f"MLflow tracking store {uri} is not reachable: {str(err).splitlines()[0]}"
        ) from None
    return client


def experiment_id(client: MlflowClient, settings: Settings, name: str = EXPERIMENT) -> str:
    """The id of experiment ``name``, created if new (a local store keeps artifacts under CHURNML_HOME)."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):  # a local store keeps artifacts beside it, absolute
        location = (settings.home / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _plots(result: TrainResult, folder: Path) -> list[Path]:
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


def _shap_summary(model: ChurnModel, features: pd.DataFrame, folder: Path) -> tuple[Path, pd.DataFrame]:
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


def log_training(
    result: TrainResult,
    table: pd.DataFrame,
    config: TrainConfig,
    settings: Settings,
    dataset_name: str,
    client: MlflowClient,
) -> tuple[str, str]:
    """Log one training run and register its model as a new ``churn`` version aliased ``challenger``.

    Returns (run_id, model version).
    """
    mlflow.set_tracking_uri(client.tracking_uri)
    experiment = experiment_id(client, settings)
    if "observation_date" in result.test_frame:  # the test rows: (customer, date) pairs
        keys = ["customer_id", "observation_date"]
        test_features = table.merge(result.test_frame[keys], on=keys, how="inner").reset_index(drop=True)
    else:  # a snapshot table: its held-out customers
        test_features = table[table["customer_id"].isin(result.test_frame["customer_id"])].reset_index(
            drop=True
        )
    fs = result.model.feature_set  # the columns fitted at training (BG/NBD), beside the table's own
    test_features = with_fitted_columns(test_features, fs.btyd, fs.btyd_horizon_days)
    run = mlflow.start_run(experiment_id=experiment, run_name=f"train-{dataset_name}")
    try:
        with _terminate_as_exit():
            run_id, version = _log_run(
                run, result, table, test_features, config, settings, dataset_name, client
            )
    except BaseException:
        _end_failed_run(client, run.info.run_id, settings)
        raise
    mlflow.end_run()
    # only a run that finished names the challenger: promote never picks a half-logged model
    client.set_registered_model_alias(MODEL_NAME, "challenger", version)
    return run_id, version


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) raises SystemExit, so the run is marked FAILED, not left
    RUNNING forever. Only in the main thread, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame) -> None:  # noqa: ANN001, ARG001
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _unclosed_runs_file(settings: Settings) -> Path:
    return settings.home / ".churnml-unclosed-runs"


def _end_failed_run(client: MlflowClient, run_id: str, settings: Settings) -> None:
    """Mark a failed run FAILED; if the tracking server is gone too, remember it for next time."""
    try:
        mlflow.end_run(status="FAILED")
    except Exception:  # noqa: BLE001 - the server is down: close the run when it is back
        log.warning("MLflow run %s could not be marked FAILED now; it will be at the next connection", run_id)
        with _unclosed_runs_file(settings).open("a") as f:
            f.write(f"{client.tracking_uri} {run_id}\n")
        while mlflow.active_run() is not None:  # forget it locally so a later run can start
            mlflow.tracking.fluent._active_run_stack.get().pop()


def close_unfinished_runs(client: MlflowClient, settings: Settings) -> list[str]:
    """Mark FAILED the runs a crash or outage left open (recorded by a failed training); return them."""
    path = _unclosed_runs_file(settings)
    if not path.is_file():
        return []
    closed, keep = [], []
    for line in path.read_text().splitlines():
        uri, _, run_id = line.partition(" ")
        if uri != client.tracking_uri:
            keep.append(line)
            continue
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status="FAILED")
            closed.append(run_id)
        except MlflowException:
            keep.append(line)
    path.write_text("".join(f"{k}\n" for k in keep))
    return closed


def _training_rows(table: pd.DataFrame, model: ChurnModel, test_features: pd.DataFrame) -> pd.DataFrame:
    """The rows the final model was fitted on: development dates, or the customers not held out."""
    if model.metadata.get("evaluation", "time") == "time" and "observation_date" in table:
        return table[table["observation_date"] <= pd.Timestamp(model.metadata["trained_through"])]
    if "table_holdout" in model.metadata:  # every row of the customers not held out, at any date
        return table[~holdout_mask(table["customer_id"], float(model.metadata["table_holdout"]))]
    return table[~table["customer_id"].isin(test_features["customer_id"])]


def _log_run(run, result: TrainResult, table: pd.DataFrame, test_features: pd.DataFrame, config: TrainConfig,  # noqa: ANN001
             settings: Settings, dataset_name: str, client: MlflowClient) -> tuple[str, str]:  # fmt: skip
    model = result.model
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mlflow.set_tags({"dataset": dataset_name, "churnml.stage": "train", "churnml.evaluation": result.evaluation,
                         "churnml.evaluation_description": result.evaluation_description})  # fmt: skip
        mlflow.log_params({f"lgb.{k}": v for k, v in result.params.items()})
        mlflow.log_params({f"config.{k}": v for k, v in config.model_dump().items()})
        mlflow.log_params({
            "calibration": model.calibrator.method, "horizon_days": model.metadata.get("horizon_days"),
            "test_dates": ",".join(model.metadata.get("test_dates", [])), "n_features": len(model.feature_names),
            "rows": len(table), "evaluation": result.evaluation,
        })  # fmt: skip
        mlflow.log_metrics({f"test_{k}": v for k, v in result.test_metrics.items() if np.isfinite(v)})
        mlflow.log_metrics({f"cv_{k}": v for k, v in result.cv_metrics.items() if np.isfinite(v)})
        for k, (low, high) in result.test_intervals.items():
            mlflow.log_metrics({f"test_{k}_ci95_low": low, f"test_{k}_ci95_high": high})
        for name, metrics in result.baselines.items():
            mlflow.log_metrics({f"baseline_{name}_{k}": v for k, v in metrics.items() if np.isfinite(v)})
        for context, rows in (
            ("training", _training_rows(table, model, test_features)),
            ("test", test_features),
        ):
            mlflow.log_input(
                mlflow.data.from_pandas(
                    # float label: MLflow's schema inference warns about integer columns otherwise
                    rows.drop(columns=["churn_date"], errors="ignore").astype({"churned": "float64"}),
                    name=f"{dataset_name}-{context}",
                    targets="churned",
                ),
                context=context,
            )  # each with its own digest: two runs trained or tested on the same rows show the same one
        catalogue_frame(model.catalogue).to_csv(folder / "feature_catalogue.csv", index=False)
        mlflow.log_artifact(str(folder / "feature_catalogue.csv"))
        for path in _plots(result, folder):
            mlflow.log_artifact(str(path), artifact_path="plots")
        shap_path, importance = _shap_summary(model, test_features, folder)
        mlflow.log_artifact(str(shap_path), artifact_path="plots")
        importance.to_csv(folder / "shap_importance.csv", index=False)
        mlflow.log_artifact(str(folder / "shap_importance.csv"))
        result.study.trials_dataframe().to_csv(folder / "optuna_trials.csv", index=False)
        mlflow.log_artifact(str(folder / "optuna_trials.csv"), artifact_path="tuning")
        test_features.to_parquet(folder / "test_features.parquet", index=False)
        mlflow.log_artifact(str(folder / "test_features.parquet"), artifact_path="evaluation")
        _log_leaks(result, folder)
        (folder / "metrics.json").write_text(
            json.dumps(
                {
                    "test": result.test_metrics,
                    "test_ci95": result.test_intervals,
                    "cross_validation": result.cv_metrics,
                    "baselines": result.baselines,
                },
                indent=1,
            )  # fmt: skip
        )
        mlflow.log_artifact(str(folder / "metrics.json"), artifact_path="evaluation")

        model_dir = model.save(folder / "churn_model")
        example = test_features[model.feature_names].head(5).copy()
        for c in model.feature_names:  # floats (may be missing at serving time) and strings, never None
            if c in model.feature_set.categorical_columns:
                example[c] = example[c].fillna("").astype(str)
            else:
                example[c] = example[c].astype("float64")
        signature = infer_signature(
            example, pd.DataFrame({"churn_probability": model.predict_proba(example)})
        )
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts={"churn_model": str(model_dir)},
            signature=signature, input_example=example, pip_requirements=_requirements(),
            code_paths=[str(Path(__file__).parent)],  # the churnml package travels with the model
        )  # fmt: skip
        version = mlflow.register_model(info.model_uri, MODEL_NAME)
        client.set_model_version_tag(MODEL_NAME, version.version, "run_id", run.info.run_id)
        return run.info.run_id, str(version.version)


def _log_leaks(result: TrainResult, folder: Path) -> None:
    """What the leak guard left out or kept (tags), and each finding with its figure (an artifact)."""
    left_out = [leak.column for leak in result.leaks if not leak.kept]
    mlflow.set_tags({"churnml.leaks_left_out": ",".join(dict.fromkeys(left_out)) or "none",
                     "churnml.leaks_kept": ",".join(leak.column for leak in result.leaks if leak.kept) or "none"})  # fmt: skip
    (folder / "leaks.json").write_text(json.dumps([leak.to_dict() for leak in result.leaks], indent=1))
    mlflow.log_artifact(str(folder / "leaks.json"), artifact_path="evaluation")


def download_model(uri: str, client: MlflowClient, dst: Path) -> Path:
    """Download the churn model folder behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

    Resolved through ``client`` (its tracking and registry store), never MLflow's process-wide default
    registry, which in MLflow 3 is a SQLite file relative to the working directory.
    """
    name, _, ref = uri.removeprefix("models:/").partition("/")
    alias = None
    if "@" in name:
        name, alias = name.split("@", 1)
    try:
        version = client.get_model_version_by_alias(name, alias).version if alias else ref
        source = client.get_model_version_download_uri(name, version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                    tracking_uri=client.tracking_uri)  # fmt: skip
    except MlflowException as err:
        raise LookupError(f"model {uri} is not available: {err.message}") from None
    return Path(local) / "artifacts" / "churn_model"


def load_model(uri: str = f"models:/{MODEL_NAME}@champion", client: MlflowClient | None = None) -> ChurnModel:
    """The native churn model (booster + calibrator + metadata) behind a model URI."""
    client = client or MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        return ChurnModel.load(download_model(uri, client, Path(tmp)))


def _alias_version(client: MlflowClient, alias: str) -> str | None:
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
    if mine != "customers" or (challenger.get("mode") == "table") != (champion.get("mode") == "table"):
        return None
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
    challenger = _alias_version(client, "challenger")
    champion = _alias_version(client, "champion")
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
