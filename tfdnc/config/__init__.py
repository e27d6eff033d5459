"""The training configuration: settings in sections (`settings`) and the command line built from them (`flags`).

Examples:
    >>> from tfdnc.config import TrainConfig
    >>> config = TrainConfig.load("runs/default/config.json")   # flat or in sections
    >>> config.schedule_config.epochs
    2
"""

from __future__ import annotations

from tfdnc.config.flags import ArgumentParser, build_parser, positive_int
from tfdnc.config.settings import (
    IGNORED_SETTINGS,
    MIXED_PRECISION,
    REMOVED_SETTINGS,
    RESUME_OVERRIDES,
    SECTIONS,
    WEIGHT_DECAY_MODES,
    DataConfig,
    LossConfig,
    ModelConfig,
    RuntimeConfig,
    ScheduleConfig,
    SettingError,
    TrainConfig,
    check_setting_types,
    implied_dataset,
    loss_option_names,
)


def __getattr__(name: str):
    if name == "LOSSES":  # the loss names (loaded on use: importing the losses imports TensorFlow)
        from tfdnc.losses import LOSSES

        return tuple(LOSSES)
    raise AttributeError(f"module 'tfdnc.config' has no attribute {name!r}")


__all__ = [
    "IGNORED_SETTINGS", "MIXED_PRECISION", "REMOVED_SETTINGS", "RESUME_OVERRIDES", "SECTIONS", "WEIGHT_DECAY_MODES",
    "ArgumentParser", "DataConfig", "LossConfig", "ModelConfig", "RuntimeConfig", "ScheduleConfig", "SettingError",
    "TrainConfig", "build_parser", "check_setting_types", "implied_dataset", "loss_option_names", "positive_int",
]
