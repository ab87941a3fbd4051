"""The pipeline flow end to end on real Prefect, MLflow (sqlite), vLLM and GX, tiny sizes."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.pipeline_support import ITERATION_METRICS, run_grpo, tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_sft_dir, data_dir):
    root = tmp_path_factory.mktemp("pipeline")
    tiny_params(root, tiny_sft_dir, data_dir)
    out = run_grpo(root, "pipeline")
    assert out.returncode == 0, out.stderr[-3000:]
    return root, out


def test_every_metric_at_every_iteration(pipeline_run):
    root, _ = pipeline_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "one MLflow run per training flow"
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in ITERATION_METRICS:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == [1, 2], f"{key}: logged at steps {steps}"
    assert run.data.params["algorithm.beta"] == "0.04"
    assert run.data.params["rollout.group_size"] == "2"
    assert run.data.params["data.train_problems"] == "16"  # the mixture's rows, after filters
    assert "git.commit" in run.data.tags or "data.gsm8k_train.md5" in run.data.tags
    assert len(run.data.tags["data.gsm8k_train.md5"]) == 32
    assert "eval/gsm8k/accuracy" in run.data.metrics
    assert "eval/math500/pass_at_2" in run.data.metrics
    assert "eval_quick/gsm8k/accuracy" in run.data.metrics


def test_artifacts_and_files(pipeline_run):
    root, out = pipeline_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"advantages", "samples", "checkpoints", "model", "eval", "plots"} <= listed
    pngs = [a.path for a in client.list_artifacts(run.info.run_id, "advantages")]
    assert pngs == ["advantages/iter_00001.png", "advantages/iter_00002.png"]
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/config.json" in model_files and "model/model.safetensors" in model_files
    for it in (1, 2):
        frame = pd.read_parquet(root / "rollouts" / f"iter_{it:05d}.parquet")
        assert len(frame) == 4  # 2 prompts x 2 samples
        assert frame["reward"].notna().all() and frame["advantage"].notna().all()
        assert (frame["iteration"] == it).all()
    results = json.loads((root / "metrics" / "eval.json").read_text())
    assert set(results) == {"gsm8k", "math500"}
    assert results["math500"]["count"] == 3.0 and "by_level" in results["math500"]
    assert "mlflow ui --backend-store-uri sqlite:///" in out.stdout
    exp_id = client.get_experiment_by_name("tiny").experiment_id  # opens on the runs table:
    assert f"http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning" in (
        out.stdout)
    assert (root / "models" / "grpo" / "final" / "model.safetensors").is_file()
    assert (root / "plots" / "reward.png").is_file()


def test_a_person_sees_the_stages_the_bars_and_the_table_not_the_library_logs(pipeline_run):
    _, out = pipeline_run
    printed = (out.stdout + out.stderr).splitlines()  # a bar redrawn with \r counts per draw
    for says in ("config: params.yaml", "gsm8k_train: ", "validation passed: ",
                 "sft checkpoint: ", "rollout engine: vllm (", "GRPO: 100%", "MLflow UI: "):
        assert any(line.startswith(says) or says in line for line in printed), says
    chatter = [line for line in printed if re.search(
        r"\| (INFO|DEBUG) |\b(INFO|DEBUG) \d\d-\d\d |Attempted to load weight|"
        r"Loading safetensors checkpoint shards|Warning: NUMA|mlflow\.store", line)]
    assert chatter == [], chatter[:5]
    said = [line for line in printed  # what is left once the bars' redraws are set aside
            if line.strip() and not re.match(r"(\x1b\[A)?\s*(GRPO|evaluate):", line)]
    assert len(said) < 30, "\n".join(said)


def test_validation_failure_stops_before_the_checkpoint(tmp_path, tiny_sft_dir, data_dir):
    broken = tmp_path / "data"
    shutil.copytree(data_dir / "math", broken / "math")
    (broken / "gsm8k").mkdir(parents=True)
    rows = [json.loads(line) for line in
            (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()[:16]]
    rows[3]["answer"] = rows[3]["answer"].rsplit("####", 1)[0] + "#### twelve"  # not a number
    (broken / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(data_dir / "gsm8k" / "test.jsonl", broken / "gsm8k" / "test.jsonl")
    tiny_params(tmp_path, tiny_sft_dir, broken)
    out = run_grpo(tmp_path, "pipeline")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "grpo: error: data validation failed" in out.stderr, out.stderr[-3000:]
    # the summary names the dataset, the expectation, the row count and an example id
    assert ("gsm8k_train: expect_column_values_to_match_regex on 'answer' failed: 1 of 16 rows; "
            "e.g. ids gsm8k/train/3") in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "models" / "sft").exists(), "the checkpoint stage must not run"


def test_pass_rate_filter_reads_the_rollouts_this_run_wrote(pipeline_run, monkeypatch):
    """The ids `grpo train` writes in rollouts/ are the dataset ids the filter matches: the
    random tiny policy solved nothing, so the band [0, 0] keeps exactly the 4 problems drawn."""
    from flows.run.inputs import load_data, training_rows
    from grpo_core.config import load_config
    from grpo_core.errors import UserError

    root, _ = pipeline_run
    monkeypatch.chdir(root)
    drawn = set(pd.concat(pd.read_parquet(f) for f in (root / "rollouts").glob("*.parquet"))
                ["prompt_id"])
    assert len(drawn) == 4
    # the next run of this project: its own rollouts go elsewhere (reading them is refused)
    nxt = ["rollout.output_dir=rollouts-next", "data.pass_rates.rollouts=[rollouts]",
           "data.pass_rates.min_samples=2"]
    band = nxt + ["data.pass_rates.min_rate=0.0", "data.pass_rates.max_rate=0.0"]
    full, _, shots = load_data(load_config("params.yaml"))
    cfg = load_config("params.yaml", band)
    filtered, _, filtered_shots = load_data(cfg)
    assert filtered_shots == shots  # the prompt the rates were measured with is kept
    mixture = training_rows(cfg, filtered)
    assert set(mixture["id"]) == drawn and len(mixture) == 4
    assert mixture["id"].tolist() == [i for i in full["id"] if i in drawn]
    with pytest.raises(UserError, match="no training problem has a pass rate 0.01-0.99"):
        training_rows(load_config("params.yaml", nxt), filtered)
    with pytest.raises(UserError, match="is or holds this run's own rollouts"):
        training_rows(load_config("params.yaml", nxt[1:]), filtered)
