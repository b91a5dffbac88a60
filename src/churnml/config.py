"""Runtime settings: paths and engine limits, read from the environment when asked (never at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENGINES", "Settings", "repo_root", "shared_data_dir"]

ENGINES = ("duckdb", "spark")  # what computes features: one machine's DuckDB, or Spark partitions


def repo_root() -> Path:
    """The checkout this package runs from (src/churnml/config.py -> repo)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """Where the public churn datasets live: $CHURNML_SHARED_DATA or ../shared/data beside the repo."""
    env = os.environ.get("CHURNML_SHARED_DATA")
    return Path(env) if env else repo_root().parent / "shared" / "data"


@dataclass(frozen=True)
class Settings:
    """Everything environment-dependent in one place; build with :meth:`from_env`."""

    home: Path = field(default_factory=lambda: Path.cwd())
    duckdb_memory_limit: str = "6GB"
    duckdb_threads: int = max(1, os.cpu_count() or 1)
    api_token: str | None = field(default=None, repr=False)  # CHURNML_API_TOKEN: bearer token for the service
    model_alias: str = "champion"  # registry alias the service loads
    bento_model: str | None = None  # CHURNML_BENTO_MODEL: a BentoML model tag to serve instead of the alias
    model_source: str = (
        "registry"  # CHURNML_MODEL_SOURCE: "registry" (import the alias) or "bento" (packaged)
    )
    playbook: Path | None = None  # CHURNML_PLAYBOOK: YAML playbook (default: churnml.explain.playbook)
    max_inflight: int = 64  # requests in progress per worker before the service sheds load with 503
    # the service's limits and authentication (churnml.service): see README "Serving"
    serve_workers: int = 1  # CHURNML_SERVE_WORKERS: service worker processes
    access_log: bool = False  # CHURNML_ACCESS_LOG=1: one log line per request
    request_timeout: int = 30  # CHURNML_REQUEST_TIMEOUT: seconds to the first byte of a response (504)
    max_body_bytes: int = 64 * 1024 * 1024  # CHURNML_MAX_BODY_BYTES: received bytes, whatever the framing
    header_timeout: float = 10.0  # CHURNML_HEADER_TIMEOUT: seconds to send the request line and headers
    body_timeout: float = 20.0  # CHURNML_BODY_TIMEOUT: seconds to send the whole body (408 after)
    compute_threads: int = 1  # CHURNML_COMPUTE_THREADS: worker threads for large requests, per worker
    metrics_max_bytes: int = 128 * 1024  # CHURNML_METRICS_MAX_BYTES: /metrics is cut beyond this
    auth_attempts: int = 5  # CHURNML_AUTH_ATTEMPTS: wrong credentials per client and window before 429
    auth_window: float = 60.0  # CHURNML_AUTH_WINDOW: seconds
    trusted_proxies: tuple[
        str, ...
    ] = ()  # CHURNML_TRUSTED_PROXIES: addresses/networks whose X-Forwarded-For counts
    session_secret: str | None = field(
        default=None, repr=False
    )  # CHURNML_SESSION_SECRET (default: a key file)
    session_max_age: int = 12 * 3600  # CHURNML_SESSION_MAX_AGE: seconds a page session lasts
    # risk tiers: the calibrated churn probability (within the model's horizon) from which an account
    # is "high" / "medium" risk. Set them for the business: with a 5% base rate few accounts reach 0.5.
    risk_high: float = 0.5  # CHURNML_RISK_HIGH
    risk_medium: float = 0.2  # CHURNML_RISK_MEDIUM
    # the CSM store (churnml.workspace.store): what CSMs record, kept apart from the workspace that each
    # `churnml score` rebuilds. Default: a SQLite file under CHURNML_HOME; PostgreSQL by URL.
    database_url: str | None = field(default=None, repr=False)  # CHURNML_DATABASE_URL (may hold a password)
    # alerts (`churnml alerts`, churnml.workspace.alerts)
    alert_min_rise: float = 10.0  # CHURNML_ALERT_MIN_RISE: probability points since the previous score
    alert_webhook_url: str | None = field(default=None, repr=False)  # CHURNML_ALERT_WEBHOOK_URL: JSON POST
    alert_webhook_retries: int = 3  # CHURNML_ALERT_WEBHOOK_RETRIES: attempts after the first
    # where CSMs open the pages (e.g. https://churn.example.com/ui): the alerts CSV links each account there
    pages_url: str | None = None  # CHURNML_PAGES_URL
    # tuning on many machines (`churnml tune-worker`, churnml.modeling.studies): the Optuna study's
    # database (default: $CHURNML_HOME/optuna.db, one machine's SQLite file)
    optuna_storage: str | None = field(
        default=None, repr=False
    )  # CHURNML_OPTUNA_STORAGE (may hold a password)
    optuna_heartbeat: int = 30  # CHURNML_OPTUNA_HEARTBEAT: seconds between a running trial's heartbeats
    optuna_grace: int = 90  # CHURNML_OPTUNA_GRACE: seconds without one before the trial is failed and retried
    # features on Spark (churnml.features.spark): `--engine spark` or CHURNML_ENGINE=spark
    engine: str = "duckdb"  # CHURNML_ENGINE: duckdb | spark
    spark_master: str = "local[2]"  # CHURNML_SPARK_MASTER: spark://host:7077, yarn, local[N]...
    spark_partitions: int = 8  # CHURNML_SPARK_PARTITIONS: customer partitions the features are cut into
    # where the driver writes the contract tables for the executors to read: a folder every machine of the
    # cluster mounts (default: a temporary folder here, which only local[N] executors can read)
    spark_staging: Path | None = None  # CHURNML_SPARK_STAGING
    # training beyond one machine (churnml.modeling.distributed): the final fit on a Dask cluster
    dask_scheduler: str | None = None  # CHURNML_DASK_SCHEDULER: tcp://host:8786 (default: fit here)
    dask_lightgbm_port: int = 12400  # CHURNML_DASK_LIGHTGBM_PORT: first of the ports LightGBM uses on workers
    dask_timeout: float = 1800.0  # CHURNML_DASK_TIMEOUT: seconds one distributed fit may take
    # impact (churnml.impact): the share of eligible accounts held out of each month's call list as a
    # control group (0 turns holdouts off, and then impact cannot be measured), the cost of one play in
    # the data's currency (ROI is shown when it is set), and the smallest lift in save rate worth
    # detecting (below it a wide interval reads "too early to tell")
    holdout_share: float = 0.1  # CHURNML_HOLDOUT_SHARE
    play_cost: float | None = None  # CHURNML_PLAY_COST
    impact_min_effect: float = 0.05  # CHURNML_IMPACT_MIN_EFFECT

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def temp_dir(self) -> Path:
        return self.home / "data" / ".duckdb_tmp"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def workspace_path(self) -> Path:
        """The DuckDB file batch scoring writes and the CSM pages read."""
        return self.reports_dir / "workspace.duckdb"

    @property
    def store_url(self) -> str:
        """The CSM store's SQLAlchemy URL: ``CHURNML_DATABASE_URL``, else ``$CHURNML_HOME/csm.db`` (SQLite)."""
        return self.database_url or f"sqlite:///{(self.home / 'csm.db').resolve()}"

    @property
    def uplift_path(self) -> Path:
        """The uplift model `churnml impact --fit-uplift` learns and `churnml score` ranks with."""
        return self.reports_dir / "uplift"

    @property
    def monitoring_path(self) -> Path:
        """The history `churnml monitor` keeps (churnml.monitor.store); the model health page reads it."""
        return self.reports_dir / "monitoring.duckdb"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def users_path(self) -> Path:
        """Named users and the SHA-256 of their tokens (`churnml users`)."""
        return self.home / "users.json"

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from ``CHURNML_*`` variables; a malformed value is a ValueError naming the variable."""
        env = os.environ
        risk_high = _env_number("CHURNML_RISK_HIGH", 0.5, float)
        risk_medium = _env_number("CHURNML_RISK_MEDIUM", 0.2, float)
        if not 0 < risk_medium < risk_high < 1:
            raise ValueError(
                "CHURNML_RISK_MEDIUM / CHURNML_RISK_HIGH: expected 0 < medium < high < 1, "
                f"got medium={risk_medium}, high={risk_high}"
            )
        return cls(
            home=Path(env.get("CHURNML_HOME", Path.cwd())).resolve(),
            duckdb_memory_limit=env.get("CHURNML_DUCKDB_MEMORY_LIMIT", "6GB"),
            duckdb_threads=_env_number("CHURNML_DUCKDB_THREADS", max(1, os.cpu_count() or 1), int, 1),
            api_token=env.get("CHURNML_API_TOKEN") or None,
            model_alias=env.get("CHURNML_MODEL_ALIAS", "champion"),
            bento_model=env.get("CHURNML_BENTO_MODEL") or None,
            model_source=env.get("CHURNML_MODEL_SOURCE", "registry"),
            playbook=Path(env["CHURNML_PLAYBOOK"]) if env.get("CHURNML_PLAYBOOK") else None,
            max_inflight=_env_number("CHURNML_MAX_INFLIGHT", 64, int, 1),
            risk_high=risk_high,
            risk_medium=risk_medium,
            **_store_env(),
            **_service_env(),
            **_tuning_env(),
            **_impact_env(),
        )

    @property
    def study_storage(self) -> str:
        """Where Optuna studies live: ``CHURNML_OPTUNA_STORAGE``, else ``$CHURNML_HOME/optuna.db``."""
        return self.optuna_storage or f"sqlite:///{(self.home / 'optuna.db').resolve()}"


def _tuning_env() -> dict:
    """The engines' settings (Spark, the shared Optuna study, the Dask cluster) from ``CHURNML_*`` variables."""
    url = os.environ.get("CHURNML_OPTUNA_STORAGE", "").strip() or None
    if url is not None and "://" not in url:
        raise ValueError(
            "CHURNML_OPTUNA_STORAGE: expected a database URL such as "
            f"postgresql://user:password@host/db, got {url[:40]!r}"
        )
    heartbeat = _env_number("CHURNML_OPTUNA_HEARTBEAT", 30, int, 1)
    grace = _env_number("CHURNML_OPTUNA_GRACE", 3 * heartbeat, int, 1)
    if grace <= heartbeat:
        raise ValueError(
            f"CHURNML_OPTUNA_GRACE: expected more seconds than CHURNML_OPTUNA_HEARTBEAT ({heartbeat}), got {grace}"
        )
    engine = os.environ.get("CHURNML_ENGINE", "duckdb").strip() or "duckdb"
    if engine not in ENGINES:
        raise ValueError(f"CHURNML_ENGINE: expected one of {', '.join(ENGINES)}, got {engine!r}")
    scheduler = os.environ.get("CHURNML_DASK_SCHEDULER", "").strip() or None
    if scheduler is not None and "://" not in scheduler:
        raise ValueError(
            f"CHURNML_DASK_SCHEDULER: expected an address such as tcp://host:8786, got {scheduler!r}"
        )
    return dict(
        optuna_storage=url, optuna_heartbeat=heartbeat, optuna_grace=grace, dask_scheduler=scheduler,
        engine=engine, spark_master=os.environ.get("CHURNML_SPARK_MASTER", "").strip() or "local[2]",
        spark_partitions=_env_number("CHURNML_SPARK_PARTITIONS", 8, int, 1),
        spark_staging=Path(staging) if (staging := os.environ.get("CHURNML_SPARK_STAGING", "").strip()) else None,
        dask_lightgbm_port=_env_number("CHURNML_DASK_LIGHTGBM_PORT", 12400, int, 1024),
        dask_timeout=_env_number("CHURNML_DASK_TIMEOUT", 1800.0, float, 1.0),
    )  # fmt: skip


