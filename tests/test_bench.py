"""Pure pieces of the benchmarks: the paired CI, the lab-notebook entry of a learning run, the
RSS of a tree."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_ci_hand_computed():
    learning = _load("learning")
    before = [False, False, True, False]
    after = [True, False, True, True]
    # differences 1, 0, 0, 1: mean 0.5, sample variance 1/3, half width 1.96 * sqrt(1/12)
    mean, lo, hi = learning.paired_ci(before, after)
    half = 1.96 * math.sqrt((1 / 3) / 4)
    assert mean == 0.5
    assert math.isclose(lo, 0.5 - half) and math.isclose(hi, 0.5 + half)


def test_results_table_names_the_training_data_of_stored_runs():
    """The table regenerates from a stored result: the 11-30 run trained on 2-step problems,
    the 11-29 run (recorded before data limits existed) on all of GSM8K train."""
    import json

    learning = _load("learning")
    easy = json.loads((BENCH / "results" / "learning_2026-11-30_easy.json").read_text())
    table = learning.results_table(easy)
    assert "training data gsm8k train (max_steps 2)," in table
    assert "| GSM8K test accuracy (greedy, first 500) | 2.0% | 2.4% |" in table
    kept = json.loads((BENCH / "results" / "learning.json").read_text())
    assert "training data gsm8k train, 4 prompts" in learning.results_table(kept)


def test_a_finished_run_is_appended_to_the_notebook_and_never_touches_the_readme(tmp_path):
    """record_run (what a finished bench/learning.py run calls): learning.json, a dated copy
    with its reward curve, and a dated entry at the END of the notebook, earlier text kept
    byte for byte; a second run the same day gets _2 and its own entry after the first; a
    missing notebook is created. The repository's README is not written."""
    import hashlib
    import json

    learning = _load("learning")
    assert learning.EXPERIMENTS == BENCH.parent / "docs" / "experiments.md"
    assert learning.EXPERIMENTS.is_file()  # the default target is the real notebook
    readme = BENCH.parent / "README.md"
    readme_md5 = hashlib.md5(readme.read_bytes()).hexdigest()

    results, log = tmp_path / "results", tmp_path / "docs" / "experiments.md"
    results.mkdir()
    log.parent.mkdir()
    old = "# Experiments\n\nIntro.\n\n## 2026-11-29: an older run\n\nWhat happened.\n"
    log.write_text(old)
    png = tmp_path / "learning_rewards.png"
    png.write_bytes(b"\x89PNG curve")
    summary = json.loads((BENCH / "results" / "learning_2026-11-30_easy.json").read_text())
    summary["png"] = str(png)

    first = learning.record_run(summary, results=results, log=log, date="2026-12-02",
                                tag="easy", command="bench/learning.py --tag easy")
    assert first == results / "learning_2026-12-02_easy.json"
    dated = json.loads(first.read_text())
    assert dated == {**summary, "png": str(results / "learning_2026-12-02_easy_rewards.png")}
    assert json.loads((results / "learning.json").read_text()) == summary
    assert (results / "learning_2026-12-02_easy_rewards.png").read_bytes() == b"\x89PNG curve"
    entry = ("## 2026-12-02: learning run `learning_2026-12-02_easy` (bench/learning.py)\n\n"
             "Result: `bench/results/learning_2026-12-02_easy.json`, reward curve "
             "`bench/results/learning_2026-12-02_easy_rewards.png`.\n"
             "Command: `bench/learning.py --tag easy`.\n\n"
             f"{learning.results_table(dated)}\n")
    assert log.read_text() == old + "\n" + entry
    assert "| GSM8K test accuracy (greedy, first 500) | 2.0% | 2.4% |" in entry

    second = learning.record_run(summary, results=results, log=log, date="2026-12-02",
                                 tag="easy")
    assert second == results / "learning_2026-12-02_easy_2.json"
    assert json.loads(first.read_text()) == dated  # the first run's files are kept
    text = log.read_text()
    assert text.startswith(old + "\n" + entry + "\n## 2026-12-02: learning run "
                           "`learning_2026-12-02_easy_2` (bench/learning.py)\n\n")
    assert "Command:" not in text[len(old + "\n" + entry):]  # none given the second time
    assert text.endswith(learning.results_table(json.loads(second.read_text())) + "\n")

    fresh = tmp_path / "new" / "experiments.md"
    learning.record_run(summary, results=results, log=fresh, date="2026-12-03")
    assert fresh.read_text().startswith("# Experiments\n\n## 2026-12-03: learning run "
                                        "`learning_2026-12-03` (bench/learning.py)\n")
    assert (results / "learning_2026-12-03.json").is_file()
    assert hashlib.md5(readme.read_bytes()).hexdigest() == readme_md5
    assert not hasattr(learning, "update_readme")


