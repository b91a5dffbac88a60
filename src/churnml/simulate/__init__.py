"""The business simulator: accounts whose churn follows planted drivers (:mod:`.business`) and, when
switched on, the CSM plays that try to prevent it, with a holdout and their true effects (:mod:`.plays`)."""

from churnml.simulate.business import (
    BLOCK_SIZE,
    CONCEPT_DRIFT_WEIGHTS,
    DRIVERS,
    LAPSE_SHARE,
    SimulationConfig,
    SimulationSummary,
    simulate,
    simulate_block,
    simulation_spec,
)
from churnml.simulate.plays import PLAYS, Play

__all__ = [
    "BLOCK_SIZE",
    "CONCEPT_DRIFT_WEIGHTS",
    "DRIVERS",
    "LAPSE_SHARE",
    "PLAYS",
    "Play",
    "SimulationConfig",
    "SimulationSummary",
    "simulate",
    "simulate_block",
    "simulation_spec",
]
