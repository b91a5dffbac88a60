"""Dataset specs: how a business's data maps onto the contract, and what churn means for it.

A new business is brought in by a YAML file, not code. A spec names where the data is (a folder of
Parquet/CSV files or a DuckDB database), which file or table plays which contract role, column and
event-type mappings, timestamp formats, the churn definition and the observation schedule.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from churnml.schema import CONTRACT, EventValue

__all__ = [
    "SpecError",
    "Source",
    "TableSpec",
    "CustomersSpec",
    "EventSourceSpec",
    "LookupSpec",
    "SubscriptionsSpec",
    "EventLabel",
    "EventValueSpec",
    "CancellationChurn",
    "InactivityChurn",
    "ObservationSpec",
    "ValidationSpec",
    "DatasetSpec",
    "load_spec",
    "parse_spec",
]


class SpecError(ValueError):
    """A dataset spec is missing, malformed or inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    kind: Literal["files", "duckdb"] = "files"
    path: str = Field(description="Folder of files, or a .duckdb database; relative to the spec file.")


class _Located(_Strict):
    """Where a table is: a file in the source folder or a table in a DuckDB source."""

    file: str | None = Field(None, description="File name (Parquet or CSV) inside the source folder.")
    table: str | None = Field(None, description="Table name inside a DuckDB source.")
    csv_delimiter: str = ","

    @model_validator(mode="after")
    def _one_location(self) -> _Located:
        if bool(self.file) == bool(self.table):
            raise ValueError("give exactly one of 'file' (files source) or 'table' (duckdb source)")
        return self

    @property
    def location(self) -> str:
        return self.file or self.table or ""


class TableSpec(_Located):
    columns: dict[str, str] = Field(default_factory=dict, description="contract column -> source column")
    timestamp_format: str | None = Field(
        None, description="strptime format for text timestamps, e.g. '%d/%m/%Y %H:%M'."
    )
    timezone: str = Field("UTC", description="Zone of naive timestamps; all are converted to UTC.")


class CustomersSpec(TableSpec):
    attributes: list[str] = Field(default_factory=list, description="Extra static columns to keep as-is.")
    complete: bool = Field(
        True,
        description=(
            "True if every customer with events is listed. False for partial profile tables: customers "
            "are then the union of ids seen anywhere, and unknown ids in events are not an error."
        ),
    )


class LookupSpec(_Located):
    """A second table joined to an event source by key, for event columns kept elsewhere: campaign
    membership rows whose dates live in a campaigns table, tickets whose customer is on the case."""

    keys: list[str] = Field(
        min_length=1, description="Key column(s), named alike in both tables; unique here."
    )


class EventSourceSpec(TableSpec):
    event_type: str | None = Field(
        None, description="Constant event type when the source has no type column."
    )
    event_types: dict[str, str] = Field(
        default_factory=dict, description="source event type -> contract event type (renames)."
    )
    drop_event_types: list[str] = Field(
        default_factory=list, description="Source event types to ignore on purpose (counted, not errors)."
    )
    group_by: list[str] = Field(
        default_factory=list,
        description=(
            "Source columns that identify one event when a source has several rows per event (e.g. "
            "basket lines -> one purchase per basket_id): rows are combined, timestamp = first, value = sum, "
            "other columns = their smallest value."
        ),
    )

    lookup: LookupSpec | None = Field(
        None, description="A table joined by key before mapping, so columns may come from either."
    )
    duplicates: Literal["quarantine", "keep"] = Field(
        "quarantine",
        description=(
            "Rows identical in every source column: quarantined as a duplicated export, or kept when such "
            "repeats are legitimate (several same-day orders of one amount in a date-only log). Counted either way."
        ),
    )

    @model_validator(mode="after")
    def _type_given(self) -> EventSourceSpec:
        has_col = "event_type" in self.columns
        if has_col == bool(self.event_type):
            raise ValueError("map an 'event_type' column or give a constant 'event_type', exactly one")
        if self.lookup and self.group_by:
            raise ValueError("'group_by' and 'lookup' cannot be combined on one event source")
        return self


class SubscriptionsSpec(TableSpec):
    term_months: int = Field(
        1, ge=1, description="Contract term: renewals fall every N months from the start."
    )


