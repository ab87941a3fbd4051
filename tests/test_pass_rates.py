"""Offline difficulty filtering: pass rates from rollout files, the band, and the errors."""

from __future__ import annotations

import pandas as pd
import pytest

from grpo_core.config import load_config
from grpo_core.errors import UserError
from grpo_core.data.pass_rates import filter_mixture, pass_rates, read_samples, rollout_files


def write_rollouts(path, samples: dict[str, list[float]], reward="gsm8k_accuracy"):
    """One parquet file in the layout `grpo train` writes: a row per sample."""
    rows = [{"iteration": 1, "prompt_id": pid, "sample_index": k, f"reward_{reward}": score}
            for pid, scores in samples.items() for k, score in enumerate(scores)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


MIXTURE = pd.DataFrame({"id": [f"gsm8k/train/{i}" for i in (5, 1, 4, 2, 3)],
                        "question": list("abcde")})


def test_rates_count_every_sample_across_files(tmp_path):
    write_rollouts(tmp_path / "run1" / "iter_00001.parquet",
                   {"gsm8k/train/1": [0, 0, 1, 0], "gsm8k/train/2": [0, 0, 0, 0]})
    write_rollouts(tmp_path / "run2" / "rollouts" / "iter_00001.parquet",
                   {"gsm8k/train/1": [1, 0, 0, 0], "gsm8k/train/3": [1, 1, 1, 1]})
    files = rollout_files([tmp_path / "run1", tmp_path / "run2"])
    assert [f.parent.name for f in files] == ["run1", "rollouts"]  # folders are searched deep
    rates = pass_rates(read_samples(files, "gsm8k_accuracy"))
    assert rates.loc["gsm8k/train/1"].tolist() == [8, 0.25]
    assert rates.loc["gsm8k/train/2"].tolist() == [4, 0.0]
    assert rates.loc["gsm8k/train/3"].tolist() == [4, 1.0]


def test_band_and_min_samples_keep_the_mixture_order(tmp_path):
    write_rollouts(tmp_path / "r.parquet", {
        "gsm8k/train/1": [0, 1, 0, 0], "gsm8k/train/2": [0, 0, 0, 0],
        "gsm8k/train/3": [1, 1, 1, 1], "gsm8k/train/4": [1, 0, 1, 0],
        "gsm8k/train/5": [1, 0]})  # 5: too few samples; 0 (not in the mixture) never appears
    kept, said = filter_mixture(MIXTURE, [tmp_path / "r.parquet"], reward="gsm8k_accuracy",
                                min_rate=0.01, max_rate=0.99, min_samples=4)
    assert kept["id"].tolist() == ["gsm8k/train/1", "gsm8k/train/4"]  # MIXTURE's order
    assert kept.index.tolist() == [0, 1]
    assert said == ("data.pass_rates: training on 2 of 5 problems (pass rate 0.01-0.99 of "
                    "gsm8k_accuracy over >= 4 samples; 4 measured in 1 rollout files)")
    never, _ = filter_mixture(MIXTURE, [tmp_path / "r.parquet"], reward="gsm8k_accuracy",
                              min_rate=0.0, max_rate=0.0, min_samples=2)
    assert never["id"].tolist() == ["gsm8k/train/2"]


def test_errors_name_the_file_and_the_key(tmp_path):
    def run(paths, reward="gsm8k_accuracy", lo=0.01):
        return filter_mixture(MIXTURE, paths, reward=reward, min_rate=lo, max_rate=0.99,
                              min_samples=1)

    with pytest.raises(UserError, match=r"^data.pass_rates.rollouts: .*nowhere does not exist$"):
        run([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty holds no .parquet rollout files$"):
        run([tmp_path / "empty"])
    f = write_rollouts(tmp_path / "r.parquet", {"gsm8k/train/1": [0.0, 0.0]}, reward="format")
    with pytest.raises(UserError, match=r"r.parquet: no column prompt_id and "
                       r"reward_gsm8k_accuracy \(data.pass_rates.reward = 'gsm8k_accuracy'; "
                       r"rewards in this file: format\)$"):
        run([f])
    with pytest.raises(UserError, match=r"^data.pass_rates: no training problem has a pass "
                       r"rate 0.01-0.99 of format over >= 1 samples in 1 rollout file\(s\) "
                       r"\(1 problems had enough samples\)$"):
        run([f], reward="format")
    with pytest.raises(UserError, match=r"^data.pass_rates.rollouts: .* is or holds this run's "
                       r"own rollouts \(rollout.output_dir .*runs/now/rollouts\); point it at "
                       r"earlier runs' rollouts$"):
        rollout_files([tmp_path / "runs"], own=tmp_path / "runs" / "now" / "rollouts")
    assert rollout_files([f], own=tmp_path / "runs" / "now" / "rollouts") == [f]
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(UserError, match=r"bad.parquet: not a readable parquet file"):
        run([tmp_path / "bad.parquet"])


def test_config_section(tmp_path):
    base = tmp_path / "p.yaml"
    base.write_text("data:\n  pass_rates:\n    rollouts: [runs/a/rollouts]\n")
    f = load_config(base).data.pass_rates
    assert (f.rollouts, f.reward, f.min_rate, f.max_rate, f.min_samples) == (
        ("runs/a/rollouts",), "gsm8k_accuracy", 0.01, 0.99, 8)
    assert load_config(base, ["data.pass_rates=null"]).data.pass_rates is None
    off = tmp_path / "off.yaml"
    off.write_text("data:\n  pass_rates: null\n")  # as in the repository's params.yaml
    on = load_config(off, ["data.pass_rates.rollouts=[a, b]", "data.pass_rates.min_rate=0.1"])
    assert (on.data.pass_rates.rollouts, on.data.pass_rates.min_rate) == (("a", "b"), 0.1)
    with pytest.raises(UserError, match="min_rate must be <= max_rate"):
        load_config(base, ["data.pass_rates.min_rate=0.5", "data.pass_rates.max_rate=0.2"])
    with pytest.raises(UserError, match="data.pass_rates.rollouts"):
        load_config(base, ["data.pass_rates.rollouts=[]"])