def _service_env() -> dict:
    """The service's limits and authentication settings from ``CHURNML_*`` variables."""
    env = os.environ
    return dict(
        serve_workers=_env_number("CHURNML_SERVE_WORKERS", 1, int, 1),
        access_log=env.get("CHURNML_ACCESS_LOG", "0").strip() == "1",
        request_timeout=_env_number("CHURNML_REQUEST_TIMEOUT", 30, int, 1),
        max_body_bytes=_env_number("CHURNML_MAX_BODY_BYTES", 64 * 1024 * 1024, int, 1024),
        header_timeout=_env_number("CHURNML_HEADER_TIMEOUT", 10.0, float, 0.1),
        body_timeout=_env_number("CHURNML_BODY_TIMEOUT", 20.0, float, 0.1),
        compute_threads=_env_number("CHURNML_COMPUTE_THREADS", 1, int, 1),
        metrics_max_bytes=_env_number("CHURNML_METRICS_MAX_BYTES", 128 * 1024, int, 16 * 1024),
        auth_attempts=_env_number("CHURNML_AUTH_ATTEMPTS", 5, int, 1),
        auth_window=_env_number("CHURNML_AUTH_WINDOW", 60.0, float, 0.1),
        trusted_proxies=_networks("CHURNML_TRUSTED_PROXIES"),
        session_secret=env.get("CHURNML_SESSION_SECRET") or None,
        session_max_age=_env_number("CHURNML_SESSION_MAX_AGE", 12 * 3600, int, 60),
    )


