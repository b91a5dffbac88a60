"""NumPy over sorted keyed events: every event feature of every row, by binary search.

Events are sorted by one integer key per (event type, customer, day) (`churnml.buckets`), so a
customer-type's events before a date are one contiguous run: windows are runs within it, counts are
differences of positions, and the run's last event gives recency. Values are searched the same way
in their own sorted array: sums, means and lowest values reduce a run, the last value is its last
entry, distinct identifiers are a bitmask (or a sort) per run. Each function returns its family's
columns keyed by ``(family key, window)``, the names of `churnml.features.definitions`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from churnml.features.definitions import LOOKBACK, TREND, VALUE_WINDOWS

__all__ = [
    "NO_KEY",
    "account_days",
    "count_features",
    "first_and_active_days",
    "prepare_events",
    "run_search",
    "value_features",
]

Columns = dict[tuple[str, int | None], np.ndarray]

NO_KEY = np.iinfo(np.int64).max  # the key of the placeholder event when there are none


def prepare_events(timed: dict[str, np.ndarray], valued: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fetched keyed events (`churnml.buckets`, sorted by key) as NumPy arrays for the run search.

    ``days[i]`` counts the distinct keys (customer-type-days) before position ``i``, so a run
    ``[lo, hi)`` that starts and ends at a day boundary spans ``days[hi] - days[lo]`` active days.
    The values get a sentinel past the end, so every run's end is a valid start for `ranged_reduce`.
    Nothing else is copied: a fresh array of 40M events costs ~0.3 s here in first-touch page faults.
    """
    key = np.asarray(timed["key"], np.int64)
    last_us = np.asarray(timed["timestamp"]).astype("datetime64[us]", copy=False).view(np.int64)
    if not len(key):  # no events: one placeholder past every key keeps the indexing valid
        key, last_us = np.array([NO_KEY]), np.zeros(1, np.int64)
    starts = np.empty(len(key), bool)
    starts[0] = True
    np.not_equal(key[1:], key[:-1], out=starts[1:])
    days = np.empty(len(key) + 1, np.int32 if len(key) < 2**31 - 1 else np.int64)
    days[0] = 0
    np.cumsum(starts, dtype=days.dtype, out=days[1:])
    values = np.empty(len(valued["key"]) + 1, np.float64)
    np.add(np.ma.getdata(valued["value"]), 0.0, out=values[:-1])  # -0.0 -> 0.0: sorted as equal, so alike
    values[-1] = 0.0
    return {"key": key, "last_us": last_us, "days": days,
            "value_key": np.asarray(valued["key"], np.int64), "values": values}  # fmt: skip


def ranged_reduce(
    ufunc: np.ufunc, values: np.ndarray, lo: np.ndarray, hi: np.ndarray, empty: float
) -> np.ndarray:
    """``ufunc`` reduced over ``values[lo:hi]`` per pair (``empty`` for an empty run), from the run
    itself (not prefix differences).

    So a customer's sums use only that customer's values, in the same order on every path, and the
    training, batch and online features are bit-identical. ``hi`` must stay below ``len(values)``
    (a sentinel sees to it) and ascend, which keeps the in-between runs short.
    """
    if not len(lo):
        return np.zeros(0, dtype=values.dtype)
    idx = np.empty(2 * len(lo), dtype=np.int64)
    idx[0::2], idx[1::2] = lo, hi
    with np.errstate(over="ignore", invalid="ignore"):  # the unused in-between runs may overflow
        return np.where(hi > lo, ufunc.reduceat(values, idx)[0::2], empty)


def run_search(
    keys: np.ndarray, base: np.ndarray, rel: np.ndarray
) -> tuple[Callable[[int | None], np.ndarray], bool]:
    """``at(days_back)``: per row, the position of its first key on or after day ``rel - days_back``
    (clipped at day 0), in sorted ``keys``; and whether any key lies in the rows' range.

    Every search looks for a key in [min(base), max(base + rel)]: searching only that slice of the keys
    (one type's events) stays in cache better, and gives the same positions once offset.
    """
    needles = (base.min(), (base + np.maximum(rel, 0)).max()) if len(base) else (0, 0)
    offset, end = (int(i) for i in np.searchsorted(keys, needles, side="left"))
    part = keys[offset:end]

    def at(days_back: int | None) -> np.ndarray:
        target = base if days_back is None else base + np.maximum(rel - days_back, 0)
        return np.searchsorted(part, target, side="left") + offset

    return at, end > offset


