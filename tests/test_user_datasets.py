"""Datasets beyond GSM8K and MATH: the generated arithmetic set, and a user's own verifiable
datasets (data.custom) in every file format with every checker, each prepared, validated by
real GX, rewarded by `accuracy` and evaluated with the real `hf` engine, plus the one-line
errors of bad inputs. The engine runs a tiny Llama trained to answer '#### 42' to anything, so
each checker's verdict on real engine output is known in advance."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows import prepare, validate
from flows.cli import main
from grpo_core.config import load_config
from grpo_core.data import sources as data
from grpo_core.rewards import functions as rewards
from tests.user_data_support import (ANSWER, EXPECTED, GOLDS, answering_dir,  # noqa: F401
                                     dataset_rows, verdict, write_rows)

FORMATS = {"jsonl": {"question": "prompt", "answer": "target", "solution": "worked", "id": "uid"},
           "json": {"question": "q", "answer": "a"},
           "parquet": {"question": "question", "answer": "answer", "solution": "solution"}}
TRAINED = ("numeric_jsonl", "exact_json", "math_verify_parquet")  # these have a train split too


def _custom(root: Path) -> dict:
    """data.custom with one dataset per (checker, format), files written under root/my."""
    custom = {}
    for checker in GOLDS:
        for fmt, fields in FORMATS.items():
            name = f"{checker}_{fmt}"
            files = {"test": f"my/{name}/test.{fmt}"}
            if name in TRAINED:
                files["train"] = f"my/{name}/train.{fmt}"
            for split, path in files.items():
                write_rows(root / path, dataset_rows(checker, f"{name} {split}", fields))
            custom[name] = {"files": files, "checker": checker,
                            **fields}
    return custom


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with 9 user datasets and the config that trains on 3 and evaluates all
    9 plus arithmetic; prepared and validated once."""
    import os

    root = tmp_path_factory.mktemp("custom")
    params = {"data": {"dir": None, "custom": _custom(root),
                       "train": [{"name": n, "split": "train"} for n in TRAINED]},
              "validate": {"data_docs": None, "report": "metrics/validation.json"},
              "rollout": {"engine": "hf", "dtype": "float32", "max_new_tokens": 8},
              "evaluate": {"datasets": [{"name": f"{c}_{f}", "split": "test"} for c in GOLDS
                                        for f in FORMATS] + [
                  {"name": "arithmetic", "split": "test", "rows": 6}], "max_new_tokens": 8}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = os.getcwd()
    os.chdir(root)  # user paths are relative to the project folder, as in `grpo`
    try:
        cfg = load_config("params.yaml")
        paths, metrics = prepare.run(cfg)
        report, ok = validate.run(cfg)
        yield root, cfg, paths, metrics, report, ok
    finally:
        os.chdir(before)


def test_every_format_and_checker_is_prepared(project):
    root, cfg, paths, metrics, _, _ = project
    assert len(paths) == 9 + 3 + 1
    for checker in GOLDS:
        for fmt, fields in FORMATS.items():
            frame = data.load_processed(paths[f"{checker}_{fmt}_test"])
            assert tuple(frame.columns) == data.SCHEMA
            assert set(frame["checker"]) == {checker}
            assert set(frame["source"]) == {f"{checker}_{fmt}"}
            assert frame["answer"].tolist() == [g.strip() for g, _ in GOLDS[checker]]
            ids = [f"{checker}_{fmt} test-{i}" for i in range(4)] if "id" in fields else [
                f"{checker}_{fmt}/test/{i}" for i in range(4)]
            assert frame["id"].tolist() == ids
            has_solution = "solution" in fields
            assert frame["solution"].notna().all() == has_solution, (checker, fmt)
    manifest = json.loads((root / "data/processed/manifest.json").read_text())
    assert manifest["numeric_jsonl_train"]["rows"] == 4


def test_every_user_dataset_passes_the_same_suites(project):
    report, ok = project[4], project[5]
    assert ok, report
    for name, d in report["datasets"].items():
        kinds = [(r["expectation"], r.get("column")) for r in d["expectations"]]
        assert ("expect_column_values_to_be_unique", "id") in kinds
        assert ("expect_column_values_to_be_in_set", "checker") in kinds
        numeric = name.startswith(("numeric", "arithmetic"))
        regexes = [r for r in d["expectations"] if r["expectation"].endswith("match_regex")]
        assert len(regexes) == (2 if numeric else 1), name  # non-blank, + numeric form
    assert "expect_column_values_to_not_be_in_set" in {  # the contamination check
        r["expectation"] for r in report["datasets"]["exact_json_train"]["expectations"]}


def test_accuracy_follows_each_rows_checker(project):
    _, _, paths, _, _, _ = project
    for checker in GOLDS:
        for fmt in FORMATS:
            f = data.load_processed(paths[f"{checker}_{fmt}_test"])
            total, _, m = rewards.score([ANSWER] * len(f), answers=f["answer"].tolist(),
                                        sources=f["source"].tolist(), token_counts=[3] * len(f),
                                        max_new_tokens=8, weights={"accuracy": 1.0},
                                        checkers=f["checker"].tolist())
            assert total.tolist() == [float(ok) for _, ok in GOLDS[checker]], (checker, fmt)
            assert m["reward/accuracy/failures"] == 0


@pytest.fixture(scope="module")
def engine(project, answering_dir):
    from flows.run.inputs import engine_options
    from grpo_core.rollout import make_engine

    e = make_engine("hf", answering_dir, **engine_options(project[1]))
    yield e
    e.close()


def test_the_mixture_is_rewarded_row_by_row_on_engine_output(project, engine):
    """Three datasets, three checkers, one batch: score_groups hands every row's checker to
    `accuracy`, on real completions of the hf engine."""
    from flows.run.inputs import load_data, prompt_renderer
    from grpo_core.algorithm.experience import score_groups
    from grpo_core.rollout import SamplingSettings

    cfg = project[1]
    mixture, _, shots = load_data(cfg)
    assert sorted(mixture["checker"].unique()) == ["exact", "math_verify", "numeric"]
    render = prompt_renderer(cfg, engine.tokenizer, shots)
    result = engine.generate(render(mixture["question"].tolist()), 2,
                             SamplingSettings(temperature=0.0, max_new_tokens=8))
    assert {c.text for g in result.groups for c in g.completions} == {ANSWER}
    got, per_fn, _ = score_groups(result, mixture, weights={"accuracy": 1.0}, time_limit_s=5.0,
                                  max_new_tokens=8)
    want = [[float(verdict(c, a))] * 2 for c, a in zip(mixture["checker"], mixture["answer"])]
    assert got.tolist() == want and 0 < got.mean() < 1


def test_evaluation_judges_each_dataset_by_its_checker(project, engine):
    from flows.evaluate import flat_metrics, score_sets
    from flows.run.inputs import load_data, prompt_renderer

    cfg = project[1]
    _, sets, shots = load_data(cfg)
    results, _ = score_sets(engine, prompt_renderer(cfg, engine.tokenizer, shots), sets,
                            max_new_tokens=8, samples=2, temperature=0.6, time_limit_s=5.0,
                            seed=0)
    for checker, accuracy in EXPECTED.items():
        for fmt in FORMATS:
            m = results[f"{checker}_{fmt}"]
            assert (m["accuracy"], m["count"]) == (accuracy, 4.0), (checker, fmt)
            assert "pass@2" in m and "maj@2" in m
    arithmetic = sets["arithmetic"]
    assert results["arithmetic"]["accuracy"] == (arithmetic["answer"] == "42").mean()
    assert set(results["arithmetic"]["by_level"]) == {"1", "2", "3"}
    assert "eval/exact_json/accuracy" in flat_metrics(results, "eval")


def test_vote_keys_follow_the_checker():
    from grpo_core.evaluation.metrics import vote_key

    assert vote_key("so #### 1,000.0", "numeric") == "1000"
    assert vote_key("#### New  York.", "exact") == "new york"
    assert vote_key("so \\boxed{ \\frac{1}{2} }", "math_verify") == "\\frac{1}{2}"


# ------------------------------------------------------------------------ arithmetic
def test_arithmetic_needs_no_files_and_validates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRPO_DATA_DIR", raising=False)
    cfg = load_config(None, [
        "data.train=[{name: arithmetic, split: train, rows: 60, max_level: 2}]",
        "evaluate.datasets=[{name: arithmetic, split: test}]", "validate.data_docs=null"])
    paths, metrics = prepare.run(cfg)
    assert {k: m["rows"] for k, m in metrics.items()} == {"arithmetic_train": 3000,
                                                         "arithmetic_test": 600}
    frame = data.load_processed(paths["arithmetic_train"])
    assert set(frame["checker"]) == {"numeric"} and set(frame["level"]) == {1, 2, 3}
    report, ok = validate.run(cfg)
    assert ok, report
    checks = {(r["expectation"], r["column"]) for r in
              report["datasets"]["arithmetic_test"]["expectations"]}
    assert {("expect_column_values_to_be_between", "level"),
            ("expect_column_values_to_match_regex", "answer")} <= checks

    from flows.run.inputs import load_data

    mixture, evals, _ = load_data(cfg)
    assert len(mixture) == 60 and mixture["level"].max() <= 2
    assert set(mixture["subject"]) <= {"add", "subtract", "multiply", "word_one_step"}
    assert len(evals["arithmetic"]) == 600
    total, _, _ = rewards.score(frame["solution"].tolist(), answers=frame["answer"].tolist(),
                                sources=frame["source"].tolist(), token_counts=[9] * len(frame),
                                max_new_tokens=64, weights={"accuracy": 1.0},
                                checkers=frame["checker"].tolist())
    assert total.min() == 1.0  # every worked solution ends in its own '#### <answer>'

    broken = frame.copy()
    broken.loc[3, "level"] = 4
    broken.loc[5, "answer"] = "twelve"
    broken.to_parquet(paths["arithmetic_train"], index=False)
    report, ok = validate.run(cfg)
    failed = {(r["expectation"], r["column"], tuple(r["example_ids"])) for r in
              report["datasets"]["arithmetic_train"]["expectations"] if not r["success"]}
    assert not ok and failed == {
        ("expect_column_values_to_be_between", "level", ("arithmetic/train/3",)),
        ("expect_column_values_to_match_regex", "answer", ("arithmetic/train/5",))}


# ---------------------------------------------------------------------------- errors
CAPS = ("{files: {train: my/train.jsonl, test: my/test.parquet}, question: prompt, "
        "answer: target, checker: numeric}")
USE_CAPS = ["--set", f"data.custom.caps={CAPS}", "--set", "data.train=[{name: caps}]",
            "--set", "evaluate.datasets=[{name: caps, split: test}]"]
BAD = [  # (rows of my/train.jsonl, the error after "grpo: error: ")
    ([{"prompt": "What is two plus two?", "target": "4"}, {"question": "Three plus three?",
                                                            "target": "6"}],
     "my/train.jsonl:2: missing field 'prompt' (named by data.custom.caps.question; the row "
     "has: question, target)"),
    ([{"prompt": 22, "target": "4"}],
     "my/train.jsonl:1: field 'prompt' (named by data.custom.caps.question) must be a string, "
     "got int"),
    ([{"prompt": "What is two plus two?", "target": 4.0}],
     "my/train.jsonl:1: field 'target' (named by data.custom.caps.answer) must be a string or "
     "an integer, got float"),
]


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "my/test.parquet",
               [{"prompt": "What is five plus five?", "target": "10"}])
    return tmp_path


