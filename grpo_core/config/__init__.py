"""The config tree (`schema`), its loader (`loading`) and the one-line error explainer
(`explain`). Import the names from here."""

from grpo_core.config.loading import apply_override, dump_yaml, load_config
from grpo_core.config.schema import (DEFAULT_PARAMS, AlgorithmConfig, CheckpointConfig, Config,
                                     DataConfig, DatasetSpec, EvaluateConfig, LoraConfig,
                                     PassRateFilter, PromptConfig, RewardConfig, RolloutConfig,
                                     TrackingConfig, TrainConfig, ValidateConfig, flatten)

__all__ = ["AlgorithmConfig", "CheckpointConfig", "Config", "DEFAULT_PARAMS", "DataConfig",
           "DatasetSpec", "EvaluateConfig", "LoraConfig", "PassRateFilter", "PromptConfig",
           "RewardConfig", "RolloutConfig", "TrackingConfig", "TrainConfig", "ValidateConfig",
           "apply_override", "dump_yaml", "flatten", "load_config"]
