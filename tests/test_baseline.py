"""Before and after, as a user runs it: `grpo train` evaluates the starting checkpoint once,
reuses that evaluation while the checkpoint and the evaluation settings are unchanged, logs it
at MLflow step 0 and the final one at the last step with each set's paired change; `grpo
evaluate --baseline` compares two checkpoints the same way (real HF engine, MLflow, Prefect)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.pipeline_support import VARIETY_REWARD, run_grpo, tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
BASELINE = "metrics/eval_baseline.json"


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_sft_dir, data_dir):
    root = tmp_path_factory.mktemp("baseline")
    (root / "myrewards.py").write_text(VARIETY_REWARD)
    tiny_params(root, tiny_sft_dir, data_dir, engine="hf", iterations=1,
                evaluate={"samples": 2}, reward={"functions": {"myrewards:vowels": 1.0}})
    assert run_grpo(root, "prepare").returncode == 0
    return root


def train(root, *overrides):
    out = run_grpo(root, "train", *[a for o in overrides for a in ("--set", o)])
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_baseline_once_reused_then_redone_when_the_evaluation_changes(project):
    first = train(project)
    assert "baseline: reusing" not in first.stderr
    saved = project / BASELINE
    made = saved.stat().st_mtime_ns
    records = json.loads(saved.read_text())["records"]
    assert set(records) == {"gsm8k", "math500"} and len(records["gsm8k"]) == 3

    results = json.loads((project / "metrics" / "eval.json").read_text())
    for name in ("gsm8k", "math500"):
        m = results[name]
        assert m["paired"] == 3 and m["ci_low"] <= m["delta"] <= m["ci_high"]
        assert m["delta"] == pytest.approx(m["accuracy"] - m["before"])
        assert "mean_of_k_delta" in m  # samples = 2: mean-of-k is compared too
    assert "before -> after training, paired over the same problems" in first.stdout
    assert "promoted" in first.stderr  # the gate said what it decided

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                             order_by=["attributes.start_time DESC"])[0]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id,
                                                             "eval/gsm8k/accuracy"))
    assert steps == [0, 1]  # before and after on the same chart
    assert client.get_metric_history(run.info.run_id, "eval/gsm8k/delta")[0].step == 1
    assert run.data.tags["promotion"].startswith(("promoted", "not promoted"))

    again = train(project)  # same checkpoint, same problems and decoding
    assert "baseline: reusing" in again.stderr and saved.stat().st_mtime_ns == made

    changed = train(project, "evaluate.max_new_tokens=8")
    assert "baseline: reusing" not in changed.stderr and saved.stat().st_mtime_ns != made


def test_evaluate_compares_two_checkpoints(project):
    if not (project / "models" / "grpo" / "final").is_dir():
        train(project)
    out = run_grpo(project, "evaluate", "--checkpoint", "models/grpo/final",
                   "--baseline", "models/sft")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "models/grpo/final against models/sft:" in out.stdout
    results = json.loads((project / "metrics" / "eval.json").read_text())
    assert {"before", "delta", "ci_low", "ci_high"} <= set(results["gsm8k"])
