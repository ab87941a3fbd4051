"""The promotion gate against a real MLflow sqlite store and Model Registry."""

from __future__ import annotations

import pytest

from flows.registry import promote
from flows.tracking import Tracker
from grpo_core.evaluation.compare import paired_difference
from grpo_core.evaluation.gate import decide


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    return f"sqlite:///{root / 'mlflow.db'}", root


def trained_run(store, name: str) -> Tracker:
    uri, root = store
    tracker = Tracker(uri, "promotion-test", run_name=name)
    model = root / name
    model.mkdir()
    (model / "config.json").write_text("{}")
    tracker.log_dir(model, "model")
    tracker.set_tags({"git.commit": "abc123", "data.arithmetic_train.md5": "f00d"})
    return tracker


GAIN = {"arithmetic": paired_difference([0] * 30 + [1] * 10, [1] * 25 + [0] * 5 + [1] * 10),
        "gsm8k": paired_difference([0, 1, 0, 0], [0, 1, 0, 1])}


def test_a_passing_gate_registers_a_version_with_alias_tags_and_lineage(store):
    tracker = trained_run(store, "good")
    decision = decide(GAIN, gain_on=["arithmetic"], no_regression=True)
    version = promote(tracker.client, tracker.run_id, decision, GAIN, name="policy",
                      alias="candidate")
    mv = tracker.client.get_model_version_by_alias("policy", "candidate")
    assert (mv.version, mv.run_id) == (version, tracker.run_id)
    assert mv.source.endswith("/model") and mv.description == decision.summary()
    assert mv.tags["git.commit"] == "abc123" and mv.tags["data.arithmetic_train.md5"] == "f00d"
    assert float(mv.tags["eval.arithmetic.delta"]) == pytest.approx(25 / 40)
    assert float(mv.tags["eval.arithmetic.ci_low"]) > 0
    tags = tracker.client.get_run(tracker.run_id).data.tags
    assert tags["promotion"].startswith("promoted") and tags["promotion.version"] == f"policy/{version}@candidate"

    again = trained_run(store, "better")  # a second promotion moves the alias
    second = promote(again.client, again.run_id, decision, GAIN, name="policy", alias="candidate")
    assert int(second) == int(version) + 1
    assert again.client.get_model_version_by_alias("policy", "candidate").run_id == again.run_id


def test_a_failing_gate_registers_nothing(store):
    tracker = trained_run(store, "flat")
    flat = {"arithmetic": paired_difference([0, 1, 0, 1], [1, 0, 0, 1])}
    decision = decide(flat, gain_on=["arithmetic"], no_regression=True)
    assert promote(tracker.client, tracker.run_id, decision, flat, name="never",
                   alias="candidate") is None
    assert tracker.client.search_model_versions("name='never'") == []
    assert tracker.client.get_run(tracker.run_id).data.tags["promotion"].startswith("not promoted")