def test_every_stored_learning_run_has_its_notebook_entry():
    """Each dated result file under bench/results/ is named by an entry of docs/experiments.md."""
    notebook = (BENCH.parent / "docs" / "experiments.md").read_text()
    stored = sorted((BENCH / "results").glob("learning_*.json"))
    assert stored
    missing = [p.name for p in stored if f"`bench/results/{p.name}`" not in notebook]
    assert not missing, missing


def test_run_child_reports_tree_memory(tmp_path):
    common = _load("common")
    # the child allocates ~200 MB in a grandchild: the tree peak must see it
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(200 * 2**20); time.sleep(2)'])")
    res = common.run_child([sys.executable, "-c", code], tmp_path)
    assert res["rc"] == 0
    assert res["peak_tree_rss_gb"] > 0.18
    assert res["peak_rss_gb"] > 0.18  # wait4 counts the waited-for grandchild


def test_resume_budget_is_read_from_mlflow(tmp_path):
    """`learning.py --resume`: the minutes spent are from the run's start to the log of the
    iteration the resume state holds (a real sqlite store), and the results table says so."""
    import json

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    learning = _load("learning")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("learning", artifact_location=str(tmp_path / "mlruns"))
    run = client.create_run(exp, start_time=1_000_000)
    for step, minute in ((1, 2.0), (2, 4.5), (3, 7.0)):  # iteration 3 logged 7 min in
        client.log_batch(run.info.run_id, metrics=[
            Metric("time/iteration_s", 1.0, 1_000_000 + int(minute * 60_000), step)])
    resume = tmp_path / "models" / "grpo" / "resume"
    resume.mkdir(parents=True)
    (resume / "meta.json").write_text(json.dumps({"iteration": 2, "run_id": run.info.run_id}))
    spent = learning.spent_before_resume(tmp_path)
    assert spent == {"iteration": 2, "minutes": 4.5}
    assert learning.resumed_note(None) == ""
    assert "iteration 2, 4.5 min in" in learning.resumed_note(spent)


def test_run_all_only_keeps_the_other_summary_entries(tmp_path, monkeypatch):
    import json

    run_all = _load("run_all")
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps(
        {"quick": False, "results": {"rollout": {"rc": 0}, "vs_trl": {"rc": 1}}}))
    assert run_all.merged({"vs_trl": {"rc": 0}}, quick=False) == {"rollout": {"rc": 0},
                                                                   "vs_trl": {"rc": 0}}
    assert run_all.merged({"vs_trl": {"rc": 0}}, quick=True) == {"vs_trl": {"rc": 0}}


