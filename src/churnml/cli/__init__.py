"""The ``churnml`` command line: thin wrappers that read files, call the library and report.

One module per role (`common` holds the app and what the commands share); importing this package
registers every command on ``app``.
"""

from __future__ import annotations

from churnml.cli import data, monitoring, run, scoring, serving, training, tuning  # noqa: F401 - registers the commands
from churnml.cli.common import app
from churnml.cli.monitoring import MONITOR_RETRAIN_EXIT
from churnml.cli.run import main

__all__ = ["MONITOR_RETRAIN_EXIT", "app", "main"]
