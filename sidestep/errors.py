"""User-facing errors: each says what was wrong, where, and what to do."""


class SideStepError(Exception):
    """Base class for every error a user can cause."""


class CheckpointError(SideStepError):
    """A checkpoint root, model folder or shared part is missing or unusable."""


class ConfigError(SideStepError):
    """A config.json is missing, unreadable or not an ACE-Step 1.5 config."""


class WeightMismatchError(SideStepError):
    """Weights whose names or shapes do not fit the model built from the config."""


class UnknownBaseModelError(SideStepError):
    """A custom fine-tune whose base (turbo/base/sft) cannot be told and was not named."""


class AudioError(SideStepError):
    """An audio file that cannot be found, decoded or used."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class DatasetError(SideStepError):
    """A dataset folder, sidecar, manifest or tensor file that cannot be used."""


class AdapterError(SideStepError):
    """An adapter that cannot be built, saved, loaded or applied."""


class TrainingError(SideStepError):
    """A training run that cannot start, resume or continue."""


class SamplingError(SideStepError):
    """Sampling settings (steps, shift, guidance) that cannot be used."""
