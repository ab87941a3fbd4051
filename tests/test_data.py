"""Ingestion on the real GSM8K/MATH files, malformed inputs with file:line, the mixture."""

from __future__ import annotations

import json
import typing

import pandas as pd
import pytest

from grpo_core.data import sources as data
from grpo_core.config import DatasetSpec, load_config
from grpo_core.errors import UserError

ALL = [("gsm8k", "train"), ("gsm8k", "test"), ("math", "train"), ("math", "test"),
       ("math500", "test")]


@pytest.fixture(scope="module")
def prepared(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("processed")
    paths, metrics = data.prepare(data_dir, out, ALL)
    return paths, metrics, {k: data.load_processed(p) for k, p in paths.items()}


def test_prepare_writes_one_normalised_file_per_split(prepared):
    paths, metrics, frames = prepared
    assert {k: p.name for k, p in paths.items()} == {
        "gsm8k_train": "gsm8k_train.parquet", "gsm8k_test": "gsm8k_test.parquet",
        "math_train": "math_train.parquet", "math_test": "math_test.parquet",
        "math500_test": "math500_test.parquet"}
    # row counts of the data folder's SOURCES.md ($GRPO_DATA_DIR, not in this repository), less
    # the two MATH train rows with an empty \boxed{}
    assert {k: len(f) for k, f in frames.items()} == {
        "gsm8k_train": 7473, "gsm8k_test": 1319, "math_train": 7498, "math_test": 5000,
        "math500_test": 500}
    assert metrics["math_train"]["dropped_ids"] == ["train/number_theory/7115.json",
                                                    "train/number_theory/7117.json"]
    for key, frame in frames.items():
        assert tuple(frame.columns) == data.SCHEMA
        assert frame["id"].is_unique, key
        assert (frame["split"] == key.split("_")[1]).all()


def test_gsm8k_answers_are_the_number_after_hashes_without_commas(prepared):
    g = prepared[2]["gsm8k_train"]
    first = g.iloc[0]
    assert (first["id"], first["answer"]) == ("gsm8k/train/0", "72")
    assert first["question"].startswith("Natalia sold clips")
    with_comma = g[g["solution"].str.contains(r"#### \d{1,3},\d{3}", regex=True)]
    assert len(with_comma) > 0
    assert not g["answer"].str.contains(",").any()
    row = with_comma.iloc[0]
    assert row["answer"] == row["solution"].rsplit("####", 1)[1].strip().replace(",", "")
    assert g["level"].isna().all() and g["subject"].isna().all()


def test_math_answers_levels_and_subjects(prepared):
    frames = prepared[2]
    m5 = frames["math500_test"]
    first = m5.iloc[0]
    assert first["id"] == "test/precalculus/807.json"
    assert first["answer"] == r"\left( 3, \frac{\pi}{2} \right)"  # the file's own answer field
    assert (first["level"], first["subject"]) == (2, "Precalculus")
    train = frames["math_train"].set_index("id")
    # "Level ?" in the source becomes a null level; the brace-less "\boxed 9" is read
    assert pd.isna(train.loc["train/geometry/377.json", "level"])
    assert train.loc["train/algebra/25040.json", "answer"] == "9"
    assert train["level"].dropna().between(1, 5).all()
    # MATH-500 problems are in MATH test with the same answer extracted from \boxed{}
    test = frames["math_test"].set_index("id")
    same = test.loc[m5["id"], "answer"].to_numpy() == m5["answer"].to_numpy()
    assert same.mean() > 0.95


def test_decontaminate_drops_training_rows_shared_with_evaluation(data_dir, tmp_path):
    # MATH train and test share one problem that differs only by a trailing newline
    paths, metrics = data.prepare(data_dir, tmp_path, [("math", "train"), ("math", "test")],
                                  decontaminate=[("math", "train")])
    assert metrics["math_train"]["dropped_overlap_ids"] == ["train/geometry/6032.json"]
    assert len(pd.read_parquet(paths["math_train"])) == 7497


# ---------------------------------------------------------------- malformed input
def _write(root, rel, text: str | bytes):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


GOOD = json.dumps({"question": "What is two plus two, please?", "answer": "2+2=4\n#### 4"})


@pytest.mark.parametrize("body, where, message", [
    (GOOD + "\n" + GOOD + "\n{broken\n", ":3:", "not valid JSON"),
    (GOOD + "\n" + json.dumps({"question": "Only a question here?"}) + "\n", ":2:",
     "missing field 'answer'"),
    (json.dumps({"question": 7, "answer": "#### 7"}) + "\n", ":1:",
     "field 'question' must be a string, got int"),
    (GOOD + "\n" + json.dumps({"question": "No final line?", "answer": "4"}) + "\n", ":2:",
     "has no final '#### <number>' line"),
    ("", "train.jsonl:", "the file has no records"),
    (GOOD.encode() + b"\n" + GOOD.encode().replace(b"two", b"tw\xe9") + b"\n", ":2:",
     "not valid UTF-8"),
    (GOOD + "\n[1, 2]\n", ":2:", "expected a JSON object, got list"),
])
def test_malformed_jsonl_is_reported_with_file_and_line(tmp_path, body, where, message):
    path = _write(tmp_path, "gsm8k/train.jsonl", body)
    with pytest.raises(UserError) as err:
        data.prepare(tmp_path, tmp_path / "out", [("gsm8k", "train")])
    text = str(err.value)
    assert text.startswith(str(path)) and where in text and message in text
    assert "\n" not in text


def test_json_array_errors_name_the_element_line(tmp_path):
    good = json.dumps({"problem": "What is 1+1?", "solution": "\\boxed{2}"})
    body = "[\n  " + good + ",\n  {\"problem\": \"p?\"}\n]\n"
    path = _write(tmp_path, "math/test.json", body)
    with pytest.raises(UserError, match=rf"^{path}:3: missing field 'solution'"):
        data.prepare(tmp_path, tmp_path / "out", [("math", "test")])
    _write(tmp_path, "math/test.json", "[\n" + good + ",\n{oops}\n]")
    with pytest.raises(UserError, match=rf"^{path}:3: not valid JSON"):
        data.prepare(tmp_path, tmp_path / "out", [("math", "test")])


def test_json_and_parquet_inputs_give_the_same_rows_as_jsonl(tmp_path):
    rows = [{"problem": f"Problem number {i}?", "solution": f"So \\boxed{{{i}}}.",
             "level": f"Level {i % 5 + 1}", "type": "Algebra", "unique_id": f"test/a/{i}.json"}
            for i in range(4)]
    _write(tmp_path / "a", "math/test.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    _write(tmp_path / "b", "math/test.json", json.dumps(rows, indent=1))
    (tmp_path / "c" / "math").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "c" / "math" / "test.parquet")
    (tmp_path / "d" / "math").mkdir(parents=True)  # levels stored as numbers
    pd.DataFrame(rows).assign(level=[1.0, 2.0, 3.0, 4.0]).to_parquet(
        tmp_path / "d" / "math" / "test.parquet")
    frames = [data.load_split(tmp_path / d, "math", "test")[0] for d in "abcd"]
    for other in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], other)
    assert frames[0]["answer"].tolist() == ["0", "1", "2", "3"]
    assert frames[0]["level"].tolist() == [1, 2, 3, 4]


