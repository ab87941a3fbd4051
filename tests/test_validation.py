"""Great Expectations suites: pass on the real files, fail with the right expectation on broken
copies, and a summary a person can act on. Real GX (ephemeral context), real parquet files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from grpo_core.data import sources as data
from grpo_core.errors import UserError
from grpo_core.data.validation import summary, validate, write_html, write_report


@pytest.fixture(scope="module")
def real(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("processed")
    paths, _ = data.prepare(data_dir, out, [("gsm8k", "train"), ("gsm8k", "test"),
                                            ("math", "train"), ("math", "test"),
                                            ("math500", "test")])
    return paths


def _failed(report: dict) -> dict[str, set[str]]:
    """{dataset: {"expectation:column", ...}} of what failed."""
    return {name: {f"{r['expectation']}:{r['column']}" for r in d["expectations"]
                   if not r["success"]}
            for name, d in report["datasets"].items() if not d["success"]}


def test_real_files_pass_and_write_report_and_data_docs(real, tmp_path):
    paths = {k: real[k] for k in ("gsm8k_train", "math_train", "gsm8k_test", "math500_test")}
    report, ok = validate(paths, train_names=["gsm8k_train", "math_train"],
                          eval_names=["gsm8k_test", "math500_test"], docs_dir=tmp_path / "docs")
    assert ok and report["success"] and report["failed_expectations"] == 0, summary(report)
    g = report["datasets"]["gsm8k_train"]
    assert g["rows"] == 7473 and g["train"] and not g["eval"]
    kinds = {r["expectation"] for r in g["expectations"]}
    assert {"expect_table_columns_to_match_set", "expect_column_values_to_be_unique",
            "expect_column_values_to_not_be_null", "expect_column_value_lengths_to_be_between",
            "expect_column_values_to_match_regex",
            "expect_column_values_to_not_be_in_set"} <= kinds
    assert "expect_column_values_to_be_between" in {
        r["expectation"] for r in report["datasets"]["math500_test"]["expectations"]}
    assert (tmp_path / "docs" / "index.html").is_file()
    assert report["data_docs"].endswith("index.html")
    path = write_report(report, tmp_path / "metrics" / "validation.json")
    assert json.loads(path.read_text())["success"] is True
    assert summary(report) == "all expectations passed"
    page = write_html(report, tmp_path / "summary.html").read_text()
    assert "Data validation passed" in page and "<td>gsm8k_train</td>" in page
    assert "FAIL" not in page.replace(".FAIL", "") and "http" not in page


def test_real_contamination_between_math_train_and_math_test_is_caught(real):
    # One MATH train problem is a MATH test problem plus a trailing newline (the data folder's
    # SOURCES.md, in $GRPO_DATA_DIR, says no *exact* overlap; the whitespace-insensitive check
    # finds this one).
    report, ok = validate({k: real[k] for k in ("math_train", "math_test")},
                          train_names=["math_train"], eval_names=["math_test"])
    assert not ok
    assert _failed(report) == {"math_train": {"expect_column_values_to_not_be_in_set:question_key"}}
    hit = [r for r in report["datasets"]["math_train"]["expectations"] if not r["success"]][0]
    assert (hit["unexpected_count"], hit["example_ids"]) == (1, ["train/geometry/6032.json"])


def test_broken_copies_fail_with_the_right_expectation(real, tmp_path):
    g = pd.read_parquet(real["gsm8k_train"]).head(200).copy()
    m = pd.read_parquet(real["math500_test"]).head(100).copy()
    ev = pd.read_parquet(real["gsm8k_test"]).head(50)
    broken = {
        "gsm8k_nulls": g.assign(question=[None] * 3 + g["question"].tolist()[3:]),
        "gsm8k_dups": g.assign(id=["dup"] * 4 + g["id"].tolist()[4:]),
        "gsm8k_words": g.assign(answer=["seventy-two"] + g["answer"].tolist()[1:]),
        "gsm8k_overlap": pd.concat([g.head(20), ev.head(2)], ignore_index=True),
        "gsm8k_short": g.assign(question=["2+2?"] * 2 + g["question"].tolist()[2:]),
        "gsm8k_blank": g.assign(answer=["  "] + g["answer"].tolist()[1:]),
        "gsm8k_columns": g.drop(columns=["solution"]),
        "math_levels": m.assign(level=pd.array([7, 0] + m["level"].tolist()[2:], dtype="Int64")),
        "gsm8k_eval": ev,
    }
    paths = {}
    for name, frame in broken.items():
        paths[name] = tmp_path / f"{name}.parquet"
        frame.to_parquet(paths[name], index=False)
    report, ok = validate(paths, train_names=["gsm8k_overlap"], eval_names=["gsm8k_eval"],
                          sample_rows=2)
    assert not ok
    assert _failed(report) == {
        "gsm8k_nulls": {"expect_column_values_to_not_be_null:question"},
        "gsm8k_dups": {"expect_column_values_to_be_unique:id"},
        "gsm8k_words": {"expect_column_values_to_match_regex:answer"},
        "gsm8k_overlap": {"expect_column_values_to_not_be_in_set:question_key"},
        "gsm8k_short": {"expect_column_value_lengths_to_be_between:question"},
        "gsm8k_blank": {"expect_column_values_to_match_regex:answer"},
        "gsm8k_columns": {"expect_table_columns_to_match_set:None"},
        "math_levels": {"expect_column_values_to_be_between:level"},
    }
    by = {(n, r["expectation"]): r for n, d in report["datasets"].items()
          for r in d["expectations"] if not r["success"]}
    assert by[("gsm8k_dups", "expect_column_values_to_be_unique")]["unexpected_count"] == 4
    assert by[("gsm8k_overlap", "expect_column_values_to_not_be_in_set")]["example_ids"] == [
        ev["id"][0], ev["id"][1]]
    assert by[("math_levels", "expect_column_values_to_be_between")]["example_ids"] == [
        m["id"][0], m["id"][1]]
    assert by[("gsm8k_columns", "expect_table_columns_to_match_set")]["missing_columns"] == [
        "solution"]
    page = write_html(report, tmp_path / "summary.html").read_text()
    assert "<tr class='FAIL'><td>gsm8k_dups</td><td>expect_column_values_to_be_unique</td>" in page
    text = summary(report)
    assert text.startswith(f"data validation failed ({report['failed_expectations']} expectations)")
    assert ("gsm8k_words: expect_column_values_to_match_regex on 'answer' failed: 1 of 200 rows; "
            f"e.g. ids {g['id'][0]}") in text
    assert "gsm8k_overlap: expect_column_values_to_not_be_in_set on 'question_key' " \
           "(contamination: question also in an evaluation set) failed: 2 of 22 rows" in text
    assert "gsm8k_columns: expect_table_columns_to_match_set failed: missing columns " \
           "['solution']" in text


def test_missing_processed_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"no processed file for gsm8k_test \(run `grpo prepare`\)"):
        validate({}, train_names=[], eval_names=["gsm8k_test"])
    with pytest.raises(UserError, match=r"processed file not found: .*x\.parquet"):
        validate({"gsm8k_x": tmp_path / "x.parquet"}, train_names=[], eval_names=[])