def _prepare(capsys, *overrides: str) -> tuple[int, str]:
    status = main(["prepare", *USE_CAPS, *overrides])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("rows, message", BAD)
def test_bad_rows_are_one_line_errors(user_project, capsys, rows, message):
    write_rows(user_project / "my/train.jsonl", rows)
    assert _prepare(capsys) == (2, f"grpo: error: {message}\n")


def test_missing_file_bad_json_and_parquet_rows(user_project, capsys):
    assert _prepare(capsys) == (
        2, "grpo: error: data.custom.caps.files.train: file not found: my/train.jsonl\n")
    (user_project / "my/train.jsonl").write_text(
        '{"prompt": "What is 1 + 1?", "target": "2"}\n{"prompt": \n')
    assert _prepare(capsys) == (
        2, "grpo: error: my/train.jsonl:2: not valid JSON: Expecting value (column 12)\n")
    write_rows(user_project / "my/train.jsonl", [{"prompt": "What is 1 + 1?", "target": "2"}])
    write_rows(user_project / "my/test.parquet", [{"prompt": "What is 2 + 2?", "target": "4"},
                                                  {"prompt": None, "target": "5"}])
    assert _prepare(capsys) == (
        2, "grpo: error: my/test.parquet:row 2: missing field 'prompt' (named by "
           "data.custom.caps.question; the row has: prompt, target)\n")