def test_missing_files_and_unknown_names(tmp_path):
    with pytest.raises(UserError, match=r"gsm8k test: no file .*gsm8k/test\.jsonl"):
        data.prepare(tmp_path, tmp_path / "out", [("gsm8k", "test")])
    with pytest.raises(UserError, match="data dir not found"):
        data.prepare(tmp_path / "nope", tmp_path / "out", [("gsm8k", "test")])
    with pytest.raises(UserError, match="math500 has no split 'train'"):
        data.prepare(tmp_path, tmp_path / "out", [("math500", "train")])
    with pytest.raises(UserError, match=r"^processed dataset not found: .*run `grpo prepare`"):
        data.load_processed(tmp_path / "x.parquet")


def test_hub_without_datasets_package_says_what_to_do():
    try:  # the message differs when `datasets` is installed (then: offline, hub unreachable)
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"`pip install datasets`, or set GRPO_DATA_DIR"):
            data.load_split(None, "gsm8k", "test")
    else:  # offline here: the hub is unreachable, the message names the dataset
        with pytest.raises(UserError, match=r"cannot load openai/gsm8k split 'test'"):
            data.load_split(None, "gsm8k", "test")


# ----------------------------------------------------------------------- mixture
def test_training_mixture_rows_seed_and_errors(prepared):
    frames = prepared[2]
    specs = [data.MixturePart("gsm8k_train", 30), data.MixturePart("math_train", 20)]
    a = data.training_mixture(frames, specs, seed=0)
    b = data.training_mixture(frames, specs, seed=0)
    c = data.training_mixture(frames, specs, seed=1)
    assert len(a) == 50 and a["source"].value_counts().to_dict() == {"gsm8k": 30, "math": 20}
    pd.testing.assert_frame_equal(a, b)
    assert a["id"].tolist() != c["id"].tolist()
    assert a["id"].is_unique
    whole = data.training_mixture(frames, [data.MixturePart("math500_test")], seed=0)
    assert sorted(whole["id"]) == sorted(frames["math500_test"]["id"])
    with pytest.raises(UserError, match="math500_test has 500 rows, 501 requested"):
        data.training_mixture(frames, [data.MixturePart("math500_test", 501)], seed=0)
    with pytest.raises(UserError, match="dataset nope_train was not prepared"):
        data.training_mixture(frames, [data.MixturePart("nope_train", 1)], seed=0)