def _store_env() -> dict:
    """The CSM store's and the alerts' settings from ``CHURNML_*`` variables."""
    env = os.environ
    url = env.get("CHURNML_DATABASE_URL", "").strip() or None
    if url is not None and "://" not in url:
        raise ValueError(
            "CHURNML_DATABASE_URL: expected an SQLAlchemy URL such as "
            f"postgresql+psycopg://user:password@host/db or sqlite:///path, got {url[:40]!r}"
        )
    webhook = env.get("CHURNML_ALERT_WEBHOOK_URL", "").strip() or None
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise ValueError(f"CHURNML_ALERT_WEBHOOK_URL: expected an http(s):// URL, got {webhook[:40]!r}")
    pages = env.get("CHURNML_PAGES_URL", "").strip().rstrip("/") or None
    if pages is not None and not pages.startswith(("http://", "https://")):
        raise ValueError(f"CHURNML_PAGES_URL: expected an http(s):// URL, got {pages[:40]!r}")
    return dict(
        database_url=url,
        pages_url=pages,
        alert_min_rise=_env_number("CHURNML_ALERT_MIN_RISE", 10.0, float, 0.0),
        alert_webhook_url=webhook,
        alert_webhook_retries=_env_number("CHURNML_ALERT_WEBHOOK_RETRIES", 3, int, 0),
    )