def test_vs_trl_sides_train_on_one_dataset(tmp_path, monkeypatch):
    """Our side's params, read by the product's own loader, train on the split TRL reads
    (the product's default training set is another); a run that drew other prompts stops
    the benchmark with the prompt it found. No data is read: a data folder is enough."""
    import pandas as pd
    import yaml

    from grpo_core.config import load_config

    (tmp_path / "gsm8k").mkdir()
    monkeypatch.setenv("GRPO_DATA_DIR", str(tmp_path))
    vs_trl = _load("vs_trl")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(vs_trl.our_params(tmp_path, 3, "token_mean", "sft")))
    train = load_config(path).data.train
    assert [(d.name, d.split) for d in train] == [("gsm8k", "train")]
    assert [(d.name, d.split) for d in load_config(None).data.train] != [("gsm8k", "train")]
    from grpo_core.rollout.records import records_path

    rollouts = tmp_path / "rollouts"
    rollouts.mkdir()
    pd.DataFrame({"prompt_id": ["gsm8k/train/3", "gsm8k/train/9"]}).to_parquet(
        records_path(rollouts, 1))
    vs_trl.check_trained_on(rollouts, 1, "gsm8k/train/")
    pd.DataFrame({"prompt_id": ["arithmetic/train/637"]}).to_parquet(records_path(rollouts, 2))
    with pytest.raises(SystemExit, match="trained on 'arithmetic/train/637', not on gsm8k/train/"):
        vs_trl.check_trained_on(rollouts, 2, "gsm8k/train/")


def test_saved_tensors_counts_weight_casts_only_under_autocast(tiny_llama_factory):
    """float32 saves the parameters themselves (no extra memory), bf16 autocast saves bf16
    copies of the weights and bf16 activations; both save float32 activations too."""
    import torch

    saved = _load("saved_tensors")
    model = tiny_llama_factory().train()
    ids = torch.randint(3, 100, (2, 12))
    f32 = saved.saved_bytes(model, ids, torch.ones_like(ids), torch.ones(2, 8), bf16=False)
    bf16 = saved.saved_bytes(model, ids, torch.ones_like(ids), torch.ones(2, 8), bf16=True)
    assert f32["param/float32"] > 0 and not any(k.startswith("param-cast") for k in f32)
    assert "activation/bfloat16" not in f32
    assert bf16["param-cast/bfloat16"] > 0 and bf16["activation/bfloat16"] > 0
    assert bf16.get("param/float32", 0) < f32["param/float32"]


def test_results_table_says_what_the_pass_rate_filter_kept():
    import json

    learning = _load("learning")
    run = json.loads((BENCH / "results" / "learning_2026-11-30_passrate.json").read_text())
    assert ("training data gsm8k train (pass-rate filter: 135 of 7473 problems (pass rate "
            "0.01-0.99 of gsm8k_accuracy over >= 8 samples; 652 measured in 387 rollout "
            "files)), 4 prompts") in learning.results_table(run)
    assert learning.recipe(["a/rollouts"])["data"] == {"prompt": {"few_shot": 1},
                                                       "pass_rates": {"rollouts": ["a/rollouts"]}}
    assert learning.recipe(None) is learning.RECIPE
    g16 = learning.recipe(None, ["rollout.group_size=16", "train.learning_rate=1.0e-5"])
    assert (g16["rollout"]["group_size"], g16["train"]["learning_rate"]) == (16, 1e-5)
    assert learning.RECIPE["rollout"]["group_size"] == 8  # a copy was changed


def test_timed_runs_calls_each_repeat_and_keeps_every_time():
    from common import timed_runs

    calls = []
    value, runs = timed_runs(lambda: calls.append(len(calls)) or len(calls), 3)
    assert calls == [0, 1, 2] and value == 3
    assert len(runs) == 3 and all(s >= 0 for s in runs)
    try:
        timed_runs(lambda: None, 0)
    except ValueError as exc:
        assert "at least 1" in str(exc)
    else:
        raise AssertionError("repeats=0 was accepted")


def test_repeats_option_defaults_to_three_one_under_quick_and_refuses_zero(capsys):
    import argparse

    import pytest
    from common import add_repeats_option, repeats_of

    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--quick", action="store_true")
    add_repeats_option(parser, quick=True)
    assert repeats_of(parser.parse_args([])) == 3
    assert repeats_of(parser.parse_args(["--quick"])) == 1
    assert repeats_of(parser.parse_args(["--quick", "--repeats", "5"])) == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["--repeats", "0"])
    assert "--repeats: must be at least 1, got 0" in capsys.readouterr().err