def test_solution_steps_count_gsm8k_reasoning_lines(prepared):
    steps = data.solution_steps(prepared[2]["gsm8k_train"]["solution"])
    # counted independently: GSM8K train has 1961 two-step solutions and none under 2 or over 9
    assert (steps == 2).sum() == 1961 and steps.min() == 2 and steps.max() == 9
    one = pd.Series(["Ann has 2.\n\nShe buys 3 more: 2+3=5.\n#### 5"])
    assert data.solution_steps(one).tolist() == [2]


def test_training_mixture_within_difficulty(prepared):
    frames = prepared[2]
    easy = data.training_mixture(frames, [data.MixturePart("gsm8k_train", None, max_steps=2)], 0)
    assert len(easy) == 1961 and (data.solution_steps(easy["solution"]) == 2).all()
    drawn = data.training_mixture(frames, [data.MixturePart("gsm8k_train", 100, max_steps=3),
                                           data.MixturePart("math_train", 50, max_level=1)], 0)
    gsm8k, math = drawn[drawn.source == "gsm8k"], drawn[drawn.source == "math"]
    assert len(gsm8k) == 100 and data.solution_steps(gsm8k["solution"]).max() <= 3
    assert len(math) == 50 and set(math["level"]) == {1}
    with pytest.raises(UserError, match=r"gsm8k_train has 1961 rows within max_steps 2, "
                                        r"2000 requested"):
        data.training_mixture(frames, [data.MixturePart("gsm8k_train", 2000, max_steps=2)], 0)
    with pytest.raises(UserError, match=r"gsm8k_train has 0 rows within max_steps 1, "
                                        r"at least 1 requested"):
        data.training_mixture(frames, [data.MixturePart("gsm8k_train", None, max_steps=1)], 0)


def test_difficulty_limits_reach_the_run_data(data_dir, tmp_path):
    """From params to the training mixture and the evaluation sets the flows read."""
    from flows import prepare
    from flows.run.inputs import load_data

    cfg = load_config(None, [
        f"data.dir={data_dir}", f"data.processed_dir={tmp_path}",
        "data.train=[{name: gsm8k, max_steps: 2}, {name: math, rows: 40, max_level: 1}]",
        "evaluate.datasets=[{name: math500, split: test, rows: 10, max_level: 2}]"])
    prepare.run(cfg)
    mixture, evals, _ = load_data(cfg)
    gsm8k = mixture[mixture.source == "gsm8k"]
    assert len(gsm8k) == 1961 and data.solution_steps(gsm8k["solution"]).max() == 2
    assert (mixture.source == "math").sum() == 40
    assert set(mixture.loc[mixture.source == "math", "level"]) == {1}
    assert len(evals["math500"]) == 10 and evals["math500"]["level"].max() <= 2
    empty = load_config(None, [f"data.dir={data_dir}", f"data.processed_dir={tmp_path}",
                               "evaluate.datasets=[{name: gsm8k, split: test, max_steps: 1}]"])
    prepare.run(empty)
    with pytest.raises(UserError, match=r"^evaluate.datasets: gsm8k_test has 0 rows within "
                                        r"max_steps 1$"):
        load_data(empty)


def test_config_choices_equal_the_registries():
    from grpo_core.config import BUILT_IN_DATASETS, CheckerName
    from grpo_core.config.datasets import FILE_TYPES
    from grpo_core.rewards.answers import CHECKERS

    assert BUILT_IN_DATASETS == tuple(data.SOURCES)
    assert typing.get_args(CheckerName) == tuple(CHECKERS)
    assert {src.checker for src in data.SOURCES.values()} <= set(CHECKERS)
    assert FILE_TYPES == data.EXTENSIONS
    fields = DatasetSpec.model_fields
    splits = {s for src in data.SOURCES.values() for s in src.splits}
    assert set(typing.get_args(fields["split"].annotation)) == splits
    cfg = load_config(None)
    for spec in (*cfg.data.train, *cfg.evaluate.datasets):
        assert spec.split in data.SOURCES[spec.name].splits
