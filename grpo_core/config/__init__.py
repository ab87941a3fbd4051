"""The config tree (`schema`, its dataset specs in `datasets`), its loader (`loading`) and the
one-line error explainer (`explain`). Import the names from here."""

from grpo_core.config.datasets import BUILT_IN_DATASETS, CheckerName, CustomDataset
from grpo_core.config.loading import apply_override, dump_yaml, load_config
from grpo_core.config.schema import (DEFAULT_PARAMS, AlgorithmConfig, CheckpointConfig, Config,
                                     DataConfig, DatasetSpec, EvaluateConfig, LoraConfig,
                                     PassRateFilter, PromoteConfig, PromptConfig, RewardConfig,
                                     RolloutConfig, TrackingConfig, TrainConfig, ValidateConfig,
                                     flatten)

__all__ = ["AlgorithmConfig", "BUILT_IN_DATASETS", "CheckerName", "CheckpointConfig", "Config",
           "CustomDataset", "DEFAULT_PARAMS", "DataConfig", "DatasetSpec", "EvaluateConfig",
           "LoraConfig", "PassRateFilter", "PromoteConfig", "PromptConfig", "RewardConfig",
           "RolloutConfig", "TrackingConfig", "TrainConfig", "ValidateConfig", "apply_override",
           "dump_yaml", "flatten", "load_config"]