class EventLabel(_Strict):
    """How CSM-facing text names an event type, and how it reads for risk (the built-in vocabulary or
    a neutral default fills what is not given)."""

    plural: str | None = None
    singular: str | None = None
    value: str | None = Field(None, description="What the value is called: 'CSAT', 'minutes watched'.")
    actionable: bool | None = None
    description: str = ""
    group: str | None = Field(
        None, description="Reason group plays are chosen by: usage, support, billing, feedback, onboarding..."
    )
    more_is: Literal["safer", "riskier", "either"] | None = Field(
        None, description="More of these events is safer (logins), riskier (failed payments) or either."
    )
    distinct: str | None = Field(
        None,
        description="Identifiers and categories: how to say their distinct count ('different features used').",
    )


class EventValueSpec(_Strict):
    """What an event type's ``value`` means (``churnml.schema.EventValue``); a bare word is the meaning."""

    meaning: Literal["amount", "score", "quantity", "identifier", "category", "none"]
    scale: tuple[float, float] | None = Field(None, description="score: lowest and highest, e.g. [0, 10].")
    bands: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="score: named ranges, e.g. {detractor: [0, 6]}."
    )
    unit: str = Field("", description="quantity: what changes ('seats').")
    up: str = Field("added", description="quantity: the verb of an increase.")
    down: str = Field("removed", description="quantity: the verb of a decrease.")
    up_is: Literal["safer", "riskier", "either"] = "safer"

    @model_validator(mode="before")
    @classmethod
    def _bare_meaning(cls, data: object) -> object:
        return {"meaning": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _consistent(self) -> EventValueSpec:
        if self.meaning == "score":
            if self.scale is None:
                raise ValueError("a score needs its scale, e.g. {meaning: score, scale: [0, 10]}")
            lo, hi = self.scale
            if not lo < hi:
                raise ValueError(f"scale must run from low to high, got {list(self.scale)}")
            for name, (b_lo, b_hi) in self.bands.items():
                if not lo <= b_lo <= b_hi <= hi:
                    raise ValueError(
                        f"band {name!r} {[b_lo, b_hi]} is not inside the scale {list(self.scale)}"
                    )
        elif self.scale is not None or self.bands:
            raise ValueError(f"scale and bands belong to scores, not to a {self.meaning}")
        return self

    def to_value(self) -> EventValue:
        bands = tuple((name, float(lo), float(hi)) for name, (lo, hi) in self.bands.items())
        scale = (float(self.scale[0]), float(self.scale[1])) if self.scale else None
        return EventValue(self.meaning, scale, bands, self.unit, self.up, self.down, self.up_is)


class CancellationChurn(_Strict):
    """Churn = the subscription ends and is not renewed within the grace gap."""

    definition: Literal["cancellation"]
    grace_days: int = Field(30, ge=0, description="A resubscribe within this many days is not churn.")


class InactivityChurn(_Strict):
    """Churn = no activity event in [t + lead, t + horizon) for a customer active before t."""

    definition: Literal["inactivity"]
    activity_event_types: list[str] = Field(min_length=1)
    active_lookback_days: int = Field(90, gt=0, description="Active at t = an activity event in [t - N, t).")


Churn = Annotated[CancellationChurn | InactivityChurn, Field(discriminator="definition")]

_EVERY = re.compile(r"^\s*(\d+)\s*(day|days|week|weeks|month|months)\s*$")


class ObservationSpec(_Strict):
    start: dt.date | None = Field(
        None, description="First observation date (default: data start + lookback)."
    )
    end: dt.date | None = Field(None, description="Last observation date (default: last labelable date).")
    every: str = Field("1 month", description="'1 month', '2 weeks', '7 days'.")
    lead_days: int = Field(0, ge=0)
    horizon_days: int = Field(gt=0)
    observed_until: dt.date | dt.datetime | None = Field(
        None,
        description=(
            "Behaviour is known up to here: a label is kept when its horizon ends by then. A date means "
            "through the end of that day. Default: the end of the last day for date-only data (every event "
            "at midnight), otherwise the last event's timestamp."
        ),
    )

    @field_validator("every")
    @classmethod
    def _every_ok(cls, v: str) -> str:
        if not _EVERY.match(v) or int(_EVERY.match(v).group(1)) == 0:  # type: ignore[union-attr]
            raise ValueError(f"expected '<N> days|weeks|months' with N > 0, got {v!r}")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> ObservationSpec:
        if self.lead_days >= self.horizon_days:
            raise ValueError(f"lead_days ({self.lead_days}) must be below horizon_days ({self.horizon_days})")
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self

    @property
    def offset(self) -> pd.DateOffset:
        n, unit = _EVERY.match(self.every).groups()  # type: ignore[union-attr]
        unit = unit.rstrip("s")
        return pd.DateOffset(**{f"{unit}s": int(n)})


class ValidationSpec(_Strict):
    max_quarantine_fraction: float = Field(
        0.05, ge=0, le=1, description="Above this share of bad rows in a table, stop instead of quarantining."
    )
    as_of: dt.datetime | None = Field(None, description="Timestamps after this are 'future' (default: now).")


class DatasetSpec(_Strict):
    name: str
    description: str = ""
    currency: str = Field(
        "", max_length=12, description="Currency of MRR (e.g. EUR), shown with amounts on the pages."
    )
    source: Source
    customers: CustomersSpec | None = None
    events: list[EventSourceSpec] = Field(min_length=1)
    subscriptions: SubscriptionsSpec | None = None
    churn: Churn
    observation: ObservationSpec
    validation: ValidationSpec = ValidationSpec()
    evaluation: Literal["auto", "time", "customers"] = Field(
        "auto",
        description=(
            "How `churnml train` tests a model: on the latest dates, out of time (time); on customers held out "
            "at every date (customers); or out of time when a purged backtest fold fits, else customers (auto)."
        ),
    )
    event_labels: dict[str, EventLabel] = Field(default_factory=dict)
    event_values: dict[str, EventValueSpec] = Field(
        default_factory=dict,
        description="Per event type, what its value means (amount, score, quantity, identifier, category, "
        "none); inferred from the data when absent.",
    )
    base_dir: Path = Field(Path("."), exclude=True, description="Folder the spec was read from.")

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        tables: list[tuple[str, TableSpec]] = [("events", e) for e in self.events]
        if self.customers:
            tables.append(("customers", self.customers))
        if self.subscriptions:
            tables.append(("subscriptions", self.subscriptions))
        for role, table in tables:
            contract = CONTRACT[role]
            unknown = sorted(set(table.columns) - set(contract.column_names))
            if unknown:
                raise ValueError(
                    f"{role}.columns: unknown contract column(s) {unknown}; "
                    f"expected some of {contract.column_names}"
                )
            needed = [c.name for c in contract.columns if c.required]
            if role == "events" and isinstance(table, EventSourceSpec) and table.event_type:
                needed.remove("event_type")
            missing = [c for c in needed if c not in table.columns]
            if missing:
                raise ValueError(f"{role}.columns: required contract column(s) {missing} are not mapped")
            if (self.source.kind == "files") != bool(table.file):
                raise ValueError(
                    f"{role}: a '{self.source.kind}' source needs '{'file' if self.source.kind == 'files' else 'table'}'"
                )
        if isinstance(self.churn, CancellationChurn) and self.subscriptions is None:
            raise ValueError("churn.definition 'cancellation' needs a 'subscriptions' table")
        return self

    @property
    def source_path(self) -> Path:
        path = Path(self.source.path)
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def with_source_path(self, path: Path) -> DatasetSpec:
        """The same spec reading its data from another folder or database."""
        return self.model_copy(
            update={"source": Source(kind=self.source.kind, path=str(Path(path).resolve()))}
        )


def _format_error(err: ValidationError, origin: str) -> str:
    lines = [f"dataset spec {origin} is invalid:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after")) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  - {where}: {msg}")
    return "\n".join(lines)


def parse_spec(data: object, base_dir: Path = Path("."), origin: str = "<dict>") -> DatasetSpec:
    """Build a spec from parsed YAML; raises SpecError naming each bad field."""
    if not isinstance(data, dict):
        raise SpecError(
            f"dataset spec {origin} must be a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return DatasetSpec.model_validate({**data, "base_dir": base_dir})
    except ValidationError as err:
        raise SpecError(_format_error(err, origin)) from None


def load_spec(path: str | Path) -> DatasetSpec:
    """Read a YAML dataset spec; relative source paths resolve against the spec's folder."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"dataset spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpecError(f"dataset spec {path} is not valid YAML: {err}") from None
    return parse_spec(data, base_dir=path.resolve().parent, origin=str(path))
