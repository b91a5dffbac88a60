"""Request bodies read strictly, with the limits enforced while parsing, not after.

BentoML would parse a body with pydantic on the event loop and check counts only once every object
exists: 60 MB of events held the loop for seconds and a gigabyte of memory before the 400. Here the
JSON parser itself counts objects and stops past :data:`MAX_REQUEST_OBJECTS`; customers and events are
counted on the plain lists before pydantic builds a model; and a large body is parsed in a worker
thread (:class:`churnml.service.compute.Compute`). Duplicate keys are refused (the plain parser keeps
the last one silently).
"""

from __future__ import annotations

import json
from typing import Any

import bentoml
from pydantic import ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.requests import Request

from churnml.explain.reasons import REASONS_SHOWN
from churnml.service.compute import NEVER, Stop
from churnml.service.schemas import (
    MAX_BATCH,
    MAX_REQUEST_CONTAINERS,
    MAX_REQUEST_EVENTS,
    MAX_REQUEST_OBJECTS,
    MAX_REQUEST_VALUES,
    CustomerIn,
    Customers,
    TopK,
    refuse,
)

__all__ = ["ExplainRequest", "PredictRequest", "parse_json", "INLINE_BODY_BYTES", "COMPUTE_SCOPE_KEY"]

INLINE_BODY_BYTES = 64 * 1024  # parsed on the event loop below this size (about a millisecond)
COMPUTE_SCOPE_KEY = "churnml.compute"  # where the service middleware leaves its Compute in the scope


class _TooManyObjects(Exception):
    pass


class _Duplicated(dict):
    """A JSON object that repeated a key (kept to find where it was once the parse is done)."""

    key: str = ""


class _Objects:
    """The parser's hook for every JSON object: counts them and marks repeated keys."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count, self.duplicated = limit, 0, False

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        self.count += 1
        if self.count > self.limit:
            raise _TooManyObjects
        made = dict(pairs)
        if len(made) == len(pairs):
            return made
        seen: set[str] = set()
        marked = _Duplicated(made)
        marked.key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        self.duplicated = True
        return marked


def _find_duplicate(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    if isinstance(value, _Duplicated):
        return (*path, value.key)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        if isinstance(child, dict | list) and (found := _find_duplicate(child, (*path, key))) is not None:
            return found
    return None


def _precount(body: bytes, max_objects: int) -> None:
    """Refuse, before parsing, a body with more arrays and objects or values than a full request has.

    Counted in the raw bytes (about 1 ms per MB; brackets and commas inside strings count too, so it is
    an upper bound): 64 MB of empty arrays would otherwise hold the interpreter lock for 12 seconds,
    stalling the event loop even from a worker thread, and the object hook never sees an array.
    """
    containers = body.count(b"[") + body.count(b"{")
    if containers > max_objects + (MAX_REQUEST_CONTAINERS - MAX_REQUEST_OBJECTS):
        raise refuse(("body",), f"{containers:,} JSON arrays and objects in one request; a full request has at "
                                f"most {MAX_REQUEST_CONTAINERS:,} (at most {MAX_REQUEST_EVENTS:,} events and "
                                f"{MAX_BATCH:,} customers): split the batch")  # fmt: skip
    values = body.count(b",")
    if values > MAX_REQUEST_VALUES:
        raise refuse(("body",), f"about {values:,} JSON values in one request; a full request has at most "
                                f"{MAX_REQUEST_VALUES:,}: split the batch")  # fmt: skip


def parse_json(body: bytes, max_objects: int = MAX_REQUEST_OBJECTS) -> Any:
    """The body as plain Python values; raises a ValidationError (a 400) naming what is wrong."""
    _precount(body, max_objects)
    objects = _Objects(max_objects)
    try:
        value = json.loads(body, object_pairs_hook=objects)
    except _TooManyObjects:
        raise refuse(("body",), f"more than {max_objects:,} JSON objects in one request (at most "
                                f"{MAX_REQUEST_EVENTS:,} events and {MAX_BATCH:,} customers): split the batch"
                     ) from None  # fmt: skip
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise refuse(("body",), f"malformed JSON: {err}") from None
    except RecursionError:
        raise refuse(("body",), "JSON nested too deeply") from None
    if objects.duplicated:
        where = _find_duplicate(value) or ("body",)
        raise refuse(where, f"duplicate key '{where[-1]}' in one JSON object (which one did you mean?)")
    return value


def check_counts(value: Any) -> None:
    """Customers and events per request, counted on the plain lists before any model is built."""
    customers = value.get("customers") if isinstance(value, dict) else None
    if not isinstance(customers, list):
        return  # pydantic names what is missing or of the wrong type
    if len(customers) > MAX_BATCH:
        raise refuse(("customers",), f"{len(customers):,} customers in one request; at most {MAX_BATCH:,}: "
                                     "split the batch")  # fmt: skip
    events = sum(
        len(c["events"]) for c in customers if isinstance(c, dict) and isinstance(c.get("events"), list)
    )
    if events > MAX_REQUEST_EVENTS:
        raise refuse(("customers",), f"{events:,} events in one request; at most {MAX_REQUEST_EVENTS:,}: "
                                     "split the batch")  # fmt: skip


def validate_customers(customers: list[Any], stop: Stop = NEVER) -> list[Any]:
    """Each customer validated on its own (errors located under ``customers``, at most 50).

    One pydantic call per customer, not one for the whole request: the interpreter lock is then
    free between customers, and a request that has ended stops here.
    """
    out: list[Any] = []
    errors: list[InitErrorDetails] = []
    for i, customer in enumerate(customers):
        if i % 50 == 0:
            stop.check()
        try:
            out.append(CustomerIn.model_validate(customer))
        except ValidationError as err:
            for e in err.errors(include_url=False)[: 50 - len(errors)]:
                errors.append(InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]),
                                               loc=("customers", i, *e["loc"]), input=e.get("input")))  # fmt: skip
            out.append(customer)
        if len(errors) >= 50:
            break
    if errors:
        raise ValidationError.from_exception_data("request", errors)
    return out


class _JSONRequest(bentoml.IODescriptor):
    """An API's input, parsed by :func:`parse_json` (in a worker thread when the body is large)."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def parse(cls, body: bytes, stop: Stop = NEVER) -> _JSONRequest:
        value = parse_json(body)
        stop.check()
        check_counts(value)
        if not isinstance(value, dict):
            raise refuse(("body",), f"expected a JSON object, got {type(value).__name__}")
        if isinstance(value.get("customers"), list):
            value = {**value, "customers": validate_customers(value["customers"], stop)}
        return cls.model_validate(value)

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> _JSONRequest:  # noqa: ARG003
        body = await request.body()
        compute = request.scope.get(COMPUTE_SCOPE_KEY)
        if len(body) <= INLINE_BODY_BYTES or compute is None:
            return cls.parse(body)
        return await compute.run(cls.parse, body)


class PredictRequest(_JSONRequest):
    customers: Customers


class ExplainRequest(_JSONRequest):
    customers: Customers
    top_k: TopK = REASONS_SHOWN
