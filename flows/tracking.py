"""MLflow tracking for a training run: config as params, provenance as tags, per-iteration
metrics (step = iteration), advantage artifacts, checkpoints and evaluation results.

Everything goes through `MlflowClient` with an explicit run id, never `mlflow.active_run()`:
Prefect runs tasks in worker threads and MLflow's active run is thread-local.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
from pathlib import Path
from typing import Mapping

import pandas as pd



# The experiment's kind, shown by the UI's experiment-kind selector; without it MLflow 3
# infers one, and a run with logged tables and figures passes for GenAI development.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# Which view the UI opens (GenAI: traces, evaluations; Model training: the runs table and
# metric charts) is a browser setting in MLflow 3.17, GenAI by default, that this query sets
# (checked in headless Chromium: docs/experiments.md, 2026-12-02)
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def ui_lines(uri: str, experiment: str, port: int = 5000) -> str:
    """How to look at the runs: the `mlflow ui` command, and the address that opens this
    experiment on its runs table."""
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    where = f"#/experiments/{found.experiment_id}" if found else "#/experiments"
    return (f"MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 "
            f"--port {port}\n            then open http://127.0.0.1:{port}/{where}?"
            f"{MODEL_TRAINING_VIEW}")


def tracking_uri(configured: str | None) -> str:
    """The params value, else $MLFLOW_TRACKING_URI, else sqlite in the working directory
    (absolute, so that a flow run from another directory finds the same store)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}")


class Tracker:
    """One MLflow run. `resume_run_id` reopens an existing run (resume after a crash)."""

    def __init__(self, uri: str, experiment: str, *, run_name: str | None = None,
                 resume_run_id: str | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        if resume_run_id:
            self.run_id = resume_run_id
            self.client.update_run(resume_run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            root = _artifact_root(uri)
            exp_id = self.client.create_experiment(experiment, artifact_location=root,
                                                   tags={EXPERIMENT_KIND: MODEL_TRAINING})
        else:
            exp_id = exp.experiment_id
            if EXPERIMENT_KIND not in exp.tags:  # made before the kind was set: set it once
                self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND, MODEL_TRAINING)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        """Logs params not yet on the run (a resumed run keeps its original values)."""
        have = self.client.get_run(self.run_id).data.params
        from mlflow.entities import Param

        todo = [Param(k, _param_text(v)) for k, v in params.items() if k not in have]
        for i in range(0, len(todo), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=todo[i:i + 100])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Finite numbers only: MLflow stores NaN, but the UI's charts break on it."""
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def has_step(self, key: str, step: int) -> bool:
        return any(m.step == step for m in self.client.get_metric_history(self.run_id, key))

    def history(self, key: str) -> dict[int, float]:
        """{step: value} of one metric."""
        return {m.step: m.value for m in self.client.get_metric_history(self.run_id, key)}

    def last_step(self, key: str) -> int | None:
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=None)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        """A JSON artifact in the layout of MLflow's own tables ({"columns", "data"}).

        Not `MlflowClient.log_table`: it lists every table of the run in one run tag, which
        the store cuts at 8,000 characters, so once a run has logged enough tables (one an
        iteration) that tag no longer parses and the run dies (the 2026-11-29 learning run,
        docs/experiments.md)."""
        table = {"columns": [str(c) for c in frame.columns],
                 "data": frame.astype(object).where(frame.notna(), None).values.tolist()}
        self.client.log_dict(self.run_id, table, artifact_file)

    def log_dir(self, local_dir: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def advantage_figure(advantages, iteration: int):
    """A histogram of one iteration's advantages. advantages: (P, G) tensor or array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    values = [float(a) for a in advantages.reshape(-1)]
    ax.hist(values, bins=min(40, max(5, len(values) // 2)), color="#4c72b0")
    ax.set_xlabel("advantage")
    ax.set_ylabel("completions")
    ax.set_title(f"iteration {iteration}")
    fig.tight_layout()
    return fig


def provenance_tags(data_files: Mapping[str, Path]) -> dict[str, str]:
    """git commit of the code and the md5 of each data file (the hash DVC records for it)."""
    tags = {f"data.{name}.md5": _md5(path) for name, path in data_files.items()
            if Path(path).is_file()}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git.commit"] = commit
        tags["git.dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    return tags


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _artifact_root(uri: str) -> str | None:
    """Beside a local sqlite store, artifacts go to ./mlruns next to the db file."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns")
    return None


def _param_text(value: object) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."  # MLflow's value limit
