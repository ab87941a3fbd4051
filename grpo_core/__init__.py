"""grpo_core: the GRPO library. Pure, importable, and testable without Prefect, MLflow or DVC."""

__version__ = "0.1.0"
