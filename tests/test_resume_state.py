"""Resume state: round trip, atomic replacement, and a clear error when there is none."""

import json
import random

import numpy as np
import pytest
import torch

from grpo_core.errors import UserError
from grpo_core.checkpoints.resume import (clean_temporaries, discard_state, load_state, read_meta,
                                          save_state)


def test_round_trip_restores_tensors_and_rng(tmp_path):
    d = tmp_path / "resume"
    random.seed(1), np.random.seed(2)
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "iteration": 3,
             "rng": torch.get_rng_state()}
    save_state(d, state, {"iteration": 3, "run_id": "abc"})
    want = (random.random(), float(np.random.rand()))
    random.seed(9), np.random.seed(9)
    loaded, meta = load_state(d)
    assert meta == {"iteration": 3, "run_id": "abc"}
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert (random.random(), float(np.random.rand())) == want


def test_replacement_is_whole_and_leaves_no_temporaries(tmp_path):
    d = tmp_path / "resume"
    save_state(d, {"x": torch.zeros(1)}, {"iteration": 1})
    save_state(d, {"x": torch.ones(1)}, {"iteration": 2})
    assert read_meta(d)["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resume"]
    assert load_state(d)[0]["x"].item() == 1.0


def test_a_crash_between_renames_falls_back_to_the_previous_state(tmp_path):
    d = tmp_path / "resume"
    save_state(d, {"x": torch.zeros(1)}, {"iteration": 4})
    d.rename(tmp_path / "resume.old")  # what a kill between the two renames leaves
    assert json.loads((tmp_path / "resume.old" / "meta.json").read_text())["iteration"] == 4
    assert load_state(d)[1]["iteration"] == 4


def test_missing_state_is_a_user_error(tmp_path):
    assert read_meta(tmp_path / "none") is None
    with pytest.raises(UserError, match="nothing to resume: no saved state in"):
        load_state(tmp_path / "none")


def test_a_damaged_state_is_a_one_line_error(tmp_path):
    d = tmp_path / "resume"
    save_state(d, {"x": torch.zeros(1000)}, {"iteration": 2})
    learner = d / "learner.pt"
    learner.write_bytes(learner.read_bytes()[:300])  # truncated
    with pytest.raises(UserError, match=r"the resume state .*resume is damaged \(.*\); delete"):
        load_state(d)
    (d / "meta.json").write_text('{"iteration": ')
    with pytest.raises(UserError, match=r"meta.json is damaged"):
        read_meta(d)


def test_stale_temporaries_are_cleaned_and_a_new_run_discards_the_old_state(tmp_path):
    d = tmp_path / "resume"
    save_state(d, {"x": torch.zeros(1)}, {"iteration": 1})
    (tmp_path / "resume.tmp").mkdir()
    (tmp_path / "resume.tmp" / "learner.pt").write_bytes(b"half")
    clean_temporaries(d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resume"]
    (tmp_path / "resume.old").mkdir()
    discard_state(d)
    assert list(tmp_path.iterdir()) == []
