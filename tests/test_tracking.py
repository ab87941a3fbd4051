"""MLflow tracking against a real sqlite store."""

from __future__ import annotations

import json

import pandas as pd

from flows.tracking import Tracker


def test_hundreds_of_sample_tables_log_and_read_back(tmp_path):
    """A long run logs one samples table per iteration; MLflow's log_table would fail near the
    150th (its run tag listing the tables is cut at 8,000 characters)."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tables")
    frame = pd.DataFrame({"prompt_id": [3, 4], "completion": ["#### 7", None],
                          "reward": [1.0, 0.0], "advantage": [0.7071, -0.7071]})
    for it in range(1, 201):
        tracker.log_table(frame, f"samples/iter_{it:05d}.json")
    listed = tracker.client.list_artifacts(tracker.run_id, "samples")
    assert len(listed) == 200
    local = tracker.client.download_artifacts(tracker.run_id, "samples/iter_00200.json",
                                              str(tmp_path / "dl"))
    table = json.loads(open(local).read())
    assert table["columns"] == ["prompt_id", "completion", "reward", "advantage"]
    assert table["data"] == [[3, "#### 7", 1.0, 0.7071], [4, None, 0.0, -0.7071]]
    rebuilt = pd.DataFrame(table["data"], columns=table["columns"])
    assert rebuilt["reward"].tolist() == [1.0, 0.0]


def test_experiments_open_in_the_model_training_view(tmp_path):
    """The experiment's kind tag, on a new experiment and on one made before the tag."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    Tracker(uri, "fresh")
    old = client.create_experiment("older")  # as an earlier version made it
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    Tracker(uri, "older")
    for name in ("fresh", "older"):
        tags = client.get_experiment_by_name(name).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development", name