def test_update_step_repeats_each_case_without_accumulating_gradients(tiny_llama):
    """The log-prob case runs forward + backward `repeats` times; each run starts from zeroed
    gradients, so the timed work is the same every time (and equal to a single run)."""
    update_step = _load("update_step")
    model = tiny_llama.train()
    shape = dict(rows=4, min_len=4, max_len=8)
    batch = update_step.make_batch(shape, model.config.vocab_size)
    once, _ = update_step.run_logprobs(model, batch, dict(shape, method="chunked", chunk=16,
                                                          repeats=1))
    grad_once = model.model.embed_tokens.weight.grad.clone()
    runs, extra = update_step.run_logprobs(model, batch, dict(shape, method="chunked", chunk=16,
                                                              repeats=3))
    assert len(once) == 1 and len(runs) == 3 and math.isfinite(extra["logp_sum"])
    assert model.model.embed_tokens.weight.grad.allclose(grad_once)

    runs, extra = update_step.run_update(model, batch, dict(shape, kind="update",
                                                            autocast="float32", micro=2,
                                                            ckpt=False, repeats=2))
    assert len(runs) == 2 and math.isfinite(extra["loss"])
    assert all(c["repeats"] == 2 for c in update_step.cases(quick=True, repeats=2))


def test_every_headline_reads_the_figures_its_benchmark_stored():
    """run_all's digests follow the JSON each benchmark writes: a renamed key fails here."""
    import json

    run_all = _load("run_all")
    for name, digest in run_all.HEADLINES.items():
        figures = json.loads((BENCH / "results" / f"{name}.json").read_text())
        line = digest(figures)
        assert line and any(ch.isdigit() for ch in line), (name, line)


def test_a_complete_learning_run_frees_its_resume_state(tmp_path, capsys):
    learning = _load("learning")
    resume = tmp_path / "models" / "grpo" / "resume"
    resume.mkdir(parents=True)
    (resume / "learner.pt").write_bytes(b"state")
    (tmp_path / "models" / "grpo" / "final").mkdir()
    learning.drop_resume_state(tmp_path)
    assert not resume.exists() and (tmp_path / "models" / "grpo" / "final").is_dir()
    assert "nothing to resume" in capsys.readouterr().out
    learning.drop_resume_state(tmp_path)  # a second call (nothing there) is a no-op


def test_learning_speed_takes_the_last_checkpoint_logged_by_each_mark(tmp_path):
    speed = _load("learning_speed")
    minutes = {8: 4.1, 16: 7.9, 24: 11.5, 32: 15.2, 40: 19.9, 48: 23.8, 57: 30.4}  # 57: final
    picks = speed.chosen_checkpoints(tmp_path, [5, 10, 20, 30], minutes)
    assert {m: it for m, (it, _, _) in picks.items()} == {5: 8, 10: 16, 20: 40, 30: 57}
    assert picks[30][2] == tmp_path / "models" / "grpo" / "final"
    assert picks[10][2] == tmp_path / "models" / "grpo" / "checkpoints" / "iter_00016"
    # nothing logged by the first mark: that mark has no pick (and is reported as left out)
    assert 1 not in speed.chosen_checkpoints(tmp_path, [1, 30], minutes)


def test_learning_speed_keeps_what_the_rollouts_bought_from_the_runs_metrics(tmp_path):
    import mlflow

    speed = _load("learning_speed")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(speed.EXPERIMENT)
    with mlflow.start_run():  # three iterations of 20 s: 1, 0 and 2 informative groups
        for step, informative, completions in ((1, 1, 32), (2, 0, 32), (3, 2, 64)):
            mlflow.log_metrics({"groups/informative": informative, "rollout/completions": completions,
                                "time/iteration_s": 20.0}, step=step)
    mlflow.set_tracking_uri(None)
    spent = speed.signal_spent(tmp_path)
    assert spent["iterations"] == 3
    assert spent["informative_groups_per_iteration"] == pytest.approx(1.0)
    assert spent["completions_per_iteration"] == pytest.approx(128 / 3)
    assert spent["informative_groups_per_minute"] == pytest.approx(3.0)  # 3 in one minute
    assert spent["completions_per_informative_group"] == pytest.approx(128 / 3)
