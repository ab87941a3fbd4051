"""`grpo train` under `torchrun --nproc_per_node 2` (gloo, CPU, HF engine, tiny model): the job
trains, rank 0 alone writes (one MLflow run, one set of files, every rank's rollouts gathered
into the records). (A prompt count the ranks cannot split: tests/test_distributed.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.pipeline_support import (ITERATION_METRICS, VARIETY_REWARD, grpo_env, run_grpo,
                                    tiny_params)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def torchrun_grpo(root: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = grpo_env(root) | {"OMP_NUM_THREADS": "1", "GRPO_DIST_TIMEOUT_S": "300"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(nproc), "-m", "flows.cli", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)


def prepared_project(root: Path, sft_dir: Path, data_dir: Path) -> Path:
    """A tiny project (HF engine, 2 iterations, a user reward) with its data prepared."""
    (root / "myrewards.py").write_text(VARIETY_REWARD)
    tiny_params(root, sft_dir, data_dir, engine="hf", iterations=2,
                reward={"functions": {"myrewards:vowels": 1.0}})
    out = run_grpo(root, "prepare")
    assert out.returncode == 0, out.stderr[-2000:]
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_sft_dir, data_dir):
    return prepared_project(tmp_path_factory.mktemp("ddp"), tiny_sft_dir, data_dir)


@pytest.fixture(scope="module")
def replicated(project):
    """The project after `torchrun --nproc_per_node 2 grpo train` (replicas, the default)."""
    out = torchrun_grpo(project, "train")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return project


def test_two_ranks_train_and_rank0_alone_writes(replicated):
    project = replicated

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # not one run per rank
    run_id = runs[0].info.run_id
    keys = [k for k in ITERATION_METRICS if not k.startswith(("reward/gsm8k", "reward/format"))]
    for key in [*keys, "update/loss", "reward/myrewards:vowels/mean"]:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert steps == [1, 2], f"{key}: {steps}"  # each step logged once, by one rank
    assert any(k.startswith("eval_quick/") for k in runs[0].data.metrics)  # rank 0 evaluated

    # the records hold both ranks' groups: P = 2 prompts x G = 2 samples, prompt_index 0 and 1
    for it in (1, 2):
        frame = pd.read_parquet(project / "rollouts" / f"iter_{it:05d}.parquet")
        assert len(frame) == 4 and sorted(frame["prompt_index"].unique()) == [0, 1]
        assert frame["advantage"].notna().all() and frame["reward"].notna().all()
    grpo = project / "models" / "grpo"
    assert (grpo / "checkpoints" / "iter_00001" / "model.safetensors").is_file()
    assert (grpo / "final" / "model.safetensors").is_file()
    assert (grpo / "resume" / "meta.json").is_file()
    assert (project / "metrics" / "eval.json").is_file()
    history = pd.read_csv(project / "metrics" / "train_history.csv")
    assert history["iteration"].tolist() == [1, 2]



@pytest.fixture(scope="module")
def fsdp2_project(tmp_path_factory, tiny_sft_dir, data_dir):
    return prepared_project(tmp_path_factory.mktemp("fsdp2"), tiny_sft_dir, data_dir)


def test_fsdp2_job_trains_the_same_policy_as_replicas(replicated, fsdp2_project, tiny_sft_dir):
    """Same data, seeds and steps with sharded weights: the final policy matches the replicated
    job's, and rank 0 alone wrote the gathered, whole checkpoint (tied weights stored once)."""
    import torch
    from safetensors.torch import load_file

    out = torchrun_grpo(fsdp2_project, "train", "--set", "train.data_parallel=fsdp2")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    final = "models/grpo/final/model.safetensors"
    got, want = load_file(fsdp2_project / final), load_file(replicated / final)
    sft = load_file(next(Path(tiny_sft_dir).glob("*.safetensors")))
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=0, msg=key)
    assert max(float((value - sft[k]).abs().max()) for k, value in want.items()) > 1e-5
    client = MlflowClient(tracking_uri=f"sqlite:///{fsdp2_project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["train.data_parallel"] == "fsdp2"


@pytest.mark.parametrize("setting, what", [("rollout.refill_rounds=2", "dynamic sampling"),
                                           ("rollout.min_group_size=2", "adaptive group size")])
def test_one_process_features_are_refused_under_torchrun(project, setting, what):
    out = torchrun_grpo(project, "--set", setting, "train")
    assert out.returncode != 0
    assert f"grpo: error: {setting}: {what} runs on one process for now" in out.stderr