def _impact_env() -> dict:
    """Holdouts and the impact report's settings from ``CHURNML_*`` variables."""
    share = _env_number("CHURNML_HOLDOUT_SHARE", 0.1, float, 0.0)
    if share > 0.5:
        raise ValueError(f"CHURNML_HOLDOUT_SHARE: expected a share between 0 and 0.5, got {share}")
    cost = _env_number("CHURNML_PLAY_COST", -1.0, float, 0.0)
    effect = _env_number("CHURNML_IMPACT_MIN_EFFECT", 0.05, float, 0.001)
    if effect >= 1:
        raise ValueError(f"CHURNML_IMPACT_MIN_EFFECT: expected a share of accounts below 1, got {effect}")
    return dict(holdout_share=share, play_cost=None if cost < 0 else cost, impact_min_effect=effect)


def _networks(name: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or networks (``10.0.0.0/8``), each checked."""
    import ipaddress

    parts = [p.strip() for p in os.environ.get(name, "").split(",") if p.strip()]
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(
                f"{name}: expected IP addresses or networks (10.0.0.0/8), got {part!r}"
            ) from None
    return tuple(parts)


def _env_number(name: str, default: float, kind: type, minimum: float | None = None):  # noqa: ANN202
    """``$name`` as ``kind`` (int or float), ``default`` when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    what = "an integer" if kind is int else "a number"
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}: expected {what}, got {raw!r}") from None
    if value != value or (minimum is not None and value < minimum):  # NaN, or below the minimum
        raise ValueError(
            f"{name}: expected {what}" + (f" >= {minimum}" if minimum is not None else "") + f", got {raw!r}"
        )
    return value