def count_features(
    events: dict[str, np.ndarray],
    base: np.ndarray,
    rel: np.ndarray,
    t_us: np.ndarray,
    windows: tuple[int, ...],
) -> Columns:
    """One event type's count, trend and recency families per row.

    ``base`` is each row's key for day 0 of its customer and this type, ``rel`` its date in days from
    day 0. A customer-type's events before the date are one contiguous run found by binary search
    (``at(None)`` is the run's start): windows are runs within it, counts are differences of positions,
    and the run's last event gives recency.
    """
    key = events["key"]
    at, _ = run_search(key, base, rel)
    hi, first = at(0), at(None)
    lo = {w: at(w) for w in sorted({*windows, TREND, 2 * TREND})}

    def count(lo_: np.ndarray, hi_: np.ndarray) -> np.ndarray:
        return (hi_ - lo_).astype(np.float64)

    n_trend, n_prev = count(lo[TREND], hi), count(lo[2 * TREND], lo[TREND])
    total = count(first, hi)
    seen = hi > first
    last = np.where(seen, hi - 1, 0)
    first_seen = np.where(seen, first, 0)  # a valid index (key is never empty)
    days = events["days"]
    days_since = np.where(seen, (t_us - events["last_us"][last]) / 86_400e6, np.nan)
    first_day = key[first_seen] - base  # same group: the day number of the type's first event
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(total > 1, (key[last] - key[first_seen]) / (total - 1), np.nan)  # same group: days
        return {("count_window", w): count(lo[w], hi) for w in windows} | {
            ("count_trend_ratio", None): np.where(n_prev > 0, n_trend / n_prev, np.nan),
            ("count_trend_delta", None): n_trend - n_prev,
            ("active_days", None): (days[hi] - days[lo[TREND]]).astype(np.float64),
            ("days_since_last", None): days_since,
            ("count_total", None): np.where(seen, total, np.nan),
            ("active_days_total", None): np.where(seen, (days[hi] - days[first]).astype(np.float64), np.nan),
            ("days_since_first", None): np.where(seen, (rel - first_day).astype(np.float64), np.nan),
            ("mean_gap_days", None): gap,
            ("overdue_ratio", None): np.where(gap > 0, days_since / np.where(gap > 0, gap, 1.0), np.nan),
        }


def value_features(
    events: dict[str, np.ndarray], base: np.ndarray, rel: np.ndarray, meaning: str, span: int
) -> Columns:
    """One event type's value families per row, by what its values mean (`churnml.schema.EventValue`).

    The values of a customer-type before the date are one run of the sorted values (by key, time and
    value), so its last entry is the last value.
    """
    if meaning == "none":
        return {}
    value_at, has_values = run_search(events["value_key"], base, rel)
    n = len(base)
    if not has_values:  # no values of this type in the rows' range
        runs = None
    else:
        runs = {w: value_at(w) for w in (*VALUE_WINDOWS, 0)} | {None: value_at(None)}
    if meaning in ("identifier", "category"):
        return _distinct_features(events, base, rel, runs, span, n)
    return _numeric_value_features(events, base, rel, meaning, runs, n)


def _numeric_value_features(
    events: dict[str, np.ndarray], base: np.ndarray, rel: np.ndarray, meaning: str,
    runs: dict[int | None, np.ndarray] | None, n: int,
) -> Columns:  # fmt: skip
    values = events["values"]
    nan, zero = np.full(n, np.nan), np.zeros(n)
    if runs is None:
        sums = dict.fromkeys([*VALUE_WINDOWS, None], zero)
        counts = dict.fromkeys(VALUE_WINDOWS, zero)
        last = low = age = nan
    else:
        hi = runs[0]
        sums = {w: ranged_reduce(np.add, values, runs[w], hi, 0.0) for w in [*VALUE_WINDOWS, None]}
        counts = {w: (hi - runs[w]).astype(np.float64) for w in VALUE_WINDOWS}
        seen = hi > runs[None]
        end = np.where(seen, hi - 1, 0)
        last = np.where(seen, values[end], np.nan)
        low = ranged_reduce(np.minimum, values, runs[LOOKBACK], hi, np.nan)
        age = np.where(seen, rel - (events["value_key"][end] - base), np.nan)  # whole days before the date
    with np.errstate(divide="ignore", invalid="ignore"):
        means = {w: np.where(counts[w] > 0, sums[w] / counts[w], np.nan) for w in VALUE_WINDOWS}
    if meaning == "amount":
        return ({("amount_sum", w): sums[w] for w in VALUE_WINDOWS} | {("amount_mean", w): means[w] for w in VALUE_WINDOWS}
                | {("amount_last", None): last, ("amount_sum_total", None): sums[None]})  # fmt: skip
    if meaning == "quantity":
        return {("net_change", w): sums[w] for w in VALUE_WINDOWS} | {
            ("net_change_total", None): sums[None], ("last_change", None): last,
        }  # fmt: skip
    if meaning == "score":
        return {("score_mean", w): means[w] for w in VALUE_WINDOWS} | {
            ("score_last", None): last, ("days_since_last_score", None): age, ("score_min", None): low,
        }  # fmt: skip
    raise ValueError(f"unknown value meaning {meaning!r}")


