"""Know when the model goes stale: drift against the training population (`drift`), performance
estimated from calibrated probabilities before labels arrive (`estimate`), realised performance once
they do, and a retrain trigger (`run`); every run kept (`store`) and logged to MLflow."""

from churnml.monitor.drift import DriftSettings, drift_table, js_distance, psi
from churnml.monitor.estimate import Estimate, estimate_performance, realised_performance
from churnml.monitor.run import MonitorConfig, MonitorReport, monitor_at

__all__ = [
    "DriftSettings",
    "Estimate",
    "MonitorConfig",
    "MonitorReport",
    "drift_table",
    "estimate_performance",
    "js_distance",
    "monitor_at",
    "psi",
    "realised_performance",
]
