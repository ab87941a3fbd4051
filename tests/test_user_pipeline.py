"""A user's own dataset through `grpo` as a user runs it: prepare, validate, train one
iteration and evaluate, in a fresh project folder, with the `hf` engine, real Prefect, MLflow
(sqlite) and GX. The SFT checkpoint is a tiny Llama that answers '#### 42' to anything, so the
evaluation's numbers are known in advance."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.pipeline_support import run_grpo, tiny_params
from tests.user_data_support import (EXPECTED, answering_dir, dataset_rows,  # noqa: F401
                                     questions, write_rows)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def test_prepare_validate_train_evaluate_on_a_user_dataset(tmp_path, answering_dir):
    root = tmp_path
    fields = {"question": "prompt", "answer": "target", "solution": "worked"}
    write_rows(root / "my/sums/train.jsonl",
               [{"prompt": q, "target": "42", "worked": "6 * 7 = 42\n#### 42"} for q in
                questions("train")])  # every training answer is right: the reward is learnable
    write_rows(root / "my/sums/test.json", dataset_rows("numeric", "sums", fields))
    write_rows(root / "my/words/test.parquet", dataset_rows("exact", "words", fields))
    custom = {"sums": {"files": {"train": "my/sums/train.jsonl", "test": "my/sums/test.json"},
                       **fields, "checker": "numeric"},
              "words": {"files": {"test": "my/words/test.parquet"}, **fields, "checker": "exact"}}
    tiny_params(root, answering_dir, root, engine="hf", iterations=1,
                data={"dir": None, "custom": custom, "train": [{"name": "sums", "split": "train"}]},
                evaluate={"datasets": [{"name": "sums", "split": "test"},
                                       {"name": "words", "split": "test"},
                                       {"name": "arithmetic", "split": "test", "rows": 4}]},
                reward={"functions": {"accuracy": 1.0}},
                train={"learning_rate": 1e-5}, validate={"data_docs": None})

    out = run_grpo(root, "prepare")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sums_train: 4 rows -> data/processed/sums_train.parquet" in out.stdout
    assert "arithmetic_test: 600 rows -> data/processed/arithmetic_test.parquet" in out.stdout
    assert set(pd.read_parquet(root / "data/processed/words_test.parquet")["checker"]) == {"exact"}

    out = run_grpo(root, "validate")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("validation passed: sums_train 4, sums_test 4, words_test 4, "
                                 "arithmetic_test 600 rows")

    out = run_grpo(root, "train", "--no-eval")
    assert out.returncode == 0, out.stderr[-3000:]
    rollout = pd.read_parquet(root / "rollouts/iter_00001.parquet")
    assert len(rollout) == 4 and set(rollout["reward_accuracy"]) <= {0.0, 1.0}
    assert rollout["reward_accuracy"].mean() > 0  # '#### 42' is right on every training row
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    assert "reward/accuracy/mean" in run.data.metrics
    # the run records which version of each processed dataset it read
    assert len(run.data.tags["data.sums_train.md5"]) == 32
    assert "data.words_test.md5" in run.data.tags

    out = run_grpo(root, "evaluate", "--checkpoint", "models/grpo/final")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((root / "metrics/eval.json").read_text())
    assert set(results) == {"sums", "words", "arithmetic"}
    assert (results["sums"]["accuracy"], results["sums"]["count"]) == (EXPECTED["numeric"], 4.0)
    assert (results["words"]["accuracy"], results["words"]["count"]) == (EXPECTED["exact"], 4.0)
    assert results["arithmetic"]["count"] == 4.0
    assert "sums" in out.stdout and "words" in out.stdout
