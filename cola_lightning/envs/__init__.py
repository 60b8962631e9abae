"""Text environments for agent tasks: the interface, the built-in household tasks, ScienceWorld."""

from cola_lightning.envs.base import (
    ENVIRONMENTS,
    SPLITS,
    Environment,
    Observation,
    StepResult,
    make_environment,
    register,
)
from cola_lightning.envs.household import HouseholdEnvironment
from cola_lightning.envs.scienceworld import ScienceWorldEnvironment

__all__ = [
    "ENVIRONMENTS",
    "SPLITS",
    "Environment",
    "HouseholdEnvironment",
    "Observation",
    "ScienceWorldEnvironment",
    "StepResult",
    "make_environment",
    "register",
]