def _distinct_features(
    events: dict[str, np.ndarray], base: np.ndarray, rel: np.ndarray,
    runs: dict[int | None, np.ndarray] | None, span: int, n: int,
) -> Columns:  # fmt: skip
    """Distinct values in each window and since the start, never their sum (they are labels)."""
    if runs is None:
        zero = np.zeros(n)
        return {("distinct", w): zero for w in VALUE_WINDOWS} | {("distinct_total", None): zero}
    keys = events["value_key"]
    # this type's slice of the sorted values: every row's runs lie inside it
    a = int(min(runs[None].min(), runs[0].min()))
    b = int(max(runs[None].max(), runs[0].max()))
    codes, levels = _codes(events["values"][a:b])
    out: Columns = {}
    for w in VALUE_WINDOWS:
        out[("distinct", w)] = distinct_in_runs(codes, runs[w] - a, runs[0] - a, len(levels))
    # distinct since the start = first occurrences of (customer, value) before the date
    customer = keys[a:b] // span  # the key without its day: (type, customer)
    _, first = np.unique(customer * max(len(levels), 1) + codes, return_index=True)
    firsts = np.sort(keys[a:b][first])
    hi = np.searchsorted(firsts, base + np.maximum(rel, 0), side="left")
    out[("distinct_total", None)] = (hi - np.searchsorted(firsts, base, side="left")).astype(np.float64)
    return out


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense integer codes of values (equal values, equal codes) and the distinct values."""
    levels, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64), levels


BITMASK_LEVELS = 63  # up to this many distinct values, a run's set of values is one 64-bit mask
PAIRS_PER_CHUNK = 4_000_000


def distinct_in_runs(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """Distinct codes in ``codes[lo:hi]`` per row: an OR of bits per run for few levels (O(events)),
    else a sort of (row, code) pairs in chunks of rows (memory stays bounded)."""
    if levels <= BITMASK_LEVELS:
        bits = np.empty(len(codes) + 1, np.int64)
        np.left_shift(1, codes, out=bits[:-1])
        bits[-1] = 0
        masks = ranged_reduce(np.bitwise_or, bits, lo, hi, 0)
        return np.bitwise_count(masks.astype(np.int64)).astype(np.float64)
    out = np.zeros(len(lo))
    lengths = np.maximum(hi - lo, 0)
    start = 0
    while start < len(lo):
        cum = np.cumsum(lengths[start:])
        stop = start + max(1, int(np.searchsorted(cum, PAIRS_PER_CHUNK, side="right")))
        length = lengths[start:stop]
        row = np.repeat(np.arange(stop - start, dtype=np.int64), length)
        offsets = np.repeat(lo[start:stop] - (np.cumsum(length) - length), length)
        pairs = np.unique(row * levels + codes[np.arange(int(length.sum())) + offsets])
        out[start:stop] = np.bincount(pairs // levels, minlength=stop - start)
        start = stop
    return out


DAY_FLAGS_MAX = 1 << 28  # customers x days up to which active days are flagged in a byte array


def account_days(key: np.ndarray, n_keys: int, span: int) -> np.ndarray:
    """Sorted distinct (customer * span + day) with an event of any known type.

    One flag per customer-day when that array is small enough (O(n), no sort), else a sort.
    """
    block = n_keys * span  # key = type * block + customer * span + day
    if block <= DAY_FLAGS_MAX and len(key):
        # each type's keys are one sorted run: shift it into one reused buffer (no modulo, no new array)
        flags = np.zeros(block, dtype=bool)
        bounds = np.searchsorted(key, np.arange(int(key[-1]) // block + 2) * block)
        buffer = np.empty(int(np.diff(bounds).max()), np.int64)
        for ti, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            shifted = np.subtract(key[lo:hi], ti * block, out=buffer[: hi - lo])
            flags[shifted] = True
        return np.flatnonzero(flags).astype(np.int64, copy=False)
    days = key % block
    days.sort()  # np.unique hashes, 5x slower here
    return days[np.concatenate([[True], days[1:] != days[:-1]])] if len(days) else days


def first_and_active_days(
    account_days: np.ndarray, ck: np.ndarray, t_rel: np.ndarray, span: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the customer's first active day (relative to day 0; ``span`` if none) and active days in 30.

    Searched in customer order (rows are not), so the binary searches stay in cache.
    """
    order = np.argsort(ck, kind="stable")
    base, rel = ck[order] * span, t_rel[order]
    padded = np.empty(len(account_days) + 1, np.int64)
    padded[:-1], padded[-1] = account_days, np.iinfo(np.int64).max
    first = padded[np.searchsorted(account_days, base)] - base
    hi = np.searchsorted(account_days, base + np.clip(rel, 0, None))
    lo = np.searchsorted(account_days, base + np.clip(rel - TREND, 0, None))
    first_rel, active = np.empty_like(first), np.empty_like(hi)
    first_rel[order], active[order] = np.where(first < span, first, span), hi - lo
    return first_rel, active