CONFIG_MISTAKES = [  # (what follows the dataset's `files` line, the exact error)
    ("      checker: fuzzy\n",
     "grpo: error: params.yaml:5: data.custom.caps.checker must be one of 'numeric', "
     "'exact' or 'math_verify', got 'fuzzy'\n"),
    ("      checker: exact\n  train:\n    - {name: capz}\n",
     "grpo: error: params.yaml:7: data.train.0.name: must be a built-in dataset (gsm8k, "
     "math, math500, arithmetic) or a key of data.custom (caps), got 'capz'\n"),
]


@pytest.mark.parametrize("rest, error", CONFIG_MISTAKES)
def test_config_mistakes_name_the_file_line_and_key(user_project, capsys, rest, error):
    (user_project / "params.yaml").write_text(
        "data:\n  custom:\n    caps:\n      files: {train: my/train.jsonl}\n" + rest)
    assert main(["prepare"]) == 2
    assert capsys.readouterr().err == error


def test_numeric_answers_are_validated(user_project, capsys):
    write_rows(user_project / "my/train.jsonl",
               [{"prompt": f"What is {i} plus {i}?", "target": t} for i, t in
                enumerate(["0", "2", "four", 6])])
    assert _prepare(capsys)[0] == 0
    assert main(["validate", *USE_CAPS, "--set", "validate.data_docs=null"]) == 2
    assert ("caps_train: expect_column_values_to_match_regex on 'answer' failed: 1 of 4 rows; "
            "e.g. ids caps/train/2") in capsys.readouterr().err
    frame = pd.read_parquet(user_project / "data/processed/caps_train.parquet")
    assert frame["answer"].tolist() == ["0", "2", "four", "6"]  # a JSON integer is its text


def test_hub_dataset_offline_is_a_one_line_error(user_project, capsys):
    status, err = _prepare(capsys, "--set", "data.custom.caps.files={train: my/test.parquet}",
                           "--set", "data.custom.caps.hub=example-org/caps")
    assert status == 2 and err.count("\n") == 1
    try:  # the message differs when `datasets` is installed (then: offline, hub unreachable)
        import datasets  # noqa: F401
    except ImportError:
        assert err == ("grpo: error: data.custom.caps.hub: reading example-org/caps needs the "
                       "`datasets` package (`pip install datasets`), or give "
                       "data.custom.caps.files.test a local file\n")
    else:
        assert err.startswith("grpo: error: data.custom.caps.hub: cannot load example-org/caps "
                              "split 'test' from the Hugging Face hub (")
        assert err.endswith("; or give data.custom.caps.files.test a local file\n")
