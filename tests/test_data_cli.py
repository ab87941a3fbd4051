"""`grpo prepare` and `grpo validate` end to end on the real files, in a scratch project folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from flows.cli import main

MIX = ["--set", "data.train=[{name: gsm8k, rows: 50}, {name: math, rows: 50}]",
       "--set", "evaluate.datasets=[{name: gsm8k, split: test}, {name: math500, split: test}]",
       "--set", "validate.data_docs=null"]


@pytest.fixture
def project(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRPO_DATA_DIR", str(data_dir))
    return tmp_path


def test_prepare_then_validate(project, capsys):
    assert main(["prepare", *MIX]) == 0
    out = capsys.readouterr().out
    assert "math_train: 7498 rows -> data/processed/math_train.parquet (dropped 2 without an " \
           "answer)" in out
    manifest = json.loads((project / "data/processed/manifest.json").read_text())
    assert set(manifest) == {"gsm8k_train", "math_train", "gsm8k_test", "math500_test"}
    assert main(["validate", *MIX]) == 0
    assert capsys.readouterr().out.startswith("validation passed: gsm8k_train 7473, ")
    report = json.loads((project / "metrics/validation.json").read_text())
    assert report["success"] and set(report["datasets"]) == set(manifest)


def test_validate_stops_with_a_summary_on_contaminated_data(project, capsys):
    assert main(["prepare", *MIX]) == 0
    path = project / "data/processed/gsm8k_train.parquet"
    train = pd.read_parquet(path)
    test = pd.read_parquet(project / "data/processed/gsm8k_test.parquet")
    pd.concat([train, test.head(3)], ignore_index=True).to_parquet(path, index=False)
    capsys.readouterr()
    assert main(["validate", *MIX]) == 2
    err = capsys.readouterr().err
    assert ("gsm8k_train: expect_column_values_to_not_be_in_set on 'question_key' "
            "(contamination: question also in an evaluation set) failed: 3 of 7476 rows; "
            "e.g. ids gsm8k/test/0, gsm8k/test/1, gsm8k/test/2") in err
    assert err.rstrip().splitlines()[-1] == (
        "grpo: error: data validation failed: 1 expectations (report metrics/validation.json)")
    assert "Traceback" not in err


def test_prepare_reports_a_malformed_file_in_one_line(project, monkeypatch, capsys):
    bad = project / "mine"
    (bad / "gsm8k").mkdir(parents=True)
    (bad / "gsm8k" / "train.jsonl").write_text('{"question": "Two plus two?", "answer": "#### 4"}\n'
                                               '{"question": "Oops", "answer": 4}\n')
    monkeypatch.setenv("GRPO_DATA_DIR", str(bad))
    assert main(["prepare", "--set", "evaluate.datasets=[{name: gsm8k, split: train}]"]) == 2
    err = capsys.readouterr().err
    assert err == (f"grpo: error: {bad}/gsm8k/train.jsonl:2: field 'answer' must be a string, "
                   "got int\n")
