"""The time windows features are computed over, in days (one place: the registry and its sentences)."""

__all__ = ["LOOKBACK", "TREND", "VALUE_WINDOWS", "WINDOWS"]

WINDOWS = (7, 30, 90)  # event count windows
VALUE_WINDOWS = (30, 90)  # value sums, means and distinct counts
TREND = 30  # a trend compares the last TREND days with the TREND days before
LOOKBACK = max(WINDOWS)
