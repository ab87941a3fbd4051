"""Small pure pieces of the flows: the time budget, metric naming, the printed table."""

import time

from flows.evaluate import by_dataset, flat_metrics, format_table
from flows.run.console import Budget

RESULTS = {
    "gsm8k": {"accuracy": 0.25, "count": 4.0, "pass@4": 0.5, "maj@4": 0.25},
    "math500": {"accuracy": 0.5, "count": 2.0,
                "by_level": {"1": {"accuracy": 1.0, "count": 1.0},
                             "5": {"accuracy": 0.0, "count": 1.0}}},
}


def test_budget():
    assert not Budget(None).spent()
    b = Budget(0.5 / 60_000)  # half a millisecond
    time.sleep(0.002)
    assert b.spent()
    assert not Budget(60).spent()


def test_flat_metrics_are_valid_mlflow_names():
    flat = flat_metrics(RESULTS, "eval")
    assert flat == {"eval/gsm8k/accuracy": 0.25, "eval/gsm8k/count": 4.0,
                    "eval/gsm8k/pass_at_4": 0.5, "eval/gsm8k/maj_at_4": 0.25,
                    "eval/math500/accuracy": 0.5, "eval/math500/count": 2.0,
                    "eval/math500/level_1/accuracy": 1.0, "eval/math500/level_5/accuracy": 0.0}
    assert by_dataset(flat)["gsm8k"] == {"accuracy": 0.25, "count": 4.0, "pass@4": 0.5,
                                         "maj@4": 0.25}


def test_breakdown_labels_become_valid_metric_names():
    """MATH subjects such as "Counting & Probability" are not valid MLflow names as they are."""
    from mlflow.utils.validation import _validate_metric_name

    results = {"math500": {"accuracy": 0.5, "count": 2.0, "by_subject": {
        "Counting & Probability": {"accuracy": 1.0, "count": 1.0},
        "Intermediate Algebra": {"accuracy": 0.0, "count": 1.0}}}}
    flat = flat_metrics(results, "eval")
    assert "eval/math500/subject_Counting_and_Probability/accuracy" in flat
    assert "eval/math500/subject_Intermediate_Algebra/accuracy" in flat
    for name in flat:
        _validate_metric_name(name)  # raises MlflowException on an invalid name


def test_format_table_lists_datasets_and_breakdowns():
    table = format_table(RESULTS).splitlines()
    assert table[0].split() == ["dataset", "n", "accuracy", "maj@4", "pass@4"]
    assert table[1].split() == ["gsm8k", "4", "0.250", "0.250", "0.500"]
    assert table[2].split() == ["math500", "2", "0.500", "nan", "nan"]
    assert table[3].split() == ["math500", "level", "1", "1", "1.000"]


def test_engine_options_carry_every_engine_setting_of_the_config():
    """Every keyword the vLLM engine takes comes from the config (cpu_compile included); the
    compiled engine itself is exercised by `bench/rollout.py --compare-compile`, which takes a
    minute of compilation the test suite cannot spend."""
    import inspect

    from flows.run.inputs import engine_options
    from grpo_core.config import load_config
    from grpo_core.rollout.hf_engine import HFEngine

    options = engine_options(load_config(None, ["rollout.cpu_compile=true"]))
    assert options["cpu_compile"] is True
    hf = set(inspect.signature(HFEngine.__init__).parameters) - {"self", "model_dir"}
    assert set(options) <= hf  # the HF engine accepts (and ignores) the vLLM ones
