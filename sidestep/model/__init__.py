"""Our implementation of the ACE-Step 1.5 model (official state-dict names, no code from model folders)."""

from .acestep import PARTS, TRAINING_PARTS, AceStepConditionGenerationModel, silence_context
from .config import AceStepConfig
from .dit import AceStepDiTModel

__all__ = [
    "PARTS",
    "TRAINING_PARTS",
    "AceStepConditionGenerationModel",
    "AceStepConfig",
    "AceStepDiTModel",
    "silence_context",
]
