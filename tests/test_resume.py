"""Resume after a real SIGKILL: iterations continue in the same MLflow run, no metric step is
logged twice, and the final weights equal an uninterrupted run's (HF engine: its seeded
sampling is exactly reproducible on CPU, so here the RNG allows exact equality)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.pipeline_support import VARIETY_REWARD, kill_at_rollout, run_grpo, tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
ITERATIONS = 8


# Signal for about half the problems only (the others' groups are all 0): what dynamic
# sampling refills and adaptive group size grows (both at once: the round of refill draws grow
# too); groups start at 2 and double up to 8, within 5 completions per drawn prompt
SPARSE_REWARD = """
def sparse(completions, questions, **_):
    return [v if len(q) % 2 == 0 else 0.0 for v, q in zip(vowels(completions), questions)]
"""
REFILL = {"reward": {"functions": {"myrewards:sparse": 1.0}},
          "rollout": {"refill_rounds": 3, "min_group_size": 2, "group_size": 8,
                      "samples_per_prompt": 5}}


def _project(root: Path, sft: Path, data: Path, **sections) -> Path:
    (root / "myrewards.py").write_text(VARIETY_REWARD + SPARSE_REWARD)
    sections = {"reward": {"functions": {"myrewards:vowels": 1.0}}, **sections}
    tiny_params(root, sft, data, engine="hf", iterations=ITERATIONS,
                train={"checkpoint_every": ITERATIONS, "resume_every": 3}, **sections)
    return root


def _kill_at_rollout(root: Path, iteration: int) -> int:
    """SIGKILL `grpo train` in iteration `iteration`; -> the iteration of the saved state."""
    kill_at_rollout(root, iteration, "--no-eval")
    return json.loads((root / "models" / "grpo" / "resume" / "meta.json").read_text())["iteration"]


@pytest.mark.parametrize("sections", [{}, REFILL], ids=["fixed", "refilled_and_grown"])
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, tiny_sft_dir, data_dir,
                                                           sections):
    killed = tmp_path / "killed"
    killed.mkdir()
    _project(killed, tiny_sft_dir, data_dir, **sections)
    assert run_grpo(killed, "prepare").returncode == 0
    # State saved every 3 iterations; killed in iteration 5: the resumed run redoes iteration 4,
    # whose metrics MLflow already has (a fast machine may have reached the save at 6)
    done = _kill_at_rollout(killed, 5)
    assert done in (3, 6)

    out = run_grpo(killed, "train", "--resume", "--no-eval")
    assert out.returncode == 0, out.stderr[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{killed / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in ("reward/total/mean", "time/iteration_s", "rollout/rounds",
                "rollout/prompts_drawn", "groups/informative") + (
                    ("rollout/growth_samples",) if sections else ()):
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, key)]
        assert sorted(steps) == list(range(1, ITERATIONS + 1)), f"{key}: {sorted(steps)}"
    rollouts = sorted(p.name for p in (killed / "rollouts").glob("iter_*.parquet"))
    assert rollouts == [f"iter_{i:05d}.parquet" for i in range(1, ITERATIONS + 1)]

    if sections:  # the batch refilled: more prompts drawn, up to P informative groups kept
        _refilled(client, runs[0].info.run_id, killed / "rollouts")
        _grown(client, runs[0].info.run_id, killed / "rollouts")

    straight = tmp_path / "straight"
    straight.mkdir()
    _project(straight, tiny_sft_dir, data_dir, **sections)
    shutil.copytree(killed / "data", straight / "data")
    out = run_grpo(straight, "train", "--no-eval")
    assert out.returncode == 0, out.stderr[-3000:]

    a = load_file(killed / "models" / "grpo" / "final" / "model.safetensors")
    b = load_file(straight / "models" / "grpo" / "final" / "model.safetensors")
    sft = load_file(tiny_sft_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert any(not torch.equal(a[n], sft[n]) for n in a), "training changed nothing"


def _refilled(client, run_id: str, rollouts: Path) -> None:
    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run_id, key)}

    rounds, drawn = history("rollout/rounds"), history("rollout/prompts_drawn")
    informative, filtered = history("groups/informative"), history("groups/filtered")
    assert max(rounds.values()) > 1, rounds
    for it in rounds:
        frame = pd.read_parquet(rollouts / f"iter_{it:05d}.parquet")
        assert frame["prompt_index"].nunique() == drawn[it] >= 2  # every round's records
        assert drawn[it] - filtered[it] == min(informative[it], 2)  # P = 2 groups trained
        if rounds[it] > 1:
            assert drawn[it] > 2


def test_resume_without_state_is_a_one_line_error(tmp_path, tiny_sft_dir, data_dir):
    _project(tmp_path, tiny_sft_dir, data_dir)
    assert run_grpo(tmp_path, "prepare").returncode == 0
    out = run_grpo(tmp_path, "train", "--resume")
    assert out.returncode == 2
    assert "grpo: error: nothing to resume: no saved state in models/grpo/resume" in out.stderr
    assert "Traceback" not in out.stderr


def _grown(client, run_id: str, rollouts: Path) -> None:
    """Groups start at 2 completions and double (4, 8) while they have no reward variance,
    within 5 per drawn prompt; the growth metric counts the completions added."""
    grown = {m.step: m.value for m in client.get_metric_history(run_id, "rollout/growth_samples")}
    sizes_seen = set()
    for it, added in grown.items():
        frame = pd.read_parquet(rollouts / f"iter_{it:05d}.parquet")
        sizes = frame.groupby("prompt_index").size()
        sizes_seen |= set(sizes.tolist())
        assert sizes.between(2, 8).all() and sizes.sum() <= 5 * len(sizes), sizes.tolist()
        assert added == sizes.sum() - 2 * len(sizes)
        # a group whose first 2 samples already differ never grows; one that grew to 4 and
        # still had no variance is the one that may have doubled again
        first = frame[frame["sample_index"] < 2].groupby("prompt_index")["reward"].nunique()
        assert (sizes[first > 1] == 2).all(), (sizes.tolist(), first.tolist())
        four = frame[frame["sample_index"] < 4].groupby("prompt_index")["reward"].nunique()
        assert not ((sizes > 4) & (four > 1)).any(), (sizes.tolist(), four.tolist())
    assert max(sizes_seen) > 2 and sum(grown.values()) > 0, (sizes_seen, grown)
