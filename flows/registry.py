"""Promotion: register the final policy in the MLflow Model Registry when the gate passes.

The version's source is the run's `model` artifact (the plain HF directory `grpo train` logs),
its alias (e.g. `candidate`) moves to the new version, and its tags carry the evaluation
(before, after, delta and CI per set) and the lineage: the MLflow run, the git commit and
the md5 of every data file (the run's provenance tags). A run that fails the gate registers
nothing and says why, in the console and as the run's `promotion` tag.
"""

from __future__ import annotations

from typing import Mapping, Optional

from grpo_core.evaluation.compare import PairedDifference
from grpo_core.evaluation.gate import Decision

MODEL_ARTIFACT = "model"  # where flows.run.writers logs the final policy


def promote(client, run_id: str, decision: Decision,
            comparisons: Mapping[str, PairedDifference], *, name: str,
            alias: str) -> Optional[str]:
    """Register the run's model as a new version of `name` with `alias` -> the version, or
    None when the gate failed. `client` is an MlflowClient on the run's tracking store."""
    client.set_tag(run_id, "promotion", decision.summary())
    if not decision.passed:
        return None
    _ensure_registered_model(client, name)
    run = client.get_run(run_id)
    lineage = {k: v for k, v in run.data.tags.items() if k.startswith(("git.", "data."))}
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run_id,
        tags={**lineage, **evaluation_tags(comparisons), "mlflow.source.run_id": run_id},
        description=decision.summary())
    client.set_registered_model_alias(name, alias, version.version)
    client.set_tag(run_id, "promotion.version", f"{name}/{version.version}@{alias}")
    return version.version


def evaluation_tags(comparisons: Mapping[str, PairedDifference]) -> dict[str, str]:
    return {f"eval.{set_name}.{key}": f"{value:.6g}"
            for set_name, d in comparisons.items()
            for key, value in d.as_dict().items()}


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="GRPO policies that passed the promotion gate")
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
