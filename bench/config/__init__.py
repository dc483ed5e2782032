"""Experiment configs: a YAML file parsed into typed dataclasses (``load_experiment``).

``schema`` holds one dataclass per section, ``loader`` the generic YAML -> dataclass builder and
the value checks. Parsing only: what follows from the whole experiment is bench/plan.py's.
"""
from .schema import (POOLS, TASKS, DataConfig, DropConfig, EvalConfig, EvalGridConfig, Experiment, ModelConfig,
                     ResolutionConfig, TrainConfig, VariantSpec, check_seeds, load_experiment)

__all__ = ["POOLS", "TASKS", "DataConfig", "DropConfig", "EvalConfig", "EvalGridConfig", "Experiment", "ModelConfig",
           "ResolutionConfig", "TrainConfig", "VariantSpec", "check_seeds", "load_experiment"]
