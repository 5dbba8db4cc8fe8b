"""Alignment objectives (docs/architecture.md §2): CMA, IMC, LMI, CODE, and presets combining them."""

from train.objectives.cma import cma_loss
from train.objectives.codebook import code_loss, sinkhorn
from train.objectives.combined import PRESET_TERMS, AlignmentObjective, ObjectiveOutput
from train.objectives.features import GatheredTargets, StepFeatures, gather_targets
from train.objectives.imc import imc_loss
from train.objectives.lmi import lmi_loss

__all__ = [
    "PRESET_TERMS",
    "AlignmentObjective",
    "GatheredTargets",
    "ObjectiveOutput",
    "StepFeatures",
    "cma_loss",
    "code_loss",
    "gather_targets",
    "imc_loss",
    "lmi_loss",
    "sinkhorn",
]
