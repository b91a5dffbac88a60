"""The business simulator: accounts whose churn follows planted drivers (:mod:`.business` writes the
blocks that :mod:`.block` simulates month by month, over the
catalogue of :mod:`.world`, configured by :mod:`.config`, read back through the spec of :mod:`.spec`)
and, when switched on, the CSM plays that try to prevent it, with a holdout and their true effects
(:mod:`.plays`)."""

from churnml.simulate.business import simulate, simulate_block
from churnml.simulate.config import SimulationConfig, SimulationSummary
from churnml.simulate.plays import PLAYS, Play
from churnml.simulate.spec import simulation_spec
from churnml.simulate.world import BLOCK_SIZE, CONCEPT_DRIFT_WEIGHTS, DRIVERS, LAPSE_SHARE

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
