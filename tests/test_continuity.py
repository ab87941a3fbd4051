"""Which run a resume continues, and with what recipe (grpo_core.checkpoints.continuity)."""

import re

import pytest

from grpo_core.checkpoints.continuity import (allowed_changes, check_resumable, read_marker,
                                              recipe_changes, write_marker)
from grpo_core.config import Config
from grpo_core.errors import UserError

STATE = "models/grpo/resume"


def test_the_marker_round_trips_and_a_damaged_one_is_one_line(tmp_path):
    assert read_marker(tmp_path) is None
    write_marker(tmp_path, "abc", "RUNNING", 3)
    assert read_marker(tmp_path) == {"run_id": "abc", "status": "RUNNING", "iteration": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temporary left
    (tmp_path / "run.json").write_text('{"run_id": ')
    with pytest.raises(UserError, match="run.json is damaged"):
        read_marker(tmp_path)


def test_the_interrupted_run_that_saved_the_state_is_resumable():
    check_resumable({"run_id": "a", "status": "FAILED"}, {"iteration": 3, "run_id": "a"}, STATE)
    check_resumable({"run_id": "a", "status": "KILLED"}, {"iteration": 3, "run_id": "a"}, STATE)
    check_resumable({"run_id": "a", "status": "RUNNING"}, {"iteration": 3, "run_id": "a"}, STATE)
    check_resumable(None, {"iteration": 3, "run_id": "a"}, STATE)  # a directory from before


@pytest.mark.parametrize("marker, meta, says", [
    (None, None, "nothing to resume: no saved state in models/grpo/resume"),
    ({"run_id": "b", "status": "FAILED"}, None, "run b stopped before it saved a state"),
    ({"run_id": "b", "status": "RUNNING"}, {"iteration": 4, "run_id": "a"},
     "the last run (MLflow run b) stopped before it saved a state"),
    ({"run_id": "a", "status": "FINISHED", "iteration": 4}, {"iteration": 4, "run_id": "a"},
     "run a finished at iteration 4; to train further, start a new run"),
])
def test_what_cannot_be_resumed_says_why(marker, meta, says):
    with pytest.raises(UserError, match=re.escape(says)):
        check_resumable(marker, meta, STATE)


def test_recipe_changes_compare_json_values_and_skip_the_free_sections():
    saved = Config().flat()
    now = Config.model_validate({"rollout": {"group_size": 4}, "train": {"iterations": 9},
                                 "evaluate": {"max_new_tokens": 64}}).flat()
    # tuples in `now`, lists in what meta.json gave back: equal values are no change
    as_read = {k: list(v) if isinstance(v, tuple) else v for k, v in saved.items()}
    assert recipe_changes(as_read, saved) == []
    assert recipe_changes(as_read, now) == [("rollout.group_size", 8, 4),
                                            ("train.iterations", 1000, 9)]
    assert recipe_changes(None, now) == []  # a state saved before recipes were saved


def test_a_setting_added_since_the_state_was_saved_counts_as_its_default():
    older = {k: v for k, v in Config().flat().items() if k != "rollout.refill_rounds"}
    assert recipe_changes(older, Config().flat()) == []
    now = Config.model_validate({"rollout": {"refill_rounds": 2}}).flat()
    assert recipe_changes(older, now) == [("rollout.refill_rounds", 0, 2)]
    # a mapping's entries are the user's, not defaults to fill in
    mine = Config.model_validate({"reward": {"functions": {"myrewards:vowels": 1.0}}}).flat()
    assert recipe_changes(mine, mine) == []
    assert recipe_changes(mine, Config().flat()) == [
        ("reward.functions.accuracy", None, 1.0), ("reward.functions.myrewards:vowels", 1.0, None)]


def test_a_change_is_refused_unless_named_and_a_misspelt_name_is_an_error():
    keys = Config().flat()
    changes = [("rollout.group_size", 2, 4), ("train.iterations", 3, 5)]
    with pytest.raises(UserError) as e:
        allowed_changes(changes, ["train.iterations"], keys)
    assert str(e.value) == ("--resume with a different recipe: rollout.group_size 2 -> 4; a "
                            "resumed run continues the saved one (allow a change with "
                            "--allow-change KEY, or start a new run)")
    assert allowed_changes(changes, ["train.iterations", "rollout.group_size"], keys) == changes
    with pytest.raises(UserError, match="--allow-change train.iteration: not a config key"):
        allowed_changes([], ["train.iteration"], keys)
